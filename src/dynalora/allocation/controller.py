"""`AllocationController`: runs dynamic LoRA / Rank-1 Sum LoRA beside any training loop.

    model = get_lora_model(base, DynamicLoraConfig(r=8, modules_to_save=["classifier"]))
    optimizer = torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)
    controller = AllocationController(model, optimizer, total_steps=1000)
    for batch in batches:
        loss = model(**batch).loss + controller.loss_terms()
        loss.backward(); optimizer.step()
        controller.after_optimizer_step()      # grads still present: before zero_grad()
        scheduler.step(); optimizer.zero_grad()

With gradient accumulation call `after_optimizer_step` once per optimizer step (not per
micro-batch): it reads the accumulated gradients. The controller swaps resized parameters
inside the attached optimizer; any other object holding the adapter parameters (a second
optimizer, DDP's buckets) is not updated, so resize only in single-process training or
rebuild those objects after a reallocation.

Resuming: `controller.state_dict()` is plain JSON-able data. To resume, build the model
and optimizer as at the start, create the controller, call `controller.load_state_dict(state)`
(this resizes the adapters, and the optimizer's parameters, to the saved ranks), then load
the model's state dict, then the optimizer's. Growing draws new A rows from torch's global
RNG, so restore the RNG state too for a run identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

from dynalora.adapters.config import LoraConfig, check
from dynalora.adapters.layer import LoraAdapter
from dynalora.adapters.model import DynaLoraModel
from dynalora.allocation.config import DynamicLoraConfig, Rank1LoraConfig
from dynalora.allocation.gates import prune_plan, soft_threshold_, target_components
from dynalora.allocation.plot import plot_history
from dynalora.allocation.ranks import (
    adapter_parameters,
    allocation_shares,
    clamp_to_mean_one,
    project_to_budget,
    rank_scores,
    uniform_budget,
)
from dynalora.allocation.resize import (
    ResizeResult,
    resize_adapter,
    select_components,
    unwrap_optimizer,
)
from dynalora.allocation.scores import component_sensitivity, layer_importance, regulariser
from dynalora.allocation.stats import InputStatistics

STATE_VERSION = 1


class AllocationController:
    """Importance, weights, input statistics, reallocation (dynamic) or gates and pruning (rank1)."""

    def __init__(self, model: DynaLoraModel, optimizer: torch.optim.Optimizer | None = None,
                 total_steps: int | None = None, adapter_name: str | None = None) -> None:
        self.model = model
        self.adapter_name = adapter_name or model.active_adapter
        if self.adapter_name not in model.configs:
            raise KeyError(f"unknown adapter {self.adapter_name!r}; loaded: {sorted(model.configs)}")
        self.config: LoraConfig = model.configs[self.adapter_name]
        if isinstance(self.config, DynamicLoraConfig):
            self.method = "dynamic"
        elif isinstance(self.config, Rank1LoraConfig):
            self.method = "rank1"
        else:
            raise TypeError(
                f"adapter {self.adapter_name!r} is {type(self.config).__name__} (method "
                f"{self.config.method!r}); the controller drives DynamicLoraConfig or Rank1LoraConfig adapters"
            )
        self.adapters: dict[str, LoraAdapter] = model.adapter_modules(self.adapter_name)
        self.names = list(self.adapters)
        self.costs = [a.in_features + a.out_features for a in self.adapters.values()]
        self.optimizer: torch.optim.Optimizer | None = None
        self.total_steps = total_steps
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._schedule: tuple[int, int, int] | None = None
        self._index_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._lr_cache: dict[int, dict] | None = None
        self._warned_no_optimizer = False
        device = next(iter(self.adapters.values())).lora_A.device
        if self.method == "dynamic":
            self._init_dynamic(device)
        else:
            self.sensitivity = {n: torch.zeros(a.r, device=device) for n, a in self.adapters.items()}
            self.initial_components = sum(a.r for a in self.adapters.values())
        if total_steps is not None:
            self.set_total_steps(total_steps)
        if optimizer is not None:
            self.attach_optimizer(optimizer)

    def _init_dynamic(self, device: torch.device) -> None:
        cfg: DynamicLoraConfig = self.config  # type: ignore[assignment]
        self.budget = cfg.budget if cfg.budget is not None else uniform_budget(self.costs, cfg.r)
        floor = cfg.r_min * sum(self.costs)
        check(self.budget >= floor, "budget", f"is below what r_min={cfg.r_min} in every layer costs ({floor})",
              self.budget)
        n = len(self.names)
        self.importance = torch.zeros(n, device=device)
        self.uncertainty = torch.zeros(n, device=device)
        self.weights = torch.stack([a.weight.detach().to(torch.float64) for a in self.adapters.values()]).to(device)
        self.weight_target: torch.Tensor | None = None  # what the weights move towards (2b)
        layers = self.model.lora_layers()
        self.stats = InputStatistics(self.model.base_model, {name: layers[name] for name in self.names},
                                     cfg.stats_max_tokens)
        self._set_hooks_for(self.step + 1)

    # -- wiring -----------------------------------------------------------------------------
    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Use `optimizer` from now on (resizes swap parameters inside it)."""
        inner = unwrap_optimizer(optimizer)
        held = {id(p) for group in inner.param_groups for p in group["params"]}
        missing = [n for n, a in self.adapters.items() if a.r and id(a.lora_A) not in held]
        if missing:
            raise ValueError(
                f"the optimizer does not hold the adapter parameters of {len(missing)} layer(s), e.g. "
                f"{missing[0]}; build it over model.parameters() that require grad"
            )
        self.optimizer = optimizer
        self._lr_cache = None

    def set_total_steps(self, total_steps: int) -> None:
        """Resolve schedule fields left at None from the run length (done once)."""
        self.total_steps = total_steps
        self._schedule = self.config.resolve_schedule(total_steps)

    @property
    def schedule(self) -> tuple[int, int, int]:
        """(t_warmup, t_final, delta_t) for dynamic LoRA, (prune_start, prune_end, prune_every) for rank1."""
        if self._schedule is None:
            self._schedule = self.config.resolve_schedule(self.total_steps)
        return self._schedule

    def remove_hooks(self) -> None:
        if self.method == "dynamic":
            self.stats.detach()

    def ranks(self) -> dict[str, int]:
        """The current per-layer ranks: the adapter's rank_pattern."""
        return {n: a.r for n, a in self.adapters.items()}

    # -- the step ---------------------------------------------------------------------------
    def loss_terms(self) -> torch.Tensor:
        """The regulariser of docs/method.md, "Regularised objective" (0-dim; exactly 0 when the lambdas are 0)."""
        cfg = self.config
        return regulariser(list(self.adapters.values()), getattr(cfg, "lambda_a", 0.0),
                           getattr(cfg, "lambda_b", 0.0), getattr(cfg, "lambda_orth", 0.0))

    def after_optimizer_step(self, step: int | None = None) -> dict[str, Any] | None:
        """Once per optimizer step, after `optimizer.step()` and before `zero_grad()`.

        Returns the history record when this step reallocated ranks / pruned components.
        """
        self.step = self.step + 1 if step is None else int(step)
        if self.method == "dynamic":
            return self._dynamic_step(self.step)
        return self._rank1_step(self.step)

    def _dynamic_step(self, t: int) -> dict[str, Any] | None:
        cfg: DynamicLoraConfig = self.config  # type: ignore[assignment]
        warmup, final, delta = self.schedule
        self.stats.detach()
        record = None
        if t <= final:
            self._track_importance(cfg)
            if t > warmup:
                self._move_weights(cfg, refresh=(t - warmup - 1) % cfg.weight_every == 0)
            if t > warmup and (t - warmup) % delta == 0:
                record = self._reallocate(cfg)
        self._set_hooks_for(t + 1)
        return record

    def _set_hooks_for(self, t: int) -> None:
        """Attach the statistics hooks when the forward of step `t` is to be sampled."""
        cfg: DynamicLoraConfig = self.config  # type: ignore[assignment]
        final = self._schedule[1] if self._schedule is not None else None
        if (t - 1) % cfg.stats_every == 0 and (final is None or t <= final):
            self.stats.attach()

    def _index(self, present: list[int], device: torch.device) -> torch.Tensor:
        key = tuple(present)
        if key not in self._index_cache:
            self._index_cache[key] = torch.tensor(present, dtype=torch.long, device=device)
        return self._index_cache[key]

    def _track_importance(self, cfg: DynamicLoraConfig) -> None:
        got = layer_importance(list(self.adapters.values()))
        if got is None:
            return
        values, present = got
        # Layers at rank 0 have no gradients: they keep their last estimate.
        idx = None if len(present) == len(self.names) else self._index(present, values.device)
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
        """Per-layer importance used for the weights: EMA(I), or EMA(I) * EMA(|I - EMA(I)|)."""
        cfg: DynamicLoraConfig = self.config  # type: ignore[assignment]
        return self.importance * self.uncertainty if cfg.uncertainty else self.importance

    def _move_weights(self, cfg: DynamicLoraConfig, refresh: bool) -> None:
        if refresh or self.weight_target is None:
            n = len(self.names)
            shares = allocation_shares(self.score(), cfg.weighting, cfg.tau)
            self.weight_target = clamp_to_mean_one(n * shares, cfg.w_min, cfg.w_max)
        # A convex combination of mean-1 vectors within the bounds stays mean 1 and in bounds.
        self.weights = self.weights.lerp(self.weight_target, 1 - cfg.weight_beta)
        self._write_weights()

    def _write_weights(self) -> None:
        buffers = [a.weight for a in self.adapters.values()]
        torch._foreach_copy_(buffers, list(self.weights.to(buffers[0].dtype).unbind(0)))

    def _reallocate(self, cfg: DynamicLoraConfig) -> dict[str, Any]:
        variance = self.stats.variances(self.names)
        weights = self.weights.detach().cpu()
        scores = rank_scores(cfg.r, variance, weights, cfg.beta, cfg.gamma)
        ranks = project_to_budget(scores, self.costs, self.budget, cfg.r_min, cfg.r_max, cfg.budget_exact)
        results: dict[str, ResizeResult] = {}
        for (name, adapter), r in zip(self.adapters.items(), ranks):
            if r != adapter.r:
                results[name] = resize_adapter(adapter, r, cfg.shrink, self._optimizer_for_resize())
        self._after_resize()
        record = {
            "step": self.step,
            "ranks": dict(zip(self.names, ranks)),
            "weights": weights.tolist(),
            "importance": self.score().detach().cpu().tolist(),
            "variance": variance.tolist(),
            "parameters": adapter_parameters(ranks, self.costs),
            "budget": self.budget,
            "changed": {n: [res.old_r, res.new_r, res.dropped] for n, res in results.items()},
        }
        self.history.append(record)
        return record

    # -- Rank-1 Sum LoRA ----------------------------------------------------------------------
    def _rank1_step(self, t: int) -> dict[str, Any] | None:
        cfg: Rank1LoraConfig = self.config  # type: ignore[assignment]
        start, end, every = self.schedule
        if cfg.gating == "scalar" and cfg.l1 > 0:
            gates = [a.gate for a in self.adapters.values() if a.gate is not None and a.r]
            soft_threshold_(gates, [self._lr_of(g) * cfg.l1 for g in gates])
        if cfg.prune_by == "sensitivity" and t <= end:
            b = cfg.sensitivity_beta
            for name, adapter in self.adapters.items():
                score = component_sensitivity(adapter)
                if score is not None:  # non-finite readings (skipped fp16 steps) change nothing
                    ema = self.sensitivity[name]
                    self.sensitivity[name] = ema * b + torch.where(torch.isfinite(score), score, ema) * (1 - b)
        if start <= t <= end and (t - start) % every == 0:
            return self._prune(cfg, t, start, end)
        return None

    def _lr_of(self, param: torch.Tensor) -> float:
        inner = unwrap_optimizer(self.optimizer)
        if inner is None:
            raise RuntimeError(
                "the proximal L1 step on the gates is scaled by the learning rate: give the "
                "controller the optimizer (AllocationController(model, optimizer) or attach_optimizer)"
            )
        if self._lr_cache is None:
            self._lr_cache = {id(p): group for group in inner.param_groups for p in group["params"]}
        group = self._lr_cache.get(id(param))
        if group is None:
            raise ValueError("a gate parameter is not in the optimizer; build it over the trainable parameters")
        return float(group["lr"])

    def _prune(self, cfg: Rank1LoraConfig, t: int, start: int, end: int) -> dict[str, Any]:
        target = target_components(t, start, end, self.initial_components, cfg.budget)
        if cfg.prune_by == "gate":
            scores = {n: a.gate.detach().abs() for n, a in self.adapters.items()}
        else:
            scores = self.sensitivity
        plan = prune_plan(self.adapters, scores, target)
        removed = {}
        for name, keep in plan.items():
            adapter = self.adapters[name]
            if keep.numel() != adapter.r:
                removed[name] = adapter.r - keep.numel()
                select_components(adapter, keep, self._optimizer_for_resize())
                self.sensitivity[name] = self.sensitivity[name][keep.to(self.sensitivity[name].device)]
        self._after_resize()
        ranks = self.ranks()
        record = {
            "step": t,
            "ranks": ranks,
            "components": sum(ranks.values()),
            "target": target,
            "removed": removed,
            "parameters": adapter_parameters(list(ranks.values()), self.costs),
        }
        self.history.append(record)
        return record

    # -- shared -------------------------------------------------------------------------------
    def _optimizer_for_resize(self) -> torch.optim.Optimizer | None:
        if self.optimizer is None and not self._warned_no_optimizer:
            warnings.warn(
                "resizing adapters with no optimizer attached: an optimizer created earlier still "
                "holds the old parameters (call attach_optimizer)", stacklevel=3)
            self._warned_no_optimizer = True
        return self.optimizer

    def _after_resize(self) -> None:
        self._index_cache.clear()
        self._lr_cache = None

    # -- saving and resuming ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able): step, ranks, EMAs, weights, input statistics, history."""
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "method": self.method,
            "adapter_name": self.adapter_name,
            "step": self.step,
            "total_steps": self.total_steps,
            "ranks": self.ranks(),
            "history": copy.deepcopy(self.history),
        }
        if self.method == "dynamic":
            state.update(
                importance=self.importance.detach().cpu().tolist(),
                uncertainty=self.uncertainty.detach().cpu().tolist(),
                weights=self.weights.detach().cpu().tolist(),
                weight_target=None if self.weight_target is None else self.weight_target.cpu().tolist(),
                stats=self.stats.state_dict(),
                budget=self.budget,
            )
        else:
            state.update(
                sensitivity={n: s.detach().cpu().tolist() for n, s in self.sensitivity.items()},
                initial_components=self.initial_components,
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore, resizing every adapter (and the optimizer's parameters) to the saved ranks.

        Call it before loading the model's and the optimizer's state dicts: those hold tensors
        of the saved shapes. The resized adapters hold placeholder values until then.
        """
        if state.get("method") != self.method:
            raise ValueError(f"controller state is for method {state.get('method')!r}, this controller runs {self.method!r}")
        if state.get("version", 0) > STATE_VERSION:
            raise ValueError(f"controller state version {state['version']} is newer than this dynalora reads")
        ranks = state["ranks"]
        if set(ranks) != set(self.names):
            odd = sorted(set(ranks) ^ set(self.names))
            raise ValueError(f"controller state is for other layers than this model adapts, e.g. {odd[:3]}")
        for name, adapter in self.adapters.items():
            if adapter.r != ranks[name]:
                resize_adapter(adapter, int(ranks[name]), "importance", self.optimizer)
        self._after_resize()
        self.step = int(state["step"])
        self.total_steps = state.get("total_steps")
        self._schedule = None
        if self.total_steps is not None:
            self.set_total_steps(self.total_steps)
        self.history = copy.deepcopy(state["history"])
        device = next(iter(self.adapters.values())).lora_A.device
        if self.method == "dynamic":
            self.importance = torch.tensor(state["importance"], dtype=torch.float32, device=device)
            self.uncertainty = torch.tensor(state["uncertainty"], dtype=torch.float32, device=device)
            self.weights = torch.tensor(state["weights"], dtype=torch.float64, device=device)
            target = state.get("weight_target")  # absent in older states: recomputed at the next step
            self.weight_target = None if target is None else torch.tensor(target, dtype=torch.float64, device=device)
            self._write_weights()
            self.budget = int(state["budget"])
            self.stats.detach()
            self.stats.load_state_dict(state["stats"])
            self._set_hooks_for(self.step + 1)
        else:
            self.sensitivity = {n: torch.tensor(v, dtype=torch.float32, device=device)
                                for n, v in state["sensitivity"].items()}
            self.initial_components = int(state["initial_components"])

    def plot(self, path: str) -> None:
        """PNG: rank per layer over training, plus importance and weight trajectories."""
        title = f"{self.method} LoRA: rank per layer ({self.adapter_name})"
        plot_history(self.history, self.names, path, title)
