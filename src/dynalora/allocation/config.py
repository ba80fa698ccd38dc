"""Configs for dynamic LoRA and Rank-1 Sum LoRA (the method: docs/method.md; the choices: DESIGN.md).

Both extend `LoraConfig`, so everything that builds plain LoRA (injection, saving, export)
builds them too; the extra fields drive the `AllocationController` during training.

Schedules are in optimizer steps (1-based: step t is the t-th `optimizer.step()`). Fields left
at None are resolved from the run's `total_steps` by `resolve_schedule`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from dynalora.adapters.config import ConfigError, LoraConfig, check, is_int, is_number

# Schedule fractions of total_steps used when a field is None. Warm-up 10%: B starts at 0, so
# sensitivities mean little in the first steps. Final 60%: the last reallocation leaves 40% of
# the run for grown components to train (with 70% and 12 reallocations, components grown at
# the end trained for too few steps to pay their way).
WARMUP_FRACTION = 0.10
FINAL_FRACTION = 0.60
PRUNE_EVERY_FRACTION = 1 / 20


@dataclass
class DynamicLoraConfig(LoraConfig):
    """Dynamic LoRA: per-layer ranks and allocation weights that move during training.

    `r` is r_base: every layer starts at rank r and, with `budget=None`, the budget is what
    uniform LoRA at `r` on the same targets costs (`sum_l r (d_l + k_l)` parameters). Use
    `target_modules="all-linear"` to let the budget move across q, k, v, o and the FFN.

    Importance (2a). `importance="gradient"` (default): g_l = ||dL/dB_l|| / (s w_l ||A_l||), the
        norm of the layer's full-weight gradient seen through the adapter's input subspace:
        what one unit step of the layer's update can still gain. Free (the gradients are
        there), independent of the layer's own weight w_l, not diluted when the layer grows,
        and it depends on the random init of A only through a projection (identical layers
        on identical data: within 3% of each other on a toy). "sensitivity": sum_i
        |a_i . dL/da_i| / w_l, the first-order loss change of removing each rank-1 component
        (also w-free and growth-proof, but it follows how far each adapter happens to have
        got: 45% apart on the same toy). "magnitude": the paper's mean |theta * grad| over A
        and B, which scales with w_l (so the weights fed their own importance and ran to the
        clamps) and falls by r_old / r_new when a layer grows (so ranks flapped).
        EMA coefficient `importance_beta`; `uncertainty=True` uses AdaLoRA's
        EMA(g) * EMA(|g - EMA(g)|).
    Weights (2b). target w = L * softmax(g / mean(g) / tau) (or "linear": L * g / sum g),
        clamped to [w_min, w_max] at mean 1, refreshed every `weight_every` steps; the weights
        move one EMA step (`weight_beta`) towards it every step. `weighting="off"` keeps
        w = 1. `weight_mode="lr"` (default) applies w as a per-layer learning-rate multiplier
        (each adapter's optimizer update is scaled by w_l): what w does with Adam in the paper
        anyway, but without rescaling the function already learned when w moves and without
        scaling the layer's gradients (so gradient clipping sees every layer alike).
        `weight_mode="forward"` is the paper-literal `s * w * B A x`; `"ranks"` computes the
        weights only to steer the ranks (the ablation "weights removed, reallocation kept"). Bounds [0.5, 2] and
        tau = 2 keep the learning rates within a factor 4 of each other; the paper's
        [0.25, 4] with tau = 1 drove weights to the clamps.
    Ranks (2c). r_l ~ r * (1 + beta * v~_l) * w_l ** gamma, projected onto the budget in
        parameters, ranks in [r_min, r_max] (r_max None: 4 r). beta = 0 by default: the input
        variance v~ is the same for layers that read the same input (q, k, v of a block) and
        spanned only 0.8-1.2 across blocks on MiniLM/MRPC, so it mostly added noise;
        beta = 1, gamma = 0 is the paper-literal rule. r_min = 1 keeps every layer trainable.
        `rank_rule="target"` replaces this rule (weights, beta and gamma then only steer
        learning rates): each layer's curvature from a secant between two gradient probes
        (the end of warm-up and each reallocation), its Newton target T = Delta W - G / kappa,
        and ranks that take the directions of T worth the most loss per parameter
        (allocation/target_rule.py). Near the best allocation on toys with known needs, at
        tight budgets too, where "weights" can end below uniform LoRA; not yet measured on
        real data, so not the default. `probe_steps`: the gradient probes (this rule's and
        grow_init="gradient"'s) average the gradients of that many steps up to the probe
        step: one step's minibatch noise adds a floor to every direction's value (on the toy
        at batch 8 and r = 2: 0.47 of the best gain with one step, 0.64 with four;
        docs/results/dynamic_v2/NOTES.md). `curvature`: "layer" (each layer's own secant) or
        "pooled" (the median over layers for all: on real gradients the per-layer secants
        spanned 3 orders of magnitude and a small, noisy one inflates G / kappa; pooled halved
        the rank reversals in a short CoLA run).
        `hysteresis`: a layer whose target differs from its rank by at most this much keeps
        its rank (the others share what is left of the budget): changes of one rank are
        noise, and each change costs an SVD reparametrisation or fresh components. None (the
        default): 1 for r = 4 to 15, r // 8 above, and 0 below r = 4, where one rank is a
        quarter or more of a layer's rank, not noise: at r = 2 a hysteresis of 1 kept every
        layer at 2 (0 resizes in a full CoLA run, weights 0.64-2.0).
    Schedule (2d). `reallocations` reallocations (default 4, at t_warmup + k * delta_t;
        delta_t None: (t_final - t_warmup) // reallocations, whole steps, so the last comes up
        to reallocations - 1 steps before t_final; 0: ranks never change, the ablation
        "weights without reallocation"). Weights move
        from t_warmup + 1 to t_final; after t_final ranks, weights and statistics are frozen
        (the frozen weights keep scaling the learning rates). Few, large reallocations settle;
        the old 12 made each layer's rank reverse direction 2.5 times on average.
    Resizing. Shrink "svd" keeps the best rank-r approximation of B A, "importance" the
        components with the largest ||b_i|| ||a_i||. `grow_state="seeded"` starts the Adam
        second moments of grown components at the mean of the existing components' (same
        tensor), so their first updates are no larger than the others'; "zero" is the old
        behaviour (first steps of 1-3 lr, since Adam's step counter is shared). `scaling`
        never changes on resize, so growing leaves the function unchanged. `grow_init="gradient"`
        points the A rows of grown components along the top right singular vectors of the
        layer's full-weight gradient outside A's row space, gathered over the step before the
        reallocation (their first B gradients are then as large as a rank-1 direction allows;
        "random", the default, keeps the fresh rows as drawn).
    Regulariser (2e). lambda_a ||A||^2 + lambda_b ||B||^2 + lambda_orth (||A A^T - I||^2 +
        ||B^T B - I||^2); off by default: AdamW's decoupled weight decay already acts as the
        L2 terms on A and B, and the SVD shrink re-orthogonalises components at each
        reallocation; nothing here measured them worth their cost.
    """

    method: ClassVar[str] = "dynamic"

    importance: str = "gradient"
    importance_beta: float = 0.85
    uncertainty: bool = False
    uncertainty_beta: float = 0.85
    weighting: str = "softmax"
    weight_mode: str = "lr"
    tau: float = 2.0
    weight_beta: float = 0.9
    weight_every: int = 5
    w_min: float = 0.5
    w_max: float = 2.0
    beta: float = 0.0
    stats_every: int = 10
    stats_max_tokens: int = 2048
    gamma: float = 1.0
    rank_rule: str = "weights"
    probe_steps: int = 4
    curvature: str = "layer"
    r_min: int = 1
    r_max: int | None = None
    budget: int | None = None
    budget_exact: bool = True
    hysteresis: int | None = None
    reallocations: int = 4
    t_warmup: int | None = None
    t_final: int | None = None
    delta_t: int | None = None
    shrink: str = "svd"
    grow_state: str = "seeded"
    grow_init: str = "random"
    lambda_a: float = 0.0
    lambda_b: float = 0.0
    lambda_orth: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.gating == "none", "gating", "dynamic LoRA uses ungated adapters ('none'); "
              "use Rank1LoraConfig for gates", self.gating)
        _check_numbers(self, ("importance_beta", "uncertainty_beta", "weight_beta", "tau", "w_min", "w_max",
                              "beta", "gamma", "lambda_a", "lambda_b", "lambda_orth"))
        _check_choice(self, "importance", ("gradient", "sensitivity", "magnitude"))
        for name in ("importance_beta", "uncertainty_beta", "weight_beta"):
            value = getattr(self, name)
            check(0.0 <= value < 1.0, name, "must be in [0, 1)", value)
        _check_choice(self, "weighting", ("softmax", "linear", "off"))
        _check_choice(self, "weight_mode", ("lr", "forward", "ranks"))
        _check_choice(self, "rank_rule", ("weights", "target"))
        _check_choice(self, "curvature", ("layer", "pooled"))
        check(self.tau > 0, "tau", "must be > 0", self.tau)
        check(0 < self.w_min <= 1.0, "w_min", "must be in (0, 1] (weights have mean 1)", self.w_min)
        check(self.w_max >= 1.0, "w_max", "must be >= 1 (weights have mean 1)", self.w_max)
        check(self.beta >= 0, "beta", "must be >= 0", self.beta)
        check(self.gamma >= 0, "gamma", "must be >= 0", self.gamma)
        for name in ("weight_every", "stats_every", "stats_max_tokens", "probe_steps"):
            check(_pos_int(getattr(self, name)), name, "must be a positive integer", getattr(self, name))
        check(is_int(self.reallocations) and self.reallocations >= 0, "reallocations",
              "must be an integer >= 0 (0: ranks never change)", self.reallocations)
        if self.hysteresis is None:
            self.hysteresis = auto_hysteresis(self.r)
        check(is_int(self.hysteresis) and self.hysteresis >= 0, "hysteresis", "must be an integer >= 0",
              self.hysteresis)
        check(is_int(self.r_min) and self.r_min >= 0, "r_min", "must be an integer >= 0", self.r_min)
        if self.r_max is None:
            self.r_max = 4 * self.r
        check(_pos_int(self.r_max), "r_max", "must be a positive integer", self.r_max)
        check(self.r_min <= self.r <= self.r_max, "r", f"must lie in [r_min, r_max] = "
              f"[{self.r_min}, {self.r_max}]", self.r)
        check(self.budget is None or _pos_int(self.budget), "budget",
              "must be a positive integer (adapter parameters) or None", self.budget)
        _check_schedule(self, ("t_warmup", "t_final", "delta_t"))
        _check_choice(self, "shrink", ("svd", "importance"))
        _check_choice(self, "grow_state", ("seeded", "zero"))
        _check_choice(self, "grow_init", ("random", "gradient"))
        for name in ("lambda_a", "lambda_b", "lambda_orth"):
            check(getattr(self, name) >= 0, name, "must be >= 0", getattr(self, name))

    def replace(self, **changes: Any) -> DynamicLoraConfig:
        """A copy with `changes`; a new `r` also renews hysteresis and r_max where they hold the
        values filled in for the old r (r_max = 4 r stays 4 r), unless `changes` sets them."""
        if changes.get("r", self.r) != self.r:
            for name, auto in (("hysteresis", auto_hysteresis(self.r)), ("r_max", 4 * self.r)):
                if name not in changes and getattr(self, name) == auto:
                    changes[name] = None
        return dataclasses.replace(self, **changes)

    def resolve_schedule(self, total_steps: int | None) -> tuple[int, int, int]:
        """(t_warmup, t_final, delta_t), filling None fields from `total_steps`."""
        warmup = self.t_warmup if self.t_warmup is not None else _fraction(total_steps, WARMUP_FRACTION, "t_warmup")
        final = self.t_final if self.t_final is not None else _fraction(total_steps, FINAL_FRACTION, "t_final")
        check(warmup <= final, "t_final", f"must be >= t_warmup ({warmup})", final)
        delta = self.delta_t if self.delta_t is not None else max(1, (final - warmup) // max(self.reallocations, 1))
        return warmup, final, delta


@dataclass
class Rank1LoraConfig(LoraConfig):
    """Rank-1 Sum LoRA: `Delta W = sum_i g_i b_i a_i^T`, `r` components per layer at the start.

    gating: "scalar" (learnable g_i, init 1) or "input" (g_i(x) = sigmoid(u_i . pooled(x) + c_i),
        pooled = mean over the real tokens (padding excluded), cannot be merged).
    l1: the L1 penalty on scalar gates, applied as a proximal soft-threshold after each
        optimizer step: |g| shrinks by l1 * lr0, with lr0 the gates' *initial* learning rate
        (the optimizer group's `initial_lr`), so warm-up and decay of the schedule do not
        change its effect; gates that cross zero become exactly 0 (as in SoRA). With Adam a
        gate moves at most about lr per step, so l1 = 0.5 lets a gate the loss keeps using
        hold its value while an unused one loses half a learning rate per step. (The old
        l1 * scheduled-lr with l1 = 0.1 summed to 0.017 over an MRPC run: nothing moved.)
        Ignored for input gating.
    prune_by: how components are ranked when the budget must be met: "sensitivity" (default:
        EMA, coefficient `sensitivity_beta`, of |g dL/dg| + mean|a dL/da| + mean|b dL/db|,
        AdaLoRA-style; a component that does not change the loss scores exactly 0) or
        "gate" (|g|, scalar gates only).
    budget: rank-1 components to keep over all layers. None: `keep_fraction` (default 0.5)
        of the initial ones, so pruning happens (with None meaning "keep all", the old
        default pruned nothing and trained plain LoRA with gates). The kept count falls from
        the start to the budget along AdaLoRA's cubic schedule.
    budget_in: "components" (default) or "parameters": `budget` and `keep_fraction` count the
        adapter parameters kept (a component of a layer costs its in + out), and components
        go lowest score per parameter first. Over layers of one shape the two agree; over
        `all-linear` targets, where an FFN component costs more than an attention one, only
        "parameters" ends at a given parameter budget (r = 2 k with keep_fraction 0.5 ends at
        uniform LoRA's at rank k, within one component).
    prune_start / prune_end / prune_every: pruning steps (None: 10% / 60% / total/20).
        Components with gate exactly 0 are removed at every pruning step.
    """

    method: ClassVar[str] = "rank1"

    gating: str = "scalar"
    l1: float = 0.5
    prune_by: str | None = None
    budget: int | None = None
    budget_in: str = "components"
    keep_fraction: float = 0.5
    prune_start: int | None = None
    prune_end: int | None = None
    prune_every: int | None = None
    sensitivity_beta: float = 0.85

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.gating in ("scalar", "input"), "gating",
              "Rank-1 Sum LoRA needs gates: 'scalar' or 'input'", self.gating)
        if self.prune_by is None:
            self.prune_by = "sensitivity"
        _check_choice(self, "prune_by", ("gate", "sensitivity"))
        check(not (self.prune_by == "gate" and self.gating == "input"), "prune_by",
              "'gate' needs scalar gates; input-conditional gates are pruned by 'sensitivity'",
              self.prune_by)
        _check_numbers(self, ("l1", "sensitivity_beta", "keep_fraction"))
        check(self.l1 >= 0, "l1", "must be >= 0", self.l1)
        _check_choice(self, "budget_in", ("components", "parameters"))
        check(self.budget is None or (is_int(self.budget) and self.budget >= 0), "budget",
              f"must be an integer >= 0 ({self.budget_in}) or None", self.budget)
        check(0.0 < self.keep_fraction <= 1.0, "keep_fraction", "must be in (0, 1]", self.keep_fraction)
        check(0.0 <= self.sensitivity_beta < 1.0, "sensitivity_beta", "must be in [0, 1)",
              self.sensitivity_beta)
        _check_schedule(self, ("prune_start", "prune_end", "prune_every"))

    def resolve_budget(self, initial: int) -> int:
        """What to keep at the end (in `budget_in` units): `budget`, or `keep_fraction` of `initial`."""
        if self.budget is not None:
            return self.budget
        return math.ceil(self.keep_fraction * initial)

    def resolve_schedule(self, total_steps: int | None) -> tuple[int, int, int]:
        """(prune_start, prune_end, prune_every), filling None fields from `total_steps`."""
        start = self.prune_start if self.prune_start is not None else _fraction(total_steps, WARMUP_FRACTION, "prune_start")
        end = self.prune_end if self.prune_end is not None else _fraction(total_steps, FINAL_FRACTION, "prune_end")
        check(start <= end, "prune_end", f"must be >= prune_start ({start})", end)
        every = self.prune_every if self.prune_every is not None else _fraction(total_steps, PRUNE_EVERY_FRACTION,
                                                                                 "prune_every", floor=True)
        return start, end, every


def auto_hysteresis(r: int) -> int:
    """The default hysteresis for rank r: none below 4 (one rank is a quarter or more of the
    layer's rank there), one rank from 4 to 15, r // 8 above."""
    return 0 if r < 4 else max(1, r // 8)


def _pos_int(value: object) -> bool:
    return is_int(value) and value > 0


def _check_choice(config: LoraConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    check(value in choices, name, "must be one of " + ", ".join(repr(c) for c in choices), value)


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


def _fraction(total_steps: int | None, fraction: float, name: str, floor: bool = False) -> int:
    """max(1, fraction * total_steps): a schedule field left at None."""
    if total_steps is None or total_steps <= 0:
        raise ConfigError(f"{name}=None: set it or give the controller total_steps "
                          f"(got {total_steps!r}) to derive it")
    value = total_steps * fraction
    return max(1, int(value) if floor else round(value))
