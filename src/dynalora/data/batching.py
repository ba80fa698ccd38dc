"""Tokenisation without padding, and batches padded only as far as each batch needs.

Padding every row to a fixed 128 tokens wastes most of the compute on short-sentence tasks
(SST-2 sentences average about 13 tokens). `BucketBatcher` shuffles, then sorts by length
inside large chunks so that a batch holds rows of similar length, and pads each batch to its
own longest row; the batch order is shuffled again so training does not see lengths in order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from dynalora.data.base import DataError, Example

Feature = dict[str, Any]
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# what each list-valued key is padded with; input_ids use the tokenizer's pad id
PAD_VALUES = {"labels": -100, "attention_mask": 0, "token_type_ids": 0}


def encode(examples: Sequence[Example], tokenizer: Any, max_length: int = 128) -> list[Feature]:
    """Tokenise each example (pairs truncated longest-first to max_length); no padding.

    Each feature holds input_ids, attention_mask, token_type_ids when the tokenizer makes
    them, and "labels" (the class index or score).
    """
    if not examples:
        raise DataError("no examples to encode")
    if max_length < 1:
        raise DataError(f"max_length must be a positive integer, got {max_length}")
    arity = {len(e.texts) for e in examples}
    if len(arity) != 1 or not arity <= {1, 2}:
        raise DataError(f"every example must have the same number of texts (1 or 2); found {sorted(arity)}")
    first = [e.texts[0] for e in examples]
    second = [e.texts[1] for e in examples] if arity == {2} else None
    encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in MODEL_INPUTS if k in encoded]
    return [
        {**{k: list(encoded[k][i]) for k in keys}, "labels": example.label}
        for i, example in enumerate(examples)
    ]


class BucketBatcher:
    """Batches of tensors with dynamic padding and length bucketing.

    shuffle=True: each epoch (see set_epoch) permutes the rows with a generator seeded by
    (seed, epoch), sorts each chunk of batch_size * bucket_size_multiplier rows by length,
    cuts it into batches and shuffles the batch order. shuffle=False: the original order.
    Every batch has an "index" tensor of the rows' positions in `features`, so predictions
    can be mapped back to examples. Scalar labels become a long tensor (float if any label is
    a float: regression); list labels are padded with -100.
    """

    def __init__(
        self,
        features: list[Feature],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        pad_token_id: int = 0,
        bucket_size_multiplier: int = 50,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size}")
        if bucket_size_multiplier < 1:
            raise DataError(f"bucket_size_multiplier must be >= 1, got {bucket_size_multiplier}")
        if not features:
            raise DataError("no features to batch")
        keys = set(features[0])
        for i, feature in enumerate(features):
            if set(feature) != keys:
                raise DataError(f"feature {i} has keys {sorted(feature)}, feature 0 has {sorted(keys)}")
        if "input_ids" not in keys:
            raise DataError("features need an 'input_ids' list (use dynalora.data.encode)")
        self.features = features
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pad_token_id = pad_token_id
        self.bucket_size_multiplier = bucket_size_multiplier
        self.epoch = 0
        self.lengths = np.array([len(f["input_ids"]) for f in features])
        labels = [f["labels"] for f in features if "labels" in f]
        self.label_dtype = torch.float32 if any(isinstance(x, (float, np.floating)) for x in labels) else torch.long

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields (so a resumed run repeats it)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.features) // self.batch_size)

    def batch_indices(self) -> list[np.ndarray]:
        """The row positions of each batch, in the order this epoch yields them."""
        n, size = len(self.features), self.batch_size
        if not self.shuffle:
            order = np.arange(n)
            return [order[i : i + size] for i in range(0, n, size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        chunk = size * self.bucket_size_multiplier  # a multiple of size: one short batch at most
        batches = []
        for start in range(0, n, chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(-self.lengths[part], kind="stable")]
            batches.extend(part[i : i + size] for i in range(0, len(part), size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for indices in self.batch_indices():
            yield self.collate(indices)

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = [self.features[i] for i in indices]
        batch = {}
        for key, first in rows[0].items():
            if isinstance(first, (list, tuple)):
                width = max(len(row[key]) for row in rows)
                pad = self.pad_token_id if key == "input_ids" else PAD_VALUES.get(key, 0)
                padded = [list(row[key]) + [pad] * (width - len(row[key])) for row in rows]
                batch[key] = torch.tensor(padded, dtype=torch.long)
            elif key == "labels":
                batch[key] = torch.tensor([row[key] for row in rows], dtype=self.label_dtype)
            else:
                batch[key] = torch.tensor([row[key] for row in rows])
        batch["index"] = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return batch
