"""Predictions over a batcher, metrics, and pooled features cached for head-only training."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalora.distributed.context import current
from dynalora.distributed.sync import gather_objects
from dynalora.training.classifier import SequenceClassifier
from dynalora.training.optim import autocast

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "features")


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device,
            dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) for every row, in the order of the rows' "index"."""
    was_training = model.training
    model.eval()
    logits, labels, index = [], [], []
    try:
        for batch in batches:
            with autocast(device, dtype):
                out = model(**model_inputs(batch, device))
            logits.append(out.float().cpu())
            labels.append(batch["labels"])
            index.append(batch["index"])
    finally:
        model.train(was_training)
    order = torch.cat(index).argsort()
    return torch.cat(logits)[order].numpy(), torch.cat(labels)[order].numpy()


def predict_sharded(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device,
                    dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`predict` with the batches shared out over the processes of a distributed run
    (batch i to process i mod W) and the predictions gathered: every process gets them all."""
    info = current()
    if not info.distributed:
        return predict(model, batches, device, dtype)
    mine = [b for i, b in enumerate(batches) if i % info.world_size == info.rank]
    if mine:
        index = torch.cat([b["index"] for b in mine]).sort().values.numpy()
        logits, labels = predict(model, mine, device, dtype)
    else:
        index, logits, labels = np.zeros(0, dtype=np.int64), None, None
    parts = [p for p in gather_objects((index, logits, labels)) if p[1] is not None]
    order = np.concatenate([p[0] for p in parts]).argsort()
    return np.concatenate([p[1] for p in parts])[order], np.concatenate([p[2] for p in parts])[order]


class CachedFeatures:
    """A batcher whose batches carry pooled backbone vectors instead of token ids.

    For training the head alone (feature extraction): the frozen backbone runs once over
    every row, in eval mode (no dropout), and each later batch just looks its rows up. The
    wrapped batcher still decides the order, so shuffling and resuming work as before.
    """

    def __init__(self, classifier: SequenceClassifier, batches: Any, device: torch.device,
                 dtype: torch.dtype | None = None) -> None:
        self.classifier, self.batches, self.device, self.dtype = classifier, batches, device, dtype
        self.cache: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    @torch.no_grad()
    def _fill(self) -> torch.Tensor:
        backbone_mode = self.classifier.backbone.training
        self.classifier.backbone.eval()
        rows: dict[int, torch.Tensor] = {}
        try:
            for batch in self.batches:
                inputs = model_inputs(batch, self.device)
                with autocast(self.device, self.dtype):
                    pooled = self.classifier.pool(inputs["input_ids"], inputs["attention_mask"],
                                                  inputs.get("token_type_ids"))
                for i, vector in zip(batch["index"].tolist(), pooled.float()):
                    rows[i] = vector
        finally:
            self.classifier.backbone.train(backbone_mode)
        return torch.stack([rows[i] for i in range(len(rows))])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.cache is None:
            self.cache = self._fill()
        for batch in self.batches:
            yield {"features": self.cache[batch["index"].to(self.cache.device)],
                   "labels": batch["labels"], "index": batch["index"]}
