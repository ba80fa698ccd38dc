"""Houlsby bottleneck adapters (Houlsby et al., 2019), a baseline.

A small residual MLP `h + W_up act(W_down h)` is inserted after the attention output
projection and after the feed-forward output projection of every layer, before the
residual add and LayerNorm. `W_up` starts at zero, so the adapted model starts exactly
equal to the base model (the paper's near-identity initialisation).
"""

from __future__ import annotations

import torch
from torch import nn

from dynalora.adapters.inject import TargetError, _set_submodule, name_matches

# Per architecture: the attention-output and FFN-output projections, as full-name regexes.
HOULSBY_TARGETS: dict[str, str] = {
    "bert": r".*\.layer\.\d+\.(attention\.)?output\.dense",
    "roberta": r".*\.layer\.\d+\.(attention\.)?output\.dense",
    "electra": r".*\.layer\.\d+\.(attention\.)?output\.dense",
    "distilbert": r".*\.layer\.\d+\.(attention\.out_lin|ffn\.lin2)",
}


class BottleneckAdapter(nn.Module):
    """`h + up(act(down(h)))`; exactly the identity at initialisation (up = 0)."""

    def __init__(self, hidden: int, bottleneck: int, init_std: float = 1e-2) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        self.act = nn.GELU()
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class HoulsbyLayer(nn.Module):
    """A frozen projection (`.base`) followed by its bottleneck adapter (`.adapter`)."""

    def __init__(self, base: nn.Linear, bottleneck: int) -> None:
        super().__init__()
        self.base = base
        self.adapter = BottleneckAdapter(base.out_features, bottleneck)
        self.adapter.to(device=base.weight.device, dtype=base.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def add_houlsby_adapters(model: nn.Module, bottleneck: int,
                         targets: list[str] | str | None = None) -> dict[str, HoulsbyLayer]:
    """Insert an adapter after every target projection; returns the new layers by name.

    `targets`: module names (suffix match) or a full-name regex; None picks the
    architecture's attention-output and FFN-output projections.
    """
    if bottleneck <= 0:
        raise ValueError(f"bottleneck must be a positive integer, got {bottleneck}")
    if targets is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in HOULSBY_TARGETS:
            raise TargetError(f"no default Houlsby adapter positions for model type {model_type!r}; "
                              "pass target_modules naming the projections to follow")
        targets = HOULSBY_TARGETS[model_type]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and name_matches(n, targets)]
    if not names:
        raise TargetError(f"Houlsby adapter targets {targets!r} match no linear layer in {type(model).__name__}")
    layers = {}
    for name in names:
        layer = HoulsbyLayer(model.get_submodule(name), bottleneck)
        _set_submodule(model, name, layer)
        layers[name] = layer
    return layers
