"""Folding adapters into the base weights: checks, the merged state dict, a plain checkpoint.

Functions over a model's `LoraLayer`s (by name); `DynaLoraModel.merge`, `merged_state_dict`
and `save_merged` call these with the wrapper's layers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora.adapters.layer import LoraLayer
from dynalora.errors import MergeError
from dynalora.files import atomic_dir


def check_mergeable(layers: Iterable[LoraLayer]) -> None:
    """Raise if an active adapter of `layers` cannot be folded into the base weights."""
    for layer in layers:
        for name in layer.active:
            if not layer.adapters[name].mergeable:
                raise MergeError(
                    f"adapter {name!r} uses input-conditional gates (gating='input'): its update "
                    "depends on the input, so it cannot be merged into the base weights"
                )


def merged_state_dict(model: nn.Module, layers: dict[str, LoraLayer]) -> dict[str, torch.Tensor]:
    """`model`'s own state dict as a plain model names it, the active adapters of `layers`
    (its LoraLayers by name) folded in.

    Computed beside the model, which is left untouched (merging then unmerging in place
    would move the base weights by float rounding).
    """
    check_mergeable(layers.values())
    state: dict[str, torch.Tensor] = {}
    # Tied weights (an LM head sharing the embedding) stay one tensor, so that
    # save_pretrained still sees them as tied and writes them once.
    copies: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    for key, value in model.state_dict().items():
        owner, sep, rest = key.partition(".base.")
        if sep and owner in layers:  # `<layer>.base.weight` is the model's `<layer>.weight`
            key = f"{owner}.{rest}"
            if rest == "weight":
                state[key] = layers[owner].merged_weight()  # one fresh tensor, adapters folded in
                continue
        elif key.partition(".adapters.")[0] in layers:
            continue  # the adapters' own tensors are not part of the plain model
        ident = (value.data_ptr(), tuple(value.shape))
        if ident not in copies:
            copies[ident] = value.detach().clone()
        state[key] = copies[ident]
    return state


def save_merged(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, tokenizer: Any = None) -> None:
    """A plain transformers checkpoint of `model` with weights `state` (and the tokenizer):
    it loads with `AutoModel...from_pretrained`, no dynalora needed."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
