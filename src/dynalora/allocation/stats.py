"""Running statistics of each adapted layer's input (docs/method.md, "Input-driven ranks").

    v_l = mean over features j of Var over tokens (X_l[:, j])

Per feature we keep (count, mean, M2) and fold each batch in with Chan et al.'s parallel
update, in float64: statistics gathered in different processes (or micro-batches) merge into
exactly what one pass over all the tokens would give, up to float64 rounding.

Collection costs nothing on steps that are not sampled: the forward pre-hooks exist only
while a sampled step runs (`attach()` before its forward, `detach()` after). Within a sampled
forward, at most `max_tokens` token rows per layer are read, taken at a fixed stride (no random
numbers are drawn, so sampling never disturbs the training RNG). Padding is left out when the
model is called with an `attention_mask` keyword and the layer sees (batch, seq, features)
inputs of the mask's shape; pad positions carry hidden states that no real token attends to
and would otherwise distort the variance. Padding is dropped by weighting rows with the mask
rather than by boolean indexing, and the count stays a device tensor, so a sampled forward
never waits for the accelerator (boolean indexing would synchronise once per layer). Only
training forwards with autograd on are counted, so evaluation in the middle of a sampled step
does not leak in.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class RunningMoments:
    """Per-feature count / mean / M2 over token rows, mergeable (Chan's parallel algorithm).

    The count is a float64 0-dim tensor beside mean and M2 (exact below 2**53 tokens): a
    batch's number of real tokens is then never read back to the host while training.
    """

    def __init__(self, features: int) -> None:
        self.total = torch.zeros((), dtype=torch.float64)
        self.mean = torch.zeros(features, dtype=torch.float64)
        self.m2 = torch.zeros(features, dtype=torch.float64)

    @property
    def count(self) -> int:
        """Tokens folded in so far (reads the device: for reports, not for the training step)."""
        return int(self.total)

    def update(self, rows: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Fold in a (tokens, features) block; rows whose weight (0 or 1) is 0 are left out."""
        rows = rows.detach().reshape(-1, self.mean.numel()).to(torch.float64)
        if rows.shape[0] == 0:
            return
        if self.mean.device != rows.device:  # adopt the data's device (no host copies on GPU runs)
            self.total, self.mean, self.m2 = (t.to(rows.device) for t in (self.total, self.mean, self.m2))
        if weights is None:
            n = rows.new_full((), rows.shape[0])
            mean = rows.mean(dim=0)
            m2 = (rows - mean).pow(2).sum(dim=0)
        else:  # float64 operands are never downcast by autocast
            w = weights.detach().reshape(-1).to(rows)
            n = w.sum()
            mean = (w @ rows) / n.clamp_min(1)
            m2 = w @ (rows - mean).pow(2)
        self._merge(n, mean, m2)

    def merge(self, other: RunningMoments) -> None:
        if other.mean.numel() != self.mean.numel():
            raise ValueError(f"cannot merge statistics of {other.mean.numel()} and {self.mean.numel()} features")
        device = self.mean.device
        self._merge(other.total.to(device), other.mean.to(device), other.m2.to(device))

    def _merge(self, n_b: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        # Branch-free (no host read of the counts): an empty side changes nothing, and when
        # this side is empty the result is exactly (n_b, mean_b, m2_b).
        n = self.total + n_b
        share = n_b / n.clamp_min(1)
        delta = mean_b - self.mean
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2_b + delta.pow(2) * (self.total * share)
        self.total = n

    def variance(self) -> float:
        """Mean over features of the per-feature (unbiased) variance; 0 before two tokens."""
        count = float(self.total)
        if count < 2:
            return 0.0
        return float(self.m2.mean() / (count - 1))

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean = torch.tensor(state["mean"], dtype=torch.float64)
        if mean.numel() != self.mean.numel():
            raise ValueError(f"saved statistics have {mean.numel()} features, this layer {self.mean.numel()}")
        device = self.mean.device
        self.total = torch.tensor(float(state["count"]), dtype=torch.float64, device=device)
        self.mean = mean.to(device)
        self.m2 = torch.tensor(state["m2"], dtype=torch.float64, device=device)


class InputStatistics:
    """Input variance of a set of layers, gathered by hooks that exist only while attached.

    root: the module the user calls (its `attention_mask` keyword is read to skip padding).
    layers: the adapted modules by name; their first positional input is what is measured.
    """

    def __init__(self, root: nn.Module, layers: dict[str, nn.Module], max_tokens: int = 2048) -> None:
        self.root = root
        self.layers = dict(layers)
        self.max_tokens = max_tokens
        self.moments = {name: RunningMoments(_in_features(m)) for name, m in self.layers.items()}
        self._handles: list[RemovableHandle] = []
        self._mask: torch.Tensor | None = None
        self._kept: dict[tuple, torch.Tensor] = {}  # sampled mask rows, shared by the layers of one forward

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        if self._handles:
            return
        self._handles.append(self.root.register_forward_pre_hook(self._capture_mask, with_kwargs=True))
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_pre_hook(self._make_hook(name)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._mask = None
        self._kept.clear()

    def _capture_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        self._kept.clear()

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if not (module.training and torch.is_grad_enabled()) or not args:
                return
            with torch.no_grad():
                self.moments[name].update(*self._sample(args[0]))
        return hook

    def _sample(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(every stride-th token row, their 0/1 mask weights or None without a usable mask).

        Striding first keeps the copy small (a strided view; only those rows are converted).
        """
        rows = x.reshape(-1, x.shape[-1])
        stride = max(1, math.ceil(rows.shape[0] / self.max_tokens))
        mask = self._mask
        if mask is None or x.dim() != 3 or tuple(x.shape[:2]) != tuple(mask.shape):
            return rows[::stride], None
        key = (stride, x.device)
        if key not in self._kept:
            self._kept[key] = (mask.reshape(-1)[::stride].to(device=x.device) != 0).to(torch.float64)
        return rows[::stride], self._kept[key]

    def variances(self, names: list[str] | None = None) -> torch.Tensor:
        """v_l for each layer (in `names` order, default insertion order), float64 on the CPU."""
        names = names if names is not None else list(self.moments)
        return torch.tensor([self.moments[n].variance() for n in names], dtype=torch.float64)

    def merge(self, other: InputStatistics) -> None:
        """Fold in statistics gathered elsewhere (another process, another shard)."""
        for name, moments in other.moments.items():
            if name in self.moments:
                self.moments[name].merge(moments)

    def state_dict(self) -> dict[str, Any]:
        return {name: m.state_dict() for name, m in self.moments.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = sorted(set(state) - set(self.moments))
        if unknown:
            raise ValueError(f"saved input statistics for layers this model does not adapt: {unknown[:3]}")
        for name, moments in state.items():
            self.moments[name].load_state_dict(moments)


def _in_features(module: nn.Module) -> int:
    if hasattr(module, "in_features"):
        return int(module.in_features)
    raise TypeError(f"cannot tell the input width of {type(module).__name__}")
