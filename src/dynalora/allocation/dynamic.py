"""Dynamic LoRA's controller: sensitivity, allocation weights, input statistics, reallocation.

Per `after_optimizer_step(t)` (schedule from `DynamicLoraConfig.resolve_schedule`):
* t <= t_final: read each layer's importance (default: the gradient norm through the
  adapter, see scores.py) from the gradients into an EMA (no host sync, non-finite readings
  ignored);
* t_warmup < t <= t_final: move the weights one EMA step towards their target (refreshed
  every `weight_every` steps); they act as learning-rate multipliers (`weight_mode="lr"`,
  through `LearningRateScaler`) or in the forward (`"forward"`, the paper's);
* t = t_warmup + k delta_t <= t_final: reallocate: rank scores from weights (and input
  variance when beta > 0), or with rank_rule="target" from what each layer's directions are
  worth (target_rule.py; its first gradient probe is at t_warmup), projected onto the
  parameter budget with hysteresis, adapters grown or shrunk with the optimizer kept
  consistent, a record appended to `history`.
After t_final nothing moves.
"""

from __future__ import annotations

from typing import Any

import torch

from dynalora.adapters.config import check
from dynalora.allocation.config import DynamicLoraConfig
from dynalora.allocation.controller_base import AllocationController, no_reduce
from dynalora.allocation.grow_init import (
    GradientProbe,
    as_on_first_process,
    informed_rows,
    mean_over_processes,
)
from dynalora.allocation.lr_scale import LearningRateScaler
from dynalora.allocation.ranks import (
    adapter_parameters,
    allocation_shares,
    clamp_to_mean_one,
    rank_scores,
    settle_ranks,
    uniform_budget,
)
from dynalora.allocation.resize import ResizeResult, resize_adapter
from dynalora.allocation.scores import layer_gradient, layer_importance, layer_sensitivity
from dynalora.allocation.stats import InputStatistics
from dynalora.allocation.target_rule import Probe, TargetRule, decode, encode, sketched_factors

GROWTH_SEED = 0x5EED  # fresh components at step t are drawn from a generator seeded GROWTH_SEED + t


