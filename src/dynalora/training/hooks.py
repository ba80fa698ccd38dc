"""The step-hook protocol: what the training loop calls on a method's hooks and on callbacks.

One optimizer step (see dynalora.training.loop):
    loss = objective.loss(batch) + sum(hook.loss_terms())     per micro-batch
    loss.backward(); clip; optimizer.step()
    hook.after_optimizer_step(step)      grads still present (a controller may resize adapters)
    scheduler.step(); optimizer.zero_grad()
    ... evaluation, checkpoint ...
    hook.on_step_end(step)
`state_dict()` is saved in checkpoints and `load_state_dict()` restores it BEFORE the model's
and optimizer's state (a controller may first resize adapters to the saved ranks);
`write_report(folder)` runs once when training ends (plots, JSON); `summary()` gives entries
for metrics.json (e.g. {"allocation": ...}).

A hook may implement any subset: `StepHook` gives no-op defaults to subclass, and
`as_step_hook` wraps any other object (e.g. a user's callback with only `on_step_end`), so
the loop calls every method directly instead of probing each object at each step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

HOOK_METHODS = ("loss_terms", "after_optimizer_step", "on_step_end", "state_dict", "load_state_dict",
                "write_report")  # not `summary`: a wrapped object's unrelated summary() must not reach metrics.json


class StepHook:
    """Base class of step hooks: every method does nothing until overridden."""

    def loss_terms(self) -> torch.Tensor | None:
        """A term added to the loss of every micro-batch (a regulariser), or None."""
        return None

    def after_optimizer_step(self, step: int) -> None:
        """After `optimizer.step()` of optimizer step `step` (1-based), gradients still present."""

    def on_step_end(self, step: int) -> None:
        """After step `step`'s evaluation and checkpoint (if any)."""

    def state_dict(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of this hook; None when it has no state."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s result (called before the model's state is loaded)."""

    def write_report(self, folder: Path) -> None:
        """Files written into the run folder once training has ended."""

    def summary(self) -> dict[str, Any]:
        """Entries this hook adds to metrics.json once training has ended (none by default)."""
        return {}


class _Partial(StepHook):
    """Any object as a StepHook: its own methods where it has them, no-ops elsewhere."""

    def __init__(self, target: Any) -> None:
        self.target = target
        for name in HOOK_METHODS:
            method = getattr(target, name, None)
            if callable(method):
                setattr(self, name, method)


def as_step_hook(hook: Any) -> StepHook:
    """`hook` itself when it is a StepHook, else a StepHook calling the methods it has."""
    return hook if isinstance(hook, StepHook) else _Partial(hook)
