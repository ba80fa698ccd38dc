"""Each process's share of every global batch.

Every process builds the same batcher (same data, seed and epoch, so the same global
batches in the same order) and keeps rows rank, rank + W, rank + 2W, ... of each one. The
batch size, the number of steps and the learning-rate schedule therefore mean exactly what
they mean in one process. Rows inside a bucketed batch are sorted by length, so striding
gives every process rows of about the same lengths (and about the same work); padding
columns that no row of the shard needs are cut off.

Each shard carries "loss_share": its share of the global batch's loss units (rows for
classification, label tokens for language modelling). A process multiplies its mean loss
by it, and the sum of the processes' gradients is then the gradient of the global mean.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

LOSS_SHARE = "loss_share"


def loss_units(batch: dict[str, torch.Tensor]) -> int:
    """How many terms the batch's mean loss averages: rows, or tokens whose label is not -100."""
    labels = batch.get("labels")
    if labels is None:
        return len(batch["index"])
    if labels.dim() <= 1:
        return int(labels.shape[0])
    # causal LM: the label of position t is predicted at t - 1, so the first column never counts
    return int((labels[:, 1:] != -100).sum())


def shard_batch(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """Rows rank::world_size of a collated batch, with its "loss_share"; 0 rows if it has too few."""
    n = len(batch["index"])
    rows = torch.arange(rank, n, world_size)
    shard = {k: v[rows] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
             for k, v in batch.items()}
    mask = shard.get("attention_mask")
    if mask is not None and len(rows):
        width = int(mask.sum(dim=1).max())
        full = mask.shape[1]
        # right padding (BucketBatcher's): columns past the longest row of the shard are all pad
        if width < full and not mask[:, width:].any():
            shard = {k: v[:, :width] if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] == full
                     else v for k, v in shard.items()}
    total = loss_units(batch)
    shard[LOSS_SHARE] = torch.tensor(loss_units(shard) / max(total, 1) if len(rows) else 0.0)
    return shard


class ShardedBatches:
    """Wraps a batcher (BucketBatcher, CachedFeatures, ...) to yield this process's shards.

    `len()` and `set_epoch` are the global batcher's, so every process takes the same number
    of steps. A process whose shard of a (short, last) batch is empty gets zero rows and a
    share of 0: it computes no loss but joins the step's gradient sum.
    """

    def __init__(self, batches: Any, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __getattr__(self, name: str) -> Any:  # features, batch_size, ... of the global batcher
        return getattr(self.__dict__["batches"], name)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.batches:
            yield shard_batch(batch, self.rank, self.world_size)
