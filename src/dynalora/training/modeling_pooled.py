"""A sentence(-pair) classifier over any transformers encoder with masked-mean or first-token pooling.

This file is self-contained on purpose: `dynalora merge` copies it into the merged folder and
registers it in config.json's `auto_map`, so that

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    pipeline("text-classification", model=folder, trust_remote_code=True)

rebuild the trained classifier with transformers alone (no dynalora installed). It imports
nothing but torch and transformers.

Why not `BertForSequenceClassification`: that head reads BERT's pooler (a dense layer and tanh
over the first token), while sentence-embedding encoders are trained for the masked mean of
all token vectors. A BERT head cannot express mean pooling, and "first token without the
pooler" differs from it by the tanh layer.

The config's `model_type` is our own, so a plain `from_pretrained` without
`trust_remote_code=True` refuses the folder instead of loading a BERT with a random head.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "cls", "pooler")


class PooledClassifierConfig(PretrainedConfig):
    """The encoder's own config (as a dict, under `encoder`), the pooling, and the labels."""

    model_type = "dynalora-pooled-classifier"

    def __init__(self, encoder: dict | None = None, pooling: str = "mean", head_dropout: float = 0.1,
                 **kwargs) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder = dict(encoder or {})
        self.pooling = pooling
        self.head_dropout = head_dropout
        super().__init__(**kwargs)

    def encoder_config(self) -> PretrainedConfig:
        settings = dict(self.encoder)
        kind = settings.pop("model_type", None)
        if kind is None:
            raise ValueError("config.encoder has no model_type: cannot tell which encoder to build")
        return AutoConfig.for_model(kind, **settings)


class PooledClassifier(PreTrainedModel):
    """encoder -> pooled vector -> dropout -> Linear(hidden, num_labels)."""

    config_class = PooledClassifierConfig
    base_model_prefix = "encoder"

    def __init__(self, config: PooledClassifierConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder_config())
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = nn.Linear(self.encoder.config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only the head can be missing from a checkpoint; the encoder's weights always load.
        if isinstance(module, nn.Linear) and module is self.classifier:
            module.weight.data.normal_(0.0, 0.02)
            module.bias.data.zero_()

    def pool(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
             token_type_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if inputs_embeds is not None:
            inputs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        # Segment ids only matter to encoders that learned more than one segment embedding.
        if token_type_ids is not None and getattr(self.encoder.config, "type_vocab_size", 0) > 1:
            inputs["token_type_ids"] = token_type_ids
        out = self.encoder(**inputs)
        if self.config.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.config.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, return_dict: bool | None = None,
                **_: object) -> SequenceClassifierOutput:
        logits = self.classifier(self.dropout(self.pool(input_ids, attention_mask, token_type_ids, inputs_embeds)))
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:  # regression
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)
