"""`AllocationController`: what dynamic LoRA and Rank-1 Sum LoRA share beside a training loop.

    model = get_lora_model(base, DynamicLoraConfig(r=8, modules_to_save=["classifier"]))
    optimizer = torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)
    controller = AllocationController(model, optimizer, total_steps=1000)
    for batch in batches:
        loss = model(**batch).loss + controller.loss_terms()
        loss.backward(); optimizer.step()
        controller.after_optimizer_step()      # grads still present: before zero_grad()
        scheduler.step(); optimizer.zero_grad()

`AllocationController(...)` builds the controller of the adapter's method: a
`DynamicLoraController` (allocation/dynamic.py) for `DynamicLoraConfig`, a `Rank1LoraController`
(allocation/rank1.py) for `Rank1LoraConfig`. This base holds the optimizer wiring, the
schedule, the history of reallocations, saving and resuming, the regulariser and the reports.

With gradient accumulation call `after_optimizer_step` once per optimizer step (not per
micro-batch): it reads the accumulated gradients. The controller swaps resized parameters
inside the attached optimizer; any other object holding the adapter parameters (a second
optimizer, DDP's buckets) is not updated: rebuild those after a reallocation.

Several processes: `reduce` (a callable, identity by default) is applied to every statistic a
process measures on its own data before it decides anything (today: the input variances);
give it an all-reduce *mean* over processes (same shape and dtype in, averaged tensor out) and
every process takes the same decisions. Gradient-based scores need no reduction under DDP:
the gradients are already averaged when `after_optimizer_step` runs. Fresh components are
drawn from a generator seeded by the step, so every process (and a resumed run) draws the
same ones without any RNG restoring.

Resuming: `controller.state_dict()` is plain JSON-able data. Build the model and optimizer
as at the start, create the controller, call `controller.load_state_dict(state)` (this resizes
the adapters, and the optimizer's parameters, to the saved ranks), then load the model's
state dict, then the optimizer's.
"""

from __future__ import annotations

import copy
import itertools
import json
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from dynalora.adapters.config import ConfigError, LoraConfig
from dynalora.adapters.layer import LoraAdapter
from dynalora.adapters.model import DynaLoraModel
from dynalora.allocation.plot import module_type, plot_history
from dynalora.allocation.resize import resize_adapter, unwrap_optimizer
from dynalora.allocation.scores import regulariser

STATE_VERSION = 2
Reduce = Callable[[torch.Tensor], torch.Tensor]


def direction_changes(ranks: list[int]) -> int:
    """How often a sequence of ranks changes direction, ignoring steps where it stays."""
    steps = [b - a for a, b in itertools.pairwise(ranks) if b != a]
    return sum(1 for s, t in itertools.pairwise(steps) if (s > 0) != (t > 0))


def no_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """The single-process `reduce`: the statistic as measured."""
    return tensor


