"""Optimizer, learning-rate schedule, device and precision choices of the training loop."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalora.adapters.config import ConfigError


def param_groups(model: nn.Module, head: nn.Module | None, lr: float, head_lr: float,
                 weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: the head (if any) at `head_lr`; no weight decay on vectors (biases, norms,
    gates) nor on AdaLoRA's singular values (`lora_E`, stored as r x 1: decay would pull them
    to zero, which AdaLoRA reads as unimportant, and prune them)."""
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decays = p.ndim >= 2 and ".lora_E." not in f".{name}."
            groups.setdefault((id(p) in head_ids, decays), []).append(p)
    return [
        {"params": params, "lr": head_lr if is_head else lr, "weight_decay": weight_decay if decays else 0.0}
        for (is_head, decays), params in sorted(groups.items())
    ]


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up to the peak, then linear decay to zero at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    return math.ceil(n_batches / grad_accum)


def total_steps(n_batches: int, grad_accum: int, epochs: float) -> int:
    return max(1, math.ceil(steps_per_epoch(n_batches, grad_accum) * epochs))


def budget_horizon(config: Any, total_steps: int) -> int:
    """The steps an adaptive budget (AdaLoRA, dynamic LoRA, Rank-1 pruning) is scheduled over.

    The whole run, or its first `min_epochs` when set: early stopping may end a run before its
    last step, and with `min_epochs` no checkpoint is chosen and no stop happens before then,
    so every chosen model holds its final budget, whichever method trained it. After the
    horizon the ranks stay as they are."""
    floor = getattr(config, "min_epochs", None)
    return total_steps if floor is None else max(3, min(total_steps, round(total_steps * floor / config.epochs)))


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': no CUDA GPU is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32). auto: bf16 (or fp16) on GPU, fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision='fp16' needs a CUDA GPU; on CPU use bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random generator the loop touches, in a form torch.load(weights_only=True) reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
