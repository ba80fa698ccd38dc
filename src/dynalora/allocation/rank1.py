"""Rank-1 Sum LoRA's controller: proximal L1 on the gates, component sensitivity, pruning.

Per `after_optimizer_step(t)` (schedule from `Rank1LoraConfig.resolve_schedule`):
* scalar gates go through the soft threshold l1 * lr0 (lr0: the gates' initial learning rate,
  so the schedule's warm-up and decay do not change the penalty's effect): exact zeros;
* t <= prune_end: the sensitivity EMA of every component (when pruning by sensitivity);
* t = prune_start + k prune_every <= prune_end: drop zero-gate components and the lowest
  scored ones down to the cubic component schedule (budget: `Rank1LoraConfig.resolve_budget`),
  removing them physically, optimizer included.
"""

from __future__ import annotations

from typing import Any

import torch

from dynalora.allocation.config import Rank1LoraConfig
from dynalora.allocation.controller_base import AllocationController
from dynalora.allocation.gates import prune_plan, soft_threshold_, target_components
from dynalora.allocation.ranks import adapter_parameters
from dynalora.allocation.resize import select_components
from dynalora.allocation.scores import component_sensitivity


class Rank1LoraController(AllocationController):
    """Rank-1 Sum LoRA (Rank1LoraConfig adapters); build it through `AllocationController(...)`."""

    config_class = Rank1LoraConfig
    method = "rank1"
    config: Rank1LoraConfig

    def _init_method(self) -> None:
        self.sensitivity = {n: torch.zeros(a.r, device=self.device) for n, a in self.adapters.items()}
        self.initial_components = sum(a.r for a in self.adapters.values())
        self.initial_parameters = adapter_parameters([a.r for a in self.adapters.values()], self.costs)
        self.unit_costs = dict(zip(self.adapters, self.costs)) if self.config.budget_in == "parameters" else None

    @property
    def initial_units(self) -> int:
        return self.initial_parameters if self.unit_costs else self.initial_components

    @property
    def budget(self) -> int:
        """What is kept at the end of pruning: components, or adapter parameters (budget_in)."""
        return self.config.resolve_budget(self.initial_units)

    def _step(self, t: int) -> dict[str, Any] | None:
        cfg = self.config
        start, end, every = self.schedule
        if cfg.gating == "scalar" and cfg.l1 > 0:
            gates = [a.gate for a in self.adapters.values() if a.gate is not None and a.r]
            soft_threshold_(gates, [self._lr_of(g, initial=True) * cfg.l1 for g in gates])
        if cfg.prune_by == "sensitivity" and t <= end:
            b = cfg.sensitivity_beta
            for name, adapter in self.adapters.items():
                score = component_sensitivity(adapter)
                if score is not None:  # non-finite readings (skipped fp16 steps) change nothing
                    ema = self.sensitivity[name]
                    self.sensitivity[name] = ema * b + torch.where(torch.isfinite(score), score, ema) * (1 - b)
        if start <= t <= end and (t - start) % every == 0:
            return self._prune(t, start, end)
        return None

    def _prune(self, t: int, start: int, end: int) -> dict[str, Any]:
        cfg = self.config
        target = target_components(t, start, end, self.initial_units, self.budget)
        if cfg.prune_by == "gate":
            scores = {n: a.gate.detach().abs() for n, a in self.adapters.items()}
        else:
            scores = self.sensitivity
        plan = prune_plan(self.adapters, scores, target, self.unit_costs)
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

    def _method_state(self) -> dict[str, Any]:
        return {"sensitivity": {n: s.detach().cpu().tolist() for n, s in self.sensitivity.items()},
                "initial_components": self.initial_components, "initial_parameters": self.initial_parameters}

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self.sensitivity = {n: torch.tensor(v, dtype=torch.float32, device=self.device)
                            for n, v in state["sensitivity"].items()}
        self.initial_components = int(state["initial_components"])
        if "initial_parameters" in state:  # older states: components only, the budget_in they had
            self.initial_parameters = int(state["initial_parameters"])

    def summary(self) -> dict[str, Any]:
        """Pruning steps, components at the start / kept / budget, final ranks by module type."""
        gates = [a.gate.detach().abs() for a in self.adapters.values() if a.gate is not None and a.r]
        summary: dict[str, Any] = {
            "method": self.method,
            "prunings": len(self.history),
            "resizes": self.resizes(),
            "initial_components": self.initial_components,
            "components": sum(self.ranks().values()),
            "budget": self.budget,
            "budget_in": self.config.budget_in,
            "parameters": adapter_parameters(list(self.ranks().values()), self.costs),
            "ranks_by_type": self.ranks_by_type(),
        }
        if gates:
            every = torch.cat(gates)
            summary.update(gate_min=round(float(every.min()), 4), gate_max=round(float(every.max()), 4))
        return summary
