"""Hugging Face `Trainer` integration: the controller runs in `on_optimizer_step`.

    controller = AllocationController(model)            # optimizer comes from the Trainer
    trainer = Trainer(model=model, args=args, ..., callbacks=[DynamicLoraCallback(controller)])

`on_optimizer_step` fires after `optimizer.step()` and before `zero_grad()`, once per
optimizer step (gradient accumulation included), which is exactly the controller's protocol.
The Trainer's optimizer and run length are picked up at `on_train_begin`. The regulariser
(`lambda_a`, `lambda_b`, `lambda_orth`) is a loss term, which the stock Trainer does not add:
with non-zero lambdas, override `compute_loss` to add `controller.loss_terms()`.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from dynalora.allocation.controller import AllocationController


class DynamicLoraCallback(TrainerCallback):
    """Drives an `AllocationController` from inside `transformers.Trainer`."""

    def __init__(self, controller: AllocationController) -> None:
        self.controller = controller

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if optimizer is not None and self.controller.optimizer is not optimizer:
            self.controller.attach_optimizer(optimizer)
        if self.controller.total_steps is None and state.max_steps:
            self.controller.set_total_steps(state.max_steps)

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          optimizer: Any = None, **kwargs: Any) -> None:
        if self.controller.optimizer is None and optimizer is not None:
            self.controller.attach_optimizer(optimizer)
        # The Trainer increments global_step after this event: this is step global_step + 1.
        self.controller.after_optimizer_step(state.global_step + 1)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self.controller.remove_hooks()
