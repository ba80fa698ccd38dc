"""Our trained `SequenceClassifier` as a transformers sequence-classification model.

Two layouts, chosen so that `AutoModelForSequenceClassification.from_pretrained(folder)`
either gives exactly our logits or refuses to load (never a random head):

- pooling "pooler" on a BERT encoder: BERT's own head (`BertForSequenceClassification`) is
  `classifier(dropout(pooler_output))`, which is what we compute, so the folder is a plain
  BERT checkpoint that loads with no custom code.
- every other case (mean pooling, the default; first-token pooling; non-BERT encoders): our
  `PooledClassifier` (modeling_pooled.py, copied into the folder and named in `auto_map`),
  loaded with `trust_remote_code=True`. Its `model_type` is our own, so a load without
  `trust_remote_code=True` stops with transformers' "contains custom code" error. First-token
  pooling is not BERT's head with an identity pooler: the pooler's tanh would remain.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from dynalora.quiet import quiet_loading
from dynalora.training import modeling_pooled
from dynalora.training.modeling_pooled import PooledClassifier, PooledClassifierConfig

MODELING_FILE = Path(modeling_pooled.__file__).name
AUTO_MAP = {
    "AutoConfig": f"{MODELING_FILE.removesuffix('.py')}.PooledClassifierConfig",
    "AutoModelForSequenceClassification": f"{MODELING_FILE.removesuffix('.py')}.PooledClassifier",
}


def label_maps(metadata: dict[str, Any]) -> dict[str, Any]:
    """id2label / label2id / problem_type for the config, from the run's labels."""
    if metadata["regression"]:
        names = [metadata.get("task") or "score"]
        problem = "regression"
    else:
        names = list(metadata["labels"] or [f"LABEL_{i}" for i in range(metadata["num_labels"])])
        problem = "single_label_classification"
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)},
            "problem_type": problem}


def standard_classifier(classifier: nn.Module, metadata: dict[str, Any]) -> nn.Module:
    """A transformers model (eval mode) computing the same logits as `classifier`, a merged
    `SequenceClassifier` (backbone with no adapter layers left, `classifier` a Linear)."""
    backbone, head = classifier.backbone, classifier.classifier
    labels = label_maps(metadata)
    encoder_config = backbone.config
    if metadata["pooling"] == "pooler" and encoder_config.model_type == "bert":
        from transformers import BertForSequenceClassification

        config = type(encoder_config).from_dict({
            **encoder_config.to_dict(), **labels, "classifier_dropout": metadata["head_dropout"],
            "architectures": ["BertForSequenceClassification"]})
        model = BertForSequenceClassification(config)
        model.bert.load_state_dict(backbone.state_dict())
    else:
        settings = {k: v for k, v in encoder_config.to_dict().items() if k not in ("architectures", "auto_map")}
        config = PooledClassifierConfig(encoder=settings, pooling=metadata["pooling"],
                                        head_dropout=metadata["head_dropout"], auto_map=AUTO_MAP,
                                        architectures=["PooledClassifier"], **labels)
        model = PooledClassifier(config)
        model.encoder.load_state_dict(backbone.state_dict())
    model.classifier.load_state_dict(head.state_dict())
    return model.to(next(classifier.parameters()).dtype).eval()


def save_standard(model: nn.Module, folder: Path) -> None:
    """`save_pretrained` into `folder`, plus the modelling file our own class needs."""
    with quiet_loading():  # no "Writing model shards" bar in our output
        model.save_pretrained(folder)
    if isinstance(model, PooledClassifier):
        shutil.copyfile(modeling_pooled.__file__, folder / MODELING_FILE)