class AllocationController:
    """Runs an allocating adapter's method beside any training loop (see the module doc)."""

    config_class: ClassVar[type[LoraConfig] | None] = None
    method: ClassVar[str] = ""
    _registry: ClassVar[list[type[AllocationController]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.config_class is not None:
            AllocationController._registry.append(cls)

    def __new__(cls, *args: Any, **kwargs: Any) -> AllocationController:
        if cls is not AllocationController:  # a concrete controller (also copy / pickle)
            return super().__new__(cls)
        model = args[0] if args else kwargs["model"]
        name = kwargs.get("adapter_name") or (args[3] if len(args) > 3 else None) or model.active_adapter
        config = model.configs.get(name)
        for subclass in AllocationController._registry:
            if isinstance(config, subclass.config_class):
                return super().__new__(subclass)
        if config is None:
            raise KeyError(f"unknown adapter {name!r}; loaded: {sorted(model.configs)}")
        raise TypeError(
            f"adapter {name!r} is {type(config).__name__} (method {config.method!r}); the controller "
            "drives DynamicLoraConfig or Rank1LoraConfig adapters"
        )

    def __init__(self, model: DynaLoraModel, optimizer: torch.optim.Optimizer | None = None,
                 total_steps: int | None = None, adapter_name: str | None = None,
                 reduce: Reduce | None = None) -> None:
        self.model = model
        self.adapter_name = adapter_name or model.active_adapter
        self.config = model.configs[self.adapter_name]
        self.adapters: dict[str, LoraAdapter] = model.adapter_modules(self.adapter_name)
        self.names = list(self.adapters)
        self.costs = [a.in_features + a.out_features for a in self.adapters.values()]
        self.reduce: Reduce = reduce or no_reduce
        self.optimizer: torch.optim.Optimizer | None = None
        self.total_steps = total_steps
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._schedule: tuple[int, int, int] | None = None
        self._lr_cache: dict[int, dict] | None = None
        self._warned_no_optimizer = False
        self.device = next(iter(self.adapters.values())).lora_A.device
        self._init_method()
        if total_steps is not None:
            self.set_total_steps(total_steps)
        if optimizer is not None:
            self.attach_optimizer(optimizer)

    # -- what each method provides ------------------------------------------------------------
    def _init_method(self) -> None:
        raise NotImplementedError

    def _step(self, t: int) -> dict[str, Any] | None:
        raise NotImplementedError

    def _method_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_method_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """A short JSON-able account of the allocation (for metrics.json)."""
        raise NotImplementedError

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
        """Detach every hook the controller put on the model or the optimizer."""

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
        return self._step(self.step)

    def _lr_of(self, param: torch.Tensor, initial: bool = False) -> float:
        """The learning rate of `param`'s group (initial=True: before any schedule scaled it)."""
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
        return float(group.get("initial_lr", group["lr"]) if initial else group["lr"])

    def _optimizer_for_resize(self) -> torch.optim.Optimizer | None:
        if self.optimizer is None and not self._warned_no_optimizer:
            warnings.warn(
                "resizing adapters with no optimizer attached: an optimizer created earlier still "
                "holds the old parameters (call attach_optimizer)", stacklevel=3)
            self._warned_no_optimizer = True
        return self.optimizer

    def _after_resize(self) -> None:
        self._lr_cache = None

    # -- saving and resuming ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able): step, ranks, history and the method's own state."""
        return {
            "version": STATE_VERSION,
            "method": self.method,
            "adapter_name": self.adapter_name,
            "step": self.step,
            "total_steps": self.total_steps,
            "ranks": self.ranks(),
            "history": copy.deepcopy(self.history),
            "config": self._settings(),
            **self._method_state(),
        }

    def _settings(self) -> dict[str, Any]:
        """The method's resolved settings (defaults filled in), without the per-layer patterns
        that resizing rewrites: a resume under other settings would silently change the run."""
        return {k: v for k, v in self.config.to_dict().items() if k not in ("rank_pattern", "alpha_pattern")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore, resizing every adapter (and the optimizer's parameters) to the saved ranks.

        Call it before loading the model's and the optimizer's state dicts: those hold tensors
        of the saved shapes. The resized adapters hold placeholder values until then.
        """
        if state.get("method") != self.method:
            raise ValueError(f"controller state is for method {state.get('method')!r}, this controller runs {self.method!r}")
        if state.get("version", 0) > STATE_VERSION:
            raise ValueError(f"controller state version {state['version']} is newer than this dynalora reads")
        saved = state.get("config") or {}  # states saved before the settings were kept: unchecked
        now = self._settings()
        def same(a: Any, b: Any) -> bool:  # through JSON: a saved tuple comes back a list
            return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

        changed = [k for k in saved if k in now and not same(saved[k], now[k])]
        if changed:
            details = ", ".join(f"{k}={saved[k]!r} (now {now[k]!r})" for k in changed[:4])
            options = " ".join(f"{k}={json.dumps(saved[k])}" for k in changed[:4])
            raise ConfigError(f"resume: the checkpoint's {self.method} LoRA ran with {details}, a default "
                              f"may have changed since; continue it with --method-options {options}, or start over")
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
        self._load_method_state(state)

    # -- reports ------------------------------------------------------------------------------
    def plot(self, path: str) -> None:
        """PNG: rank per layer over the reallocations (heatmaps), weights when recorded."""
        title = f"{self.method} LoRA: rank per layer ({self.adapter_name})"
        plot_history(self.history, self.names, path, title)

    def ranks_by_type(self) -> dict[str, dict[str, float]]:
        """Final ranks grouped by module type (the path inside a block: attention.self.query, mlp.up_proj, ...)."""
        groups: dict[str, list[int]] = {}
        for name, r in self.ranks().items():
            groups.setdefault(module_type(name), []).append(r)
        return {kind: {"layers": len(rs), "min": min(rs), "max": max(rs), "mean": round(sum(rs) / len(rs), 3),
                       "total": sum(rs)} for kind, rs in sorted(groups.items())}

    def rank_paths(self) -> dict[str, list[int]]:
        """Each layer's rank before the first reallocation, then after each one."""
        paths = {}
        for name, rank in self.ranks().items():
            start = next((h["changed"][name][0] for h in self.history if name in h.get("changed", {})), rank)
            paths[name] = [start, *(h["ranks"][name] for h in self.history if "ranks" in h)]
        return paths

    def reversals(self) -> dict[str, float]:
        """How often ranks turned back: per layer, the changes of direction of its rank path
        (8 -> 12 -> 10 is one); the mean over layers and the share of layers that turned at all.
        Allocation that settles keeps both near 0; flapping ranks (grow, shrink, grow) do not."""
        turns = [direction_changes(path) for path in self.rank_paths().values()]
        return {"mean_per_layer": round(sum(turns) / len(turns), 3),
                "share_of_layers": round(sum(t > 0 for t in turns) / len(turns), 3)}

    def resizes(self) -> int:
        """How many layer resizes the run made (a layer changing rank once counts one)."""
        return sum(len(r.get("changed", r.get("removed", {}))) for r in self.history)
