"""Rank-1 Sum LoRA gates: the proximal L1 step and the choice of components to prune.

The L1 penalty `l1 * sum |g|` is not added to the loss (its subgradient would only make
gates oscillate around 0); after each optimizer step the gates go through its proximal map,
the soft threshold `g <- sign(g) max(|g| - lr * l1, 0)`, which sets small gates to exactly 0
(SoRA's sparsifying update). Pruning then removes the zero-gate components physically.
"""

from __future__ import annotations

import math

import torch

from dynalora.adapters.layer import LoraAdapter


def soft_threshold_(gates: list[torch.Tensor], thresholds: list[float]) -> None:
    """g <- sign(g) * max(|g| - t, 0), in place; gates below t in size become exactly 0.

    Written as g - clamp(g, -t, t) (the same floats as softshrink: g - t, g + t, or g - g = 0)
    so that all layers' gates go through three fused foreach kernels per step, not a loop.
    """
    live = [(g, float(t)) for g, t in zip(gates, thresholds) if g.numel() and t > 0]
    if not live:
        return
    tensors, limits = [g for g, _ in live], [t for _, t in live]
    with torch.no_grad():
        inside = torch._foreach_clamp_max(tensors, limits)
        torch._foreach_clamp_min_(inside, [-t for t in limits])
        torch._foreach_sub_(tensors, inside)


def target_components(step: int, start: int, end: int, initial: int, budget: int | None) -> int | None:
    """What to keep at `step` (components, or parameters with budget_in="parameters"): from
    `initial` at `start` down to `budget` at `end` along AdaLoRA's cubic curve (fast early,
    gentle late). None: no budget."""
    if budget is None:
        return None
    if budget >= initial:
        return initial
    progress = 1.0 if end <= start else min(max((step - start) / (end - start), 0.0), 1.0)
    return budget + math.ceil((initial - budget) * (1.0 - progress) ** 3)


def prune_plan(adapters: dict[str, LoraAdapter], scores: dict[str, torch.Tensor],
               target: int | None, costs: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Indices of the components each layer keeps.

    Components whose scalar gate is exactly 0 always go. Then, while what is kept exceeds
    `target`, the component of lowest score per unit goes (over all layers together; ties:
    earlier layer and index go first). Units: components (`costs` None), or each layer's cost
    per component (its parameters, in + out), so a wide layer's component must earn more.
    """
    units = costs or dict.fromkeys(adapters, 1)
    keep: dict[str, torch.Tensor] = {}
    candidates: list[tuple[float, int, int, str]] = []
    for order, (name, adapter) in enumerate(adapters.items()):
        alive = torch.ones(adapter.r, dtype=torch.bool)
        if adapter.gate is not None:
            alive &= adapter.gate.detach().cpu() != 0
        keep[name] = alive
        score = scores[name].detach().float().cpu()
        candidates += [(float(score[i]) / units[name], order, i, name) for i in alive.nonzero().flatten().tolist()]
    if target is not None:
        kept = sum(units[name] for *_, name in candidates)
        candidates.sort()
        for _, _, i, name in candidates:
            if kept <= target:
                break
            keep[name][i] = False
            kept -= units[name]
    return {name: mask.nonzero().flatten() for name, mask in keep.items()}
