"""`rank_rule="target"`: ranks from what each of a layer's directions is worth (docs/method.md).

The default rule gives a layer rank in proportion to its weight, that is to how much it still
has to learn in total. Where the budget is tight that is the wrong question: a layer with much
left to learn spread over many directions gains little from one more, while a layer whose few
directions each carry much loses a lot from giving one up (benchmarks/allocation_toy.py: at a
tight budget the default rule ends below uniform LoRA). This rule asks what one more (or one
fewer) direction is worth.

At a probe step the controller has each layer's full-weight gradient G (or its sketch
Omega^T G, see grow_init.GradientProbe) and its update Delta W = s w B A (sketched alike).
Between two probe steps a secant gives the layer's curvature along the path its update took,
    kappa = <G2 - G1, W2 - W1> / ||W2 - W1||^2,
and under a quadratic model of the loss in that layer's weight the update the layer is heading
for is the Newton point T = Delta W - G / kappa. A direction of T with singular value tau
carries kappa tau^2 / 2 of loss, whether the adapter already holds it or lacks it. Ranks then
take the most valuable directions per parameter within the budget (every layer at least
r_min, at most its cap), as the best allocation would if the needs were known; on a quadratic
toy this recovers them exactly. A layer whose secant is undefined (its update did not move, or
the curvature came out <= 0 from gradient noise) keeps its rank.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dynalora.adapters.layer import LoraAdapter


def sketched_factors(adapter: LoraAdapter, sketch: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(left, right) with left @ right = Delta W (out x in), or Omega^T Delta W with the probe's
    sketch Omega (out x k); float32. Kept as factors: a rank-r update is small to hold and to save."""
    with torch.no_grad():
        B = adapter.lora_B.detach().float()
        if sketch is not None:
            B = sketch.to(B.device).T @ B
        return B * (adapter.scaling * float(adapter.weight)), adapter.lora_A.detach().float().clone()


def secant_curvature(grad: torch.Tensor, update: tuple[torch.Tensor, torch.Tensor], prev_grad: torch.Tensor,
                     prev_update: tuple[torch.Tensor, torch.Tensor]) -> float | None:
    """kappa = <G2 - G1, W2 - W1> / ||W2 - W1||^2 between two probes (Delta W as (left, right)
    factors), or None when it is undefined: the update did not move, or noise made it <= 0."""
    with torch.no_grad():
        step = (update[0] @ update[1]).double() - (prev_update[0] @ prev_update[1]).double()
        moved = float(step.pow(2).sum())
        kappa = float(((grad - prev_grad).double() * step).sum()) / moved if moved > 0 else math.nan
    return kappa if math.isfinite(kappa) and kappa > 0 else None


def direction_values(grad: torch.Tensor, update: tuple[torch.Tensor, torch.Tensor], kappa: float | None,
                     cap: int) -> list[float] | None:
    """kappa tau_j^2 / 2 for the top `cap` singular values tau_j of the Newton point
    T = Delta W - G / kappa, largest first; None without a curvature."""
    if kappa is None:
        return None
    with torch.no_grad():
        tau = torch.linalg.svdvals((update[0] @ update[1]).double() - grad.double() / kappa)[:cap]
    return (kappa * tau.square() / 2).tolist()


def encode(tensor: torch.Tensor) -> dict[str, Any]:
    """A float32 tensor as JSON-able data (controller states are plain data), bit-exact."""
    data = tensor.detach().float().contiguous().cpu().numpy().tobytes()
    return {"shape": list(tensor.shape), "float32": base64.b64encode(data).decode("ascii")}


def decode(data: dict[str, Any], device: torch.device | str = "cpu") -> torch.Tensor:
    values = np.frombuffer(base64.b64decode(data["float32"]), dtype=np.float32).copy()
    return torch.from_numpy(values).reshape(data["shape"]).to(device)


def greedy_ranks(values: Sequence[Sequence[float] | None], costs: Sequence[int], budget: int, current: Sequence[int],
                 r_min: int, caps: Sequence[int]) -> list[int]:
    """Ranks that take the directions of highest value per parameter within `budget`: every
    layer at least r_min and at most its cap, a layer's j-th direction only after its first
    j - 1; layers without values (None) keep their `current` rank."""
    ranks = [int(c) if v is None else min(r_min, int(cap)) for v, c, cap in zip(values, current, caps)]
    left = budget - sum(r * int(c) for r, c in zip(ranks, costs))
    offers = sorted(((v[j] / costs[i], i, j) for i, v in enumerate(values) if v is not None
                     for j in range(ranks[i], min(len(v), caps[i]))), key=lambda o: (-o[0], o[1], o[2]))
    for _, i, j in offers:  # values fall with j, so a layer's directions come in order
        if ranks[i] == j and costs[i] <= left:
            ranks[i] += 1
            left -= costs[i]
    return ranks


Probe = tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]  # (G, Delta W as (left, right) factors)


class TargetRule:
    """The rule's memory between probes: each layer's (G, Delta W) at the last probe (the
    anchor the next secant starts from), and what the last decision saw (for the record)."""

    def __init__(self, names: Sequence[str], pooled: bool = False) -> None:
        self.names = list(names)
        self.pooled = pooled  # curvature="pooled": the median secant for every layer
        self.anchor: dict[str, Probe] | None = None
        self.seen: dict[str, Any] | None = None

    def ranks(self, now: dict[str, Probe], current: Sequence[int], costs: Sequence[int], budget: int, r_min: int,
              caps: Sequence[int]) -> list[int]:
        """The ranks from the secant between the anchor and `now` (which becomes the anchor);
        `current` before a first secant exists."""
        if self.anchor is None:
            self.anchor = now
            return [int(r) for r in current]
        curvature = [secant_curvature(*now[name], *self.anchor[name]) for name in self.names]
        if self.pooled:  # a small, noisy kappa inflates G / kappa: one curvature for all
            defined = sorted(k for k in curvature if k is not None)
            curvature = [defined[len(defined) // 2] if defined else None] * len(curvature)
        values = [direction_values(*now[name], kappa, cap) for name, kappa, cap in zip(self.names, curvature, caps)]
        self.anchor = now
        # what the decision saw (None: no curvature, the layer kept its rank)
        self.seen = {"curvature": dict(zip(self.names, curvature)),
                     "top_values": {n: None if v is None else v[:4] for n, v in zip(self.names, values)}}
        return greedy_ranks(values, costs, budget, current, r_min, caps)

    def state_dict(self) -> dict[str, Any] | None:
        """The anchor as JSON-able data (bit-exact), None before the first probe."""
        if self.anchor is None:
            return None
        return {k: [encode(g), encode(left), encode(right)] for k, (g, (left, right)) in self.anchor.items()}

    def load_state_dict(self, state: dict[str, Any] | None, device: torch.device | str = "cpu") -> None:
        self.anchor = None if state is None else {
            k: (decode(g, device), (decode(left, device), decode(right, device))) for k, (g, left, right) in state.items()}

