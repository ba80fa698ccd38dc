"""Configs for dynamic LoRA and Rank-1 Sum LoRA (see docs/method.md).

Both extend `LoraConfig`, so everything that builds plain LoRA (injection, saving, export)
builds them too; the extra fields drive the `AllocationController` during training.

Schedules are in optimizer steps (1-based: step t is the t-th `optimizer.step()`). Fields left
at None are resolved from the run's `total_steps` by `resolve_schedule` (fractions below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dynalora.adapters.config import ConfigError, LoraConfig, check, is_int, is_number

# Fractions of total_steps used when a schedule field is None. Warm-up 10%: B starts at 0,
# so importance is meaningless for the first steps. Final 70%: ranks freeze with 30% of the
# run left so the last shapes converge. delta_t = total/20, which gives about 12
# reallocations between warm-up and final.
WARMUP_FRACTION = 0.10
FINAL_FRACTION = 0.70
REALLOCATIONS = 20


@dataclass
class DynamicLoraConfig(LoraConfig):
    """Dynamic LoRA: per-layer ranks and allocation weights that move during training.

    `r` is r_base: the starting rank of every layer and, with `budget=None`, the budget is
    what uniform LoRA at `r` uses (`sum_l r (d_l + k_l)`), so comparisons are at equal size.

    Importance (2a): `importance_beta` is the EMA coefficient of I_l; `uncertainty=True` uses
        AdaLoRA's score EMA(I) * EMA(|I - EMA(I)|) (coefficient `uncertainty_beta`). Both are
        AdaLoRA's defaults (0.85). Read every optimizer step from step 1 to t_final, so the
        EMA is warm when allocation starts.
    Weights (2b): `weighting` "softmax" (temperature `tau`) or "linear" (I / sum I); target
        w = L * alpha, clamped to [w_min, w_max] and renormalised to mean 1, recomputed every
        `weight_every` steps; the weights move one EMA step (coefficient `weight_beta`)
        towards it every step. Refreshing the target every few steps instead of every step
        changes little (the importance EMA it follows has a time constant of ~7 steps) and
        cuts the controller's per-step kernel launches by more than half, which is what
        counts on a GPU where small steps are launch-bound; weight_every=1 is the exact rule.
        Deviation from docs/method.md's softmax(I / tau): the softmax acts on I / mean(I), because
        raw importance has no fixed scale (it moves with the loss, the model and the learning
        rate, and is often orders of magnitude below 1, where any practical tau gives
        near-uniform weights), so tau means the same in every run.
    Ranks (2c): r_l ~ r * (1 + beta * v~_l) * w_l ** gamma, with w_l the smoothed weight the
        layer actually uses (docs/method.md's L * alpha_l). gamma=0 is the paper-literal rule (rank
        from input variance only); the default 1 lets importance move ranks too, otherwise it
        would only scale updates. Input variance is sampled every `stats_every` steps on at
        most `stats_max_tokens` tokens per layer. Ranks are clamped to [r_min, r_max] (r_max
        None: 4 * r) and projected onto `budget` parameters (sum_l r_l (d_l + k_l); None: what
        uniform LoRA at r uses); `budget_exact` spends it as fully as integer ranks allow
        (largest remainder), else only caps it. Since the projection rescales the real-valued
        ranks, only the ratios of r * (1 + beta v~) * w ** gamma matter when `budget_exact`.
    Schedule (2d): the first reallocation is at t_warmup + delta_t (at t_warmup the weights are
        still 1, so ranks would follow the variance alone), then every `delta_t` steps up to
        and including t_final. Weights start moving at t_warmup + 1. After t_final, ranks,
        weights and statistics are all frozen and the controller does no per-step tensor work.
    Shrink: "svd" keeps the best rank-r approximation of B A; "importance" keeps the
        components with the largest ||b_i|| * ||a_i||. Resizing never changes the adapter's
        `scaling` (alpha / r at creation), so growing leaves the function unchanged.
    Regulariser (2e): lambda_a * sum ||A||^2 + lambda_b * sum ||B||^2
        + lambda_orth * sum (||A A^T - I||^2 + ||B^T B - I||^2).
    """

    method: ClassVar[str] = "dynamic"

    importance_beta: float = 0.85
    uncertainty: bool = False
    uncertainty_beta: float = 0.85
    weighting: str = "softmax"
    tau: float = 1.0
    weight_beta: float = 0.9
    weight_every: int = 5
    w_min: float = 0.25
    w_max: float = 4.0
    beta: float = 1.0
    stats_every: int = 10
    stats_max_tokens: int = 2048
    gamma: float = 1.0
    r_min: int = 0
    r_max: int | None = None
    budget: int | None = None
    budget_exact: bool = True
    t_warmup: int | None = None
    t_final: int | None = None
    delta_t: int | None = None
    shrink: str = "svd"
    lambda_a: float = 0.0
    lambda_b: float = 0.0
    lambda_orth: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.gating == "none", "gating", "dynamic LoRA uses ungated adapters ('none'); "
              "use Rank1LoraConfig for gates", self.gating)
        _check_numbers(self, ("importance_beta", "uncertainty_beta", "weight_beta", "tau", "w_min", "w_max",
                              "beta", "gamma", "lambda_a", "lambda_b", "lambda_orth"))
        for name in ("importance_beta", "uncertainty_beta", "weight_beta"):
            value = getattr(self, name)
            check(0.0 <= value < 1.0, name, "must be in [0, 1)", value)
        check(self.weighting in ("softmax", "linear"), "weighting", "must be 'softmax' or 'linear'",
              self.weighting)
        check(self.tau > 0, "tau", "must be > 0", self.tau)
        check(0 < self.w_min <= 1.0, "w_min", "must be in (0, 1] (weights have mean 1)", self.w_min)
        check(self.w_max >= 1.0, "w_max", "must be >= 1 (weights have mean 1)", self.w_max)
        check(self.beta >= 0, "beta", "must be >= 0", self.beta)
        check(self.gamma >= 0, "gamma", "must be >= 0", self.gamma)
        check(_pos_int(self.weight_every), "weight_every", "must be a positive integer", self.weight_every)
        check(_pos_int(self.stats_every), "stats_every", "must be a positive integer", self.stats_every)
        check(_pos_int(self.stats_max_tokens), "stats_max_tokens", "must be a positive integer",
              self.stats_max_tokens)
        check(is_int(self.r_min) and self.r_min >= 0, "r_min", "must be an integer >= 0",
              self.r_min)
        if self.r_max is None:
            self.r_max = 4 * self.r
        check(_pos_int(self.r_max), "r_max", "must be a positive integer", self.r_max)
        check(self.r_min <= self.r <= self.r_max, "r", f"must lie in [r_min, r_max] = "
              f"[{self.r_min}, {self.r_max}]", self.r)
        check(self.budget is None or _pos_int(self.budget), "budget",
              "must be a positive integer (adapter parameters) or None", self.budget)
        _check_schedule(self, ("t_warmup", "t_final", "delta_t"))
        check(self.shrink in ("svd", "importance"), "shrink", "must be 'svd' or 'importance'", self.shrink)
        for name in ("lambda_a", "lambda_b", "lambda_orth"):
            check(getattr(self, name) >= 0, name, "must be >= 0", getattr(self, name))

    def resolve_schedule(self, total_steps: int | None) -> tuple[int, int, int]:
        """(t_warmup, t_final, delta_t), filling None fields from `total_steps`."""
        warmup, final, delta = _resolve(self, ("t_warmup", "t_final", "delta_t"), total_steps)
        check(warmup <= final, "t_final", f"must be >= t_warmup ({warmup})", final)
        return warmup, final, delta


@dataclass
class Rank1LoraConfig(LoraConfig):
    """Rank-1 Sum LoRA: `Delta W = sum_i g_i b_i a_i^T`, `r` components per layer at the start.

    gating: "scalar" (learnable g_i, init 1) or "input" (g_i(x) = sigmoid(u_i . mean(x) + c_i),
        cannot be merged).
    l1: strength of the L1 penalty on scalar gates, applied as a proximal soft-threshold after
        each optimizer step: |g| shrinks by lr * l1 (lr of the gates' parameter group), and
        gates that cross zero become exactly 0 (as in SoRA). Ignored for input gating.
    prune_by: how components are ranked when a budget must be met: "gate" (|g|) or
        "sensitivity" (EMA, coefficient `sensitivity_beta`, of |g dL/dg| + mean|a dL/da| +
        mean|b dL/db|). None: "gate" for scalar gates, "sensitivity" for input gates.
    budget: total rank-1 components to keep over all layers (None: keep every nonzero one).
        The kept count falls from the start to the budget along AdaLoRA's cubic schedule.
    prune_start / prune_end / prune_every: pruning steps (None: 10% / 70% / total/20).
        Components with gate exactly 0 are removed at every pruning step.
    """

    method: ClassVar[str] = "rank1"

    gating: str = "scalar"
    l1: float = 0.1
    prune_by: str | None = None
    budget: int | None = None
    prune_start: int | None = None
    prune_end: int | None = None
    prune_every: int | None = None
    sensitivity_beta: float = 0.85

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.gating in ("scalar", "input"), "gating",
              "Rank-1 Sum LoRA needs gates: 'scalar' or 'input'", self.gating)
        if self.prune_by is None:
            self.prune_by = "gate" if self.gating == "scalar" else "sensitivity"
        check(self.prune_by in ("gate", "sensitivity"), "prune_by", "must be 'gate' or 'sensitivity'",
              self.prune_by)
        check(not (self.prune_by == "gate" and self.gating == "input"), "prune_by",
              "'gate' needs scalar gates; input-conditional gates are pruned by 'sensitivity'",
              self.prune_by)
        _check_numbers(self, ("l1", "sensitivity_beta"))
        check(self.l1 >= 0, "l1", "must be >= 0", self.l1)
        check(self.budget is None or (is_int(self.budget) and self.budget >= 0), "budget",
              "must be an integer >= 0 (rank-1 components) or None", self.budget)
        check(0.0 <= self.sensitivity_beta < 1.0, "sensitivity_beta", "must be in [0, 1)",
              self.sensitivity_beta)
        _check_schedule(self, ("prune_start", "prune_end", "prune_every"))

    def resolve_schedule(self, total_steps: int | None) -> tuple[int, int, int]:
        """(prune_start, prune_end, prune_every), filling None fields from `total_steps`."""
        start, end, every = _resolve(self, ("prune_start", "prune_end", "prune_every"), total_steps)
        check(start <= end, "prune_end", f"must be >= prune_start ({start})", end)
        return start, end, every


def _pos_int(value: object) -> bool:
    return is_int(value) and value > 0


def _check_numbers(config: LoraConfig, names: tuple[str, ...]) -> None:
    """Type first, so a YAML string such as "1e-4" is a ConfigError naming the field, not a TypeError
    from the range comparisons that follow."""
    for name in names:
        check(is_number(getattr(config, name)), name, "must be a number", getattr(config, name))


def _check_schedule(config: LoraConfig, names: tuple[str, str, str]) -> None:
    start, end, every = names
    for name in (start, end):
        value = getattr(config, name)
        check(value is None or (is_int(value) and value >= 0), name,
              "must be an integer >= 0 (optimizer steps) or None", value)
    check(getattr(config, every) is None or _pos_int(getattr(config, every)), every,
          "must be a positive integer (optimizer steps) or None", getattr(config, every))
    if getattr(config, start) is not None and getattr(config, end) is not None:
        check(getattr(config, start) <= getattr(config, end), end,
              f"must be >= {start} ({getattr(config, start)})", getattr(config, end))


def _resolve(config: LoraConfig, names: tuple[str, str, str], total_steps: int | None) -> tuple[int, int, int]:
    values = [getattr(config, n) for n in names]
    if None in values:
        if total_steps is None or total_steps <= 0:
            missing = [n for n, v in zip(names, values) if v is None]
            raise ConfigError(
                f"{missing[0]}=None: set {', '.join(missing)} or give the controller total_steps "
                f"(got {total_steps!r}) to derive them"
            )
        defaults = (
            max(1, round(WARMUP_FRACTION * total_steps)),
            max(1, round(FINAL_FRACTION * total_steps)),
            max(1, total_steps // REALLOCATIONS),
        )
        values = [d if v is None else v for v, d in zip(values, defaults)]
    return values[0], values[1], values[2]