class DynamicLoraController(AllocationController):
    """Dynamic LoRA (DynamicLoraConfig adapters); build it through `AllocationController(...)`."""

    config_class = DynamicLoraConfig
    method = "dynamic"
    config: DynamicLoraConfig

    def _init_method(self) -> None:
        cfg = self.config
        self.budget = cfg.budget if cfg.budget is not None else uniform_budget(self.costs, cfg.r)
        floor = cfg.r_min * sum(self.costs)
        check(self.budget >= floor, "budget", f"is below what r_min={cfg.r_min} in every layer costs ({floor})",
              self.budget)
        n = len(self.names)
        self.importance = torch.zeros(n, device=self.device)
        self.uncertainty = torch.zeros(n, device=self.device)
        self.weights = torch.ones(n, dtype=torch.float64, device=self.device)
        self.weight_target: torch.Tensor | None = None  # what the weights move towards (2b)
        self.initial_ranks = self.ranks()
        narrowest = min((min(a.in_features, a.out_features) for a in self.adapters.values()), default=cfg.r_min)
        check(cfg.r_min <= narrowest, "r_min", f"is above the rank the narrowest adapted layer can hold ({narrowest})",
              cfg.r_min)
        self._index_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._lr_scaler = LearningRateScaler(list(self.adapters.values()), lambda: self.weights,
                                             self._scales_learning_rates)
        self.stats: InputStatistics | None = None
        self.probe: GradientProbe | None = None
        layers = self.model.lora_layers()
        if cfg.beta > 0:  # the statistic only matters to the rank rule when beta > 0
            self.stats = InputStatistics(self.model.base_model, {name: layers[name] for name in self.names},
                                         cfg.stats_max_tokens)
        if (cfg.grow_init == "gradient" or cfg.rank_rule == "target") and cfg.reallocations:
            self.probe = GradientProbe({name: layers[name] for name in self.names})
        self.target = TargetRule(self.names, cfg.curvature == "pooled") if cfg.rank_rule == "target" else None
        # the probe window so far: the sum of its steps' gradients, each already averaged over the
        # processes (so every process holds the same, and a checkpoint by one process is everyone's)
        self.window: dict[str, torch.Tensor] = {}
        self.window_steps = 0
        self._set_hooks_for(self.step + 1)

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        super().attach_optimizer(optimizer)
        self._lr_scaler.attach(optimizer)

    def set_total_steps(self, total_steps: int) -> None:
        super().set_total_steps(total_steps)
        self._set_hooks_for(self.step + 1)  # the schedule is known now: step 1 may be a reallocation

    def remove_hooks(self) -> None:
        for hooks in (self.stats, self.probe):
            if hooks is not None:
                hooks.detach()
        self._lr_scaler.detach()

    def _scales_learning_rates(self) -> bool:
        cfg = self.config
        return cfg.weight_mode == "lr" and cfg.weighting != "off" and self.weight_target is not None

    # -- the step ---------------------------------------------------------------------------
    def _step(self, t: int) -> dict[str, Any] | None:
        cfg = self.config
        warmup, final, _ = self.schedule
        probed = self.probe is not None and self.probe.attached  # the same in every process
        for hooks in (self.stats, self.probe):
            if hooks is not None:
                hooks.detach()
        record = None
        if probed:
            step = self._mean_grads(self.probe.take())
            # an overflowed step (fp16, skipped by the loss scaler) would poison the window: left out,
            # decided on the averaged gradients, so alike in every process
            if all(bool(torch.isfinite(g).all()) for g in step.values()):
                self.window = {k: self.window[k] + g for k, g in step.items()} if self.window else step
                self.window_steps += 1
        if t <= final:
            self._track_importance()
            if t > warmup and cfg.weighting != "off":
                self._move_weights(refresh=(t - warmup - 1) % cfg.weight_every == 0)
            if self._reallocates_at(t):
                record = self._reallocate()
            elif self._anchors_at(t) and self.window_steps:
                self.target.anchor = self._probed(self._take_window())
        self._set_hooks_for(t + 1)
        return record

    def _set_hooks_for(self, t: int) -> None:
        """Attach the statistics hooks when the forward of step `t` is to be sampled, and the
        gradient probe when step `t` ends in a reallocation or is the target rule's anchor."""
        final = self._schedule[1] if self._schedule is not None else None
        if self.stats is not None and (t - 1) % self.config.stats_every == 0 and (final is None or t <= final):
            self.stats.attach()
        end = self._probe_ends_at(t) if self.probe is not None and self._schedule is not None else None
        if end is not None:
            # the same sketches over a window; the target rule also compares two probes' sketches
            self.probe.attach(seed=GROWTH_SEED if self.target is not None else GROWTH_SEED + end)

    def _probe_ends_at(self, t: int) -> int | None:
        """The probe step (a reallocation, or the target rule's anchor) whose gradient step `t`
        adds to, or None: a probe averages the `probe_steps` steps that end at it (minibatch
        noise in one step's gradient would add a floor to every direction's value)."""
        return next((p for p in range(t, t + self.config.probe_steps) if self._reallocates_at(p) or self._anchors_at(p)),
                    None)

    def _reallocates_at(self, t: int) -> bool:
        """Whether step `t` ends in a reallocation (the schedule must be resolved)."""
        warmup, final, delta = self.schedule
        return bool(self.config.reallocations) and warmup < t <= final and (t - warmup) % delta == 0

    def _anchors_at(self, t: int) -> bool:
        """Whether step `t` is the target rule's first probe (the end of warm-up), which the
        first reallocation's secant starts from."""
        return (self.probe is not None and self.target is not None and t == max(self.schedule[0], 1)
                and not self._reallocates_at(t))

    def _mean_grads(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The probe's gradients as the mean over processes (a caller's reduce, else an
        all-reduce when torch.distributed runs), so every process decides alike; a layer this
        process saw no training forward of adds zeros."""
        mean = mean_over_processes if self.reduce is no_reduce else self.reduce
        out = {}
        for name, adapter in self.adapters.items():
            mine = grads.get(name)
            if mine is None:
                rows = self.probe.sketches[name].shape[1] if name in self.probe.sketches else adapter.out_features
                mine = torch.zeros(rows, adapter.in_features, device=self.device)
            out[name] = mean(mine.to(self.device))
        return out

    def _take_window(self) -> dict[str, torch.Tensor]:
        """The mean gradient over the probe window that ends at this step, and a fresh window."""
        grads = {k: g / max(self.window_steps, 1) for k, g in self.window.items()}
        self.window, self.window_steps = {}, 0
        return grads

    def _probed(self, grads: dict[str, torch.Tensor]) -> dict[str, Probe]:
        """(G, Delta W factors) per layer, sketched alike (the probe's sketch for wide layers)."""
        return {name: (grads[name].float(), sketched_factors(adapter, self.probe.sketches.get(name)))
                for name, adapter in self.adapters.items()}

    def _index(self, present: list[int]) -> torch.Tensor:
        key = tuple(present)
        if key not in self._index_cache:
            self._index_cache[key] = torch.tensor(present, dtype=torch.long, device=self.device)
        return self._index_cache[key]

    def _track_importance(self) -> None:
        cfg = self.config
        adapters = list(self.adapters.values())
        reader = {"gradient": layer_gradient, "sensitivity": layer_sensitivity, "magnitude": layer_importance}
        got = reader[cfg.importance](adapters)
        if got is None:
            return
        values, present = got
        # Layers at rank 0 have no gradients: they keep their last estimate.
        idx = None if len(present) == len(self.names) else self._index(present)
        old = self.importance if idx is None else self.importance[idx]
        # Overflowed gradients (an fp16 step the loss scaler skipped) would poison the EMA for
        # good: a non-finite reading counts as "no change", decided on the device (no sync).
        values = torch.where(torch.isfinite(values), values, old)
        ema = old.lerp(values, 1 - cfg.importance_beta)  # b * old + (1 - b) * values, one kernel
        if cfg.uncertainty:
            old_u = self.uncertainty if idx is None else self.uncertainty[idx]
            unc = old_u.lerp((values - ema).abs(), 1 - cfg.uncertainty_beta)
        if idx is None:
            self.importance = ema
            if cfg.uncertainty:
                self.uncertainty = unc
            return
        self.importance[idx] = ema
        if cfg.uncertainty:
            self.uncertainty[idx] = unc

    def score(self) -> torch.Tensor:
        """Per-layer importance used for the weights: EMA(s), or EMA(s) * EMA(|s - EMA(s)|)."""
        return self.importance * self.uncertainty if self.config.uncertainty else self.importance

    def _move_weights(self, refresh: bool) -> None:
        cfg = self.config
        if refresh or self.weight_target is None:
            shares = allocation_shares(self.score(), cfg.weighting, cfg.tau)
            self.weight_target = clamp_to_mean_one(len(self.names) * shares, cfg.w_min, cfg.w_max)
        # A convex combination of mean-1 vectors within the bounds stays mean 1 and in bounds.
        self.weights = self.weights.lerp(self.weight_target, 1 - cfg.weight_beta)
        if cfg.weight_mode == "forward":
            self._write_weights()

    def _write_weights(self) -> None:
        buffers = [a.weight for a in self.adapters.values()]
        torch._foreach_copy_(buffers, list(self.weights.to(buffers[0].dtype).unbind(0)))

    def _reallocate(self) -> dict[str, Any]:
        cfg = self.config
        if self.stats is not None:
            variance = self.reduce(self.stats.variances(self.names).to(self.device)).cpu()
        else:
            variance = torch.zeros(len(self.names), dtype=torch.float64)
        weights = self.weights.detach().cpu()
        current = [a.r for a in self.adapters.values()]
        caps = [min(cfg.r_max, a.in_features, a.out_features) for a in self.adapters.values()]
        grads = self._take_window() if self.probe is not None else {}
        if self.target is not None:  # without a usable probe window: nothing to decide from
            scores = [float(r) for r in (self.target.ranks(self._probed(grads), current, self.costs, self.budget,
                                                           cfg.r_min, caps) if grads else current)]
        else:
            scores = rank_scores(cfg.r, variance, weights, cfg.beta, cfg.gamma)
        ranks = settle_ranks(scores, self.costs, self.budget, current, cfg.hysteresis, cfg.r_min, caps,
                             cfg.budget_exact)
        if self.target is not None:  # its ranks come from per-process SVDs: a near-tie must not split them
            ranks = as_on_first_process(ranks)
        results: dict[str, ResizeResult] = {}
        # Fresh components come from a generator seeded by the step: the same in every process
        # and in a resumed run, and the training RNG stream is left alone.
        generator = torch.Generator().manual_seed(GROWTH_SEED + self.step)
        for (name, adapter), r in zip(self.adapters.items(), ranks):
            direct = None
            if r > adapter.r and cfg.grow_init == "gradient" and name in grads:  # every process turns its rows by the same mean gradient
                grad, A = grads[name], adapter.lora_A
                direct = lambda rows, grad=grad, A=A: informed_rows(grad, A, rows)  # noqa: E731
            if r != adapter.r:
                results[name] = resize_adapter(adapter, r, cfg.shrink, self._optimizer_for_resize(),
                                               seed=cfg.grow_state == "seeded", generator=generator, direct=direct)
        self._after_resize()
        score = self.score().detach().cpu().tolist()
        record = {
            "step": self.step,
            "ranks": dict(zip(self.names, ranks)),
            "weights": dict(zip(self.names, weights.tolist())),
            "importance": dict(zip(self.names, score)),
            "variance": dict(zip(self.names, variance.tolist())),
            "parameters": adapter_parameters(ranks, self.costs),
            "budget": self.budget,
            "changed": {n: [res.old_r, res.new_r, res.dropped] for n, res in results.items()},
        }
        if self.target is not None and self.target.seen is not None:
            record["target"], self.target.seen = self.target.seen, None
        self.history.append(record)
        return record

    def _after_resize(self) -> None:
        super()._after_resize()
        self._index_cache.clear()

    # -- state and reports ------------------------------------------------------------------
    def _method_state(self) -> dict[str, Any]:
        return {
            "importance": self.importance.detach().cpu().tolist(),
            "uncertainty": self.uncertainty.detach().cpu().tolist(),
            "weights": self.weights.detach().cpu().tolist(),
            "weight_target": None if self.weight_target is None else self.weight_target.cpu().tolist(),
            "stats": None if self.stats is None else self.stats.state_dict(),
            "budget": self.budget,
            "initial_ranks": self.initial_ranks,
            "anchor": None if self.target is None else self.target.state_dict(),
            # gradients summed so far in a probe's window (a checkpoint inside one)
            "probe": None if not self.window_steps else {
                "steps": self.window_steps, "grads": {k: encode(g) for k, g in self.window.items()}},
        }

    def _load_method_state(self, state: dict[str, Any]) -> None:
        device = self.device
        self.importance = torch.tensor(state["importance"], dtype=torch.float32, device=device)
        self.uncertainty = torch.tensor(state["uncertainty"], dtype=torch.float32, device=device)
        self.weights = torch.tensor(state["weights"], dtype=torch.float64, device=device)
        target = state.get("weight_target")  # absent in older states: recomputed at the next step
        self.weight_target = None if target is None else torch.tensor(target, dtype=torch.float64, device=device)
        if self.config.weight_mode == "forward":
            self._write_weights()
        self.budget = int(state["budget"])
        self.initial_ranks = dict(state.get("initial_ranks") or self.initial_ranks)
        if self.target is not None:
            self.target.load_state_dict(state.get("anchor"), device)
        if self.stats is not None and state.get("stats") is not None:
            self.stats.detach()
            self.stats.load_state_dict(state["stats"])
        if self.probe is not None:  # the probe's window goes on where the saved run stood in it
            self.probe.detach()
            self.probe.take()
        partial = state.get("probe") or {}
        self.window = {k: decode(v, device) for k, v in (partial.get("grads") or {}).items()}
        self.window_steps = int(partial.get("steps", 0))
        self._set_hooks_for(self.step + 1)

    def summary(self) -> dict[str, Any]:
        """Reallocations, layer resizes and rank reversals, final ranks by module type, the weights' range."""
        w = self.weights.detach().cpu()
        return {
            "method": self.method,
            "reallocations": len(self.history),
            "resizes": self.resizes(),
            "reversals": self.reversals(),
            "parameters": adapter_parameters(list(self.ranks().values()), self.costs),
            "budget": self.budget,
            "ranks_by_type": self.ranks_by_type(),
            "weight_mode": self.config.weight_mode if self.config.weighting != "off" else "off",
            "weight_min": round(float(w.min()), 4),
            "weight_max": round(float(w.max()), 4),
        }
