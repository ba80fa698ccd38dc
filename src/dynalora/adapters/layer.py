"""The LoRA layer: a frozen linear map plus low-rank updates, read top to bottom.

    h = W0 x + sum over active adapters of  s * w * B diag(g) A dropout(x)

`s` is the adapter's fixed scaling (alpha/r or alpha/sqrt(r), taken at creation so that
resizing the rank later does not rescale what was learned), `w` the allocation weight that
dynamic LoRA moves (1 for plain LoRA), `g` optional per-component gates (Rank-1 Sum LoRA).
The rank is the first dimension of `A`; it may change during training (see
`dynalora.allocation.resize`) and may be 0, in which case the layer adds nothing.

One layer can hold several named adapters (multi-tenant serving): one or more are active,
mixed with weights, or each row of a batch picks its own.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from dynalora.errors import MergeError

SUPPORTED_BASE_TYPES = (nn.Linear, Conv1D)


def base_shape(base: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear or a GPT-2 style Conv1D (stored transposed)."""
    if isinstance(base, nn.Linear):
        return base.out_features, base.in_features
    if isinstance(base, Conv1D):
        return base.nf, base.weight.shape[0]
    raise TypeError(f"LoRA supports nn.Linear and transformers Conv1D, not {type(base).__name__}")


