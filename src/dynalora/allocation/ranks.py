"""The allocation rule as pure functions (docs/method.md, "Allocation weights" and "Input-driven ranks"): weights, rank scores, budget.

    alpha = softmax(I / mean(I) / tau)  or  I / sum(I)        allocation_shares
    w     = L * alpha, clamped to [w_min, w_max], mean 1       clamp_to_mean_one
    r_l   = r_base * (1 + beta * v_l / mean v) * w_l ** gamma  rank_scores
    integer ranks in [r_min, r_max] with sum r_l c_l <= budget project_to_budget
    ... keeping ranks that would move by <= hysteresis      settle_ranks

Everything here works on small 1-D tensors (one entry per adapted layer) in float64; the
per-step pieces (shares, weights) run on any device without synchronising with the host,
`project_to_budget` (called only at reallocations) works on host numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

TINY = 1e-30


def allocation_shares(importance: torch.Tensor, weighting: str = "softmax", tau: float = 1.0) -> torch.Tensor:
    """alpha_l >= 0 with sum 1. All-zero importance (nothing learned yet) gives uniform shares.

    softmax acts on I / mean(I): importance has no natural scale (it depends on the loss, the
    model and the learning rate), so dividing by the mean makes `tau` mean the same everywhere.
    Runs on the importance's device without host synchronisation (it is called every step).
    """
    imp = importance.detach().to(torch.float64).clamp_min(0)
    if weighting == "softmax":
        return torch.softmax(imp / imp.mean().clamp_min(TINY) / tau, dim=0)
    if weighting == "off":
        return torch.full_like(imp, 1.0 / max(imp.numel(), 1))
    if weighting == "linear":
        total = imp.sum()
        uniform = torch.full_like(imp, 1.0 / max(imp.numel(), 1))
        return torch.where(total > 0, imp / total.clamp_min(TINY), uniform)
    raise ValueError(f"weighting must be 'softmax', 'linear' or 'off', got {weighting!r}")


def clamp_to_mean_one(weights: torch.Tensor, w_min: float, w_max: float) -> torch.Tensor:
    """clamp(s * w, w_min, w_max) with the scale s that makes the mean exactly 1.

    Needs w_min <= 1 <= w_max. f(s) = mean(clamp(s w)) is piecewise linear and nondecreasing,
    with kinks at w_min / w_i and w_max / w_i; evaluating f at every kink and interpolating
    finds s exactly, with a fixed number of tensor operations and no host synchronisation.
    """
    w = weights.detach().to(torch.float64).clamp_min(1e-12)
    if w.numel() == 0:
        return w
    kinks = torch.cat([w_min / w, w_max / w]).sort().values
    f = (kinks[:, None] * w[None, :]).clamp(w_min, w_max).mean(dim=1)
    i = torch.searchsorted(f, f.new_ones(1)).clamp(1, kinks.numel() - 1)
    lo, hi, f_lo, f_hi = kinks[i - 1], kinks[i], f[i - 1], f[i]
    scale = lo + (1.0 - f_lo) * (hi - lo) / (f_hi - f_lo).clamp_min(TINY)
    return (scale * w).clamp(w_min, w_max)


def rank_scores(r_base: float, variance: torch.Tensor, weights: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Real-valued target ranks r_base * (1 + beta * v~) * w ** gamma, v~ = v / mean(v).

    Without statistics (all-zero variance) the variance factor is the same for every layer.
    """
    v = variance.detach().to(torch.float64).clamp_min(0)
    mean = v.mean() if v.numel() else v.new_zeros(())
    v_rel = torch.where(mean > 0, v / mean.clamp_min(TINY), torch.ones_like(v))
    w = weights.detach().to(device=v.device, dtype=torch.float64).clamp_min(0)
    return r_base * (1.0 + beta * v_rel) * w.pow(gamma)


def uniform_budget(costs: Sequence[int], r: int) -> int:
    """Parameters of uniform LoRA at rank r: sum_l r (d_l + k_l)."""
    return int(r * sum(costs))


