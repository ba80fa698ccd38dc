"""A saved adapter checked against the base model before anything is built from it.

The JSON document says which layers carry an adapter and with which rank; the tensors must
agree with it and with the base model's layers. All of this is checked before a single
adapter is allocated: a document claiming `"r": 1000000000` would otherwise make the loader
try to allocate terabytes before any shape comparison. Values must be finite (a NaN scaling
or weight would evaluate to nonsense without an error), and tensors of a non-float type are
cast with a warning that says so.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora.adapters.config import is_int, is_number
from dynalora.adapters.layer import SUPPORTED_BASE_TYPES, base_shape
from dynalora.errors import AdapterFileError


class AdapterDtypeWarning(UserWarning):
    """Adapter tensors stored in a type other than floating point (they are cast)."""


def check_layer_entries(document: dict[str, Any], where: str | Path) -> None:
    """Every `layers` entry has an integer rank >= 0 and finite scaling / allocation weight."""
    for name, layer in document["layers"].items():
        if not isinstance(layer, dict):
            raise AdapterFileError(f"{where}: layer {name}: expected an object with r and scaling, found {layer!r}")
        r = layer.get("r")
        if not is_int(r) or r < 0:
            raise AdapterFileError(f"{where}: layer {name}: r={r!r} must be an integer >= 0")
        for key in ("scaling", "weight"):
            value = layer.get(key, 1.0)
            if not is_number(value) or not math.isfinite(value):
                raise AdapterFileError(f"{where}: layer {name}: {key}={value!r} must be a finite number")


def check_against_model(model: nn.Module, document: dict[str, Any], state: dict[str, torch.Tensor],
                        where: str | Path) -> None:
    """Ranks, sizes and tensor shapes of every saved layer fit `model`; nothing is allocated."""
    modules = dict(model.named_modules())
    for name, layer in document["layers"].items():
        module = modules.get(name)
        base = getattr(module, "base", module)  # a layer already wrapped by another adapter
        if not isinstance(base, SUPPORTED_BASE_TYPES):
            continue  # absent or unsupported modules get their own error (check_layers_exist, inject)
        out_features, in_features = base_shape(base)
        saved = (layer.get("out", out_features), layer.get("in", in_features))
        if saved != (out_features, in_features):
            raise AdapterFileError(f"{where}: layer {name} was saved for a {saved[1]} -> {saved[0]} map, this "
                                   f"model's is {in_features} -> {out_features}; the adapter is for another base model")
        r = layer["r"]
        if r > max(in_features, out_features):
            raise AdapterFileError(f"{where}: layer {name}: r={r} exceeds the layer's size "
                                   f"({in_features} -> {out_features}); the adapter config is corrupt")
        for key, shape in ((f"{name}.lora_A", (r, in_features)), (f"{name}.lora_B", (out_features, r))):
            if key in state and tuple(state[key].shape) != shape:
                raise AdapterFileError(f"{where}: {key} has shape {tuple(state[key].shape)}, but the config says "
                                       f"r={r} for this {in_features} -> {out_features} layer, i.e. {shape}")


def check_tensors(state: dict[str, torch.Tensor], where: str | Path) -> None:
    """Finite values only; non-float tensors are named in a warning (they are cast on load)."""
    odd = sorted(f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in state.items()
                 if not (v.is_floating_point() or v.is_complex()))
    if odd:
        warnings.warn(f"{where}: {len(odd)} tensor(s) are not floating point and will be cast to the "
                      f"model's type: {', '.join(odd[:3])}{'...' if len(odd) > 3 else ''}",
                      AdapterDtypeWarning, stacklevel=3)
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise AdapterFileError(f"{where}: tensor {key} holds {bad} NaN/inf value(s); the file is damaged "
                                   "or came from a diverged run")