class LoraAdapter(nn.Module):
    """One low-rank update `s * w * B diag(g) A` for a `out x in` weight.

    gating: "none" (plain LoRA), "scalar" (learnable gate per rank-1 component, init 1) or
    "input" (gate = sigmoid(u . mean_token(x) + c), confidence-gated, cannot be merged). The
    token mean skips padding when `pool_mask` (batch x seq, 1 = real token) is set for the
    call, which `DynaLoraModel.forward` does from its `attention_mask` keyword (`pooling_mask`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int,
        scaling: float,
        dropout: float = 0.0,
        init: str = "kaiming",
        gating: str = "none",
    ) -> None:
        super().__init__()
        if r < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        if gating not in ("none", "scalar", "input"):
            raise ValueError(f"gating must be 'none', 'scalar' or 'input', got {gating!r}")
        self.in_features, self.out_features = in_features, out_features
        self.scaling = float(scaling)
        self.init = init
        self.gating = gating
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(self.new_A_rows(r))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        self.gate = nn.Parameter(torch.ones(r)) if gating == "scalar" else None
        if gating == "input":
            # Starts near fully open (sigmoid(4) ~ 0.98) so early training is plain LoRA.
            self.gate_proj = nn.Linear(in_features, r)
            nn.init.zeros_(self.gate_proj.weight)
            nn.init.constant_(self.gate_proj.bias, 4.0)
        else:
            self.gate_proj = None
        # The allocation weight w_l: a buffer (saved, not trained), 1 for plain LoRA.
        self.register_buffer("weight", torch.ones(()))
        self.pool_mask: torch.Tensor | None = None  # set per call for input gates (see pooling_mask)

    def new_A_rows(self, n: int, like: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` fresh rows of A: Kaiming-uniform (a=sqrt(5), as nn.Linear and PEFT) or Gaussian
        with std 1/n (PEFT's 1/r). To grow to rank r, ask for r rows and keep the ones you need,
        so that new rows get std 1/r like the rest. With a (CPU) `generator` the rows are drawn
        from it on the CPU, then moved: the same rows on every device and in every process."""
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        device = like.device if like is not None else None
        rows = torch.empty(n, self.in_features, dtype=dtype, device="cpu" if generator is not None else device)
        if n == 0:
            return rows.to(device) if device is not None else rows
        if self.init == "gaussian":
            nn.init.normal_(rows, std=1.0 / n, generator=generator)
        else:
            nn.init.kaiming_uniform_(rows, a=math.sqrt(5), generator=generator)
        return rows.to(device) if generator is not None and device is not None else rows

    @property
    def r(self) -> int:
        return self.lora_A.shape[0]

    @property
    def mergeable(self) -> bool:
        return self.gate_proj is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update's contribution `s * w * B g A x` (same leading dims as x)."""
        x = x.to(self.lora_A.dtype)
        h = F.linear(self.dropout(x), self.lora_A)
        if self.gate is not None:
            h = h * self.gate
        if self.gate_proj is not None:
            h = h * torch.sigmoid(self.gate_proj(self._pooled(x)))
        return F.linear(h, self.lora_B) * (self.scaling * self.weight)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over tokens that the input gates read: real tokens only when masked."""
        if x.dim() <= 2:
            return x
        mask = self.pool_mask
        if mask is None or mask.dim() != 2 or tuple(mask.shape) != tuple(x.shape[:2]):
            return x.mean(dim=-2, keepdim=True)
        m = (mask != 0).to(dtype=x.dtype, device=x.device).unsqueeze(-1)
        # Pad rows become exact zeros (x * 0), so they add nothing to the sum: the gate of a
        # padded example equals the gate of the same example without padding.
        return (x * m).sum(dim=-2, keepdim=True) / m.sum(dim=-2, keepdim=True).clamp_min(1)

    def delta_weight(self) -> torch.Tensor:
        """Delta W (out x in) of a mergeable adapter."""
        if not self.mergeable:
            raise MergeError(
                "this adapter uses input-conditional gates (gating='input'): its update depends "
                "on the input, so it cannot be merged into the base weight"
            )
        B = self.lora_B if self.gate is None else self.lora_B * self.gate
        return (B @ self.lora_A) * (self.scaling * self.weight)

    def extra_repr(self) -> str:
        return f"r={self.r}, in={self.in_features}, out={self.out_features}, scaling={self.scaling:g}, gating={self.gating}"


class LoraLayer(nn.Module):
    """A frozen `nn.Linear` / `Conv1D` with named LoRA adapters on top."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.out_features, self.in_features = base_shape(base)
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: list[str] = []
        self.mix: dict[str, float] = {}  # weights when several adapters are active at once
        self.merged: list[str] = []
        self.row_adapters: list[str | None] | None = None  # adapter name per batch row, see per_row()
        self.disabled = False

    # Model code sometimes reads `proj.weight` (its dtype, device or shape): show the base's.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    # -- adapters ---------------------------------------------------------------------------
    def add_adapter(self, name: str, adapter: LoraAdapter, activate: bool = True) -> None:
        if (adapter.in_features, adapter.out_features) != (self.in_features, self.out_features):
            raise ValueError(
                f"adapter {name!r} is {adapter.out_features}x{adapter.in_features} but the layer "
                f"is {self.out_features}x{self.in_features}"
            )
        ref = self.base.weight
        self.adapters[name] = adapter.to(device=ref.device)
        if activate and name not in self.active:
            self.active = [name]

    def adapter(self, name: str | None = None) -> LoraAdapter:
        if name is None:
            if len(self.active) != 1:
                raise RuntimeError(f"{len(self.active)} adapters are active; name one")
            name = self.active[0]
        return self.adapters[name]

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.disabled:
            return out
        if self.row_adapters is not None:
            return out + self._per_row_delta(x).to(out.dtype)
        for name in self.active:
            if name in self.merged:
                continue
            adapter = self.adapters[name]
            if adapter.r == 0:
                continue
            delta = adapter(x)
            if name in self.mix:
                delta = delta * self.mix[name]
            out = out + delta.to(out.dtype)
        return out

    def _per_row_delta(self, x: torch.Tensor) -> torch.Tensor:
        """Each row of the batch through its own adapter (None: the base model alone)."""
        if len(self.row_adapters) != x.shape[0]:
            raise ValueError(f"{len(self.row_adapters)} adapter names for a batch of {x.shape[0]}")
        delta = torch.zeros(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
        for name in {n for n in self.row_adapters if n is not None}:
            if name not in self.adapters:
                continue  # this adapter does not touch this layer
            adapter = self.adapters[name]
            rows = torch.tensor([i for i, n in enumerate(self.row_adapters) if n == name], device=x.device)
            if adapter.r:
                delta[rows] = adapter(x[rows]).to(x.dtype)
        return delta

    # -- merge ------------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """Adapter `name`'s update (with its mixing weight) laid out like `base.weight`."""
        delta = self.adapters[name].delta_weight() * self.mix.get(name, 1.0)
        return delta.T if isinstance(self.base, Conv1D) else delta  # Conv1D stores in x out

    def merged_weight(self) -> torch.Tensor:
        """What `base.weight` would be with the active adapters merged (the layer unchanged)."""
        w = self.base.weight.detach().clone()
        with torch.no_grad():
            for name in self.active:
                if name not in self.merged:
                    w += self.delta_weight(name).to(w.dtype)
        return w

    def merge(self, names: list[str] | None = None) -> None:
        """Fold the active (or named) adapters into the base weight: zero added latency."""
        names = [n for n in (names or self.active) if n not in self.merged]
        with torch.no_grad():
            deltas = [self.delta_weight(n) for n in names]  # raises for unmergeable ones first
            for name, delta in zip(names, deltas):
                self.base.weight.add_(delta.to(self.base.weight.dtype))
                self.merged.append(name)

    def unmerge(self) -> None:
        """Subtract what merge() added, restoring the base weight (to float tolerance)."""
        with torch.no_grad():
            while self.merged:
                delta = self.delta_weight(self.merged.pop())
                self.base.weight.sub_(delta.to(self.base.weight.dtype))


@contextmanager
def pooling_mask(adapters: list[LoraAdapter], mask: torch.Tensor | None):
    """Within the block, input-gated `adapters` pool over the real tokens of `mask` only."""
    for adapter in adapters:
        adapter.pool_mask = mask
    try:
        yield
    finally:
        for adapter in adapters:
            adapter.pool_mask = None


@contextmanager
def per_row(layers: list[LoraLayer], names: list[str | None]):
    """Within the block, row i of the batch goes through adapter `names[i]` (None: base only)."""
    if any(layer.merged for layer in layers):
        raise RuntimeError("per-row adapters need the unmerged path: call unmerge() first")
    for layer in layers:
        layer.row_adapters = list(names)
    try:
        yield
    finally:
        for layer in layers:
            layer.row_adapters = None