def project_to_budget(scores: torch.Tensor | Sequence[float], costs: Sequence[int], budget: int,
                      r_min: int = 0, r_max: int | Sequence[int] | None = None, exact: bool = True) -> list[int]:
    """Integer ranks near `lambda * scores`, within [r_min, r_max], costing at most `budget`.

    `r_max` is one cap for every layer or a cap per layer (a layer's rank is pointless above
    min(in, out): the extra components would be linearly dependent); None: the largest score.

    `costs[l]` is what one rank costs in layer l (d_l + k_l). With `exact`, lambda is chosen so
    the clamped real ranks spend the whole budget, and the fractional parts are handed out
    largest-remainder first while the budget allows, so the total lands within one layer's
    cost of the budget (exactly on it when the costs allow). Without `exact`, scores are only
    scaled down when they exceed the budget, and rounded to nearest where the budget allows.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).clamp_min(0).tolist()
    c = [int(x) for x in costs]
    n = len(s)
    if len(c) != n:
        raise ValueError(f"{n} scores but {len(c)} costs")
    if any(x <= 0 for x in c):
        raise ValueError(f"costs must be positive, got {c}")
    if r_max is None:
        r_max = max(1, math.ceil(max(s, default=0.0)))
    caps = [int(r_max)] * n if isinstance(r_max, (int, float)) else [int(x) for x in r_max]
    if len(caps) != n:
        raise ValueError(f"{n} scores but {len(caps)} rank caps")
    if any(r_min > cap for cap in caps):
        raise ValueError(f"r_min={r_min} > r_max={min(caps)}")
    floor_cost = r_min * sum(c)
    if budget < floor_cost:
        raise ValueError(f"budget={budget} is below what r_min={r_min} in every layer costs ({floor_cost})")
    if all(x == 0 for x in s):
        s = [1.0] * n

    def spent(lam: float) -> float:
        return sum(min(max(lam * x, r_min), cap) * cost for x, cost, cap in zip(s, c, caps))

    if spent(1.0) <= budget and not exact:
        lam = 1.0
    else:
        lo, hi = 0.0, 1.0
        while spent(hi) < budget and hi < 1e15:
            lo, hi = hi, hi * 2
        for _ in range(200):  # bisection keeps spent(lo) <= budget
            mid = (lo + hi) / 2
            if spent(mid) <= budget:
                lo = mid
            else:
                hi = mid
        lam = lo
    real = [min(max(lam * x, r_min), cap) for x, cap in zip(s, caps)]
    ranks = [math.floor(x) for x in real]
    left = budget - sum(r * cost for r, cost in zip(ranks, c))
    order = sorted(range(n), key=lambda i: (-(real[i] - ranks[i]), i))
    for i in order:
        if not exact and real[i] - ranks[i] < 0.5:
            continue
        if ranks[i] < caps[i] and c[i] <= left:
            ranks[i] += 1
            left -= c[i]
    # Exact: budget can remain only when the scored layers are full; fill what still fits.
    while exact and any(r < cap and cost <= left for r, cost, cap in zip(ranks, c, caps)):
        i = next(i for i in order if ranks[i] < caps[i] and c[i] <= left)
        ranks[i] += 1
        left -= c[i]
    return ranks


def adapter_parameters(ranks: Sequence[int], costs: Sequence[int]) -> int:
    """sum_l r_l (d_l + k_l): what the ranks cost."""
    return int(sum(int(r) * int(cost) for r, cost in zip(ranks, costs)))


def settle_ranks(scores: torch.Tensor | Sequence[float], costs: Sequence[int], budget: int, current: Sequence[int],
                 hysteresis: int, r_min: int = 0, r_max: int | Sequence[int] | None = None,
                 exact: bool = True) -> list[int]:
    """`project_to_budget`, except that layers whose new rank would differ from `current` by at
    most `hysteresis` keep their current rank; the other layers share the rest of the budget.

    Keeping a layer frees or takes a little budget, so the others are projected again with
    what is left (their scores keep their ratios). If that leaves them nothing sensible (the
    rest of the budget is below their r_min floor), the plain projection is used.
    """
    ranks = project_to_budget(scores, costs, budget, r_min, r_max, exact)
    if hysteresis <= 0:
        return ranks
    keep = [abs(new - old) <= hysteresis for new, old in zip(ranks, current)]
    if all(keep):
        return [int(r) for r in current]
    if not any(keep):
        return ranks
    s = torch.as_tensor(scores, dtype=torch.float64).tolist()
    moving = [i for i, k in enumerate(keep) if not k]
    left = budget - sum(int(current[i]) * int(costs[i]) for i, k in enumerate(keep) if k)
    if left < r_min * sum(int(costs[i]) for i in moving):
        return ranks
    caps = r_max if r_max is None or isinstance(r_max, (int, float)) else [r_max[i] for i in moving]
    moved = project_to_budget([s[i] for i in moving], [costs[i] for i in moving], left, r_min, caps, exact)
    settled = [int(r) for r in current]
    for i, r in zip(moving, moved):
        settled[i] = r
    return settled
