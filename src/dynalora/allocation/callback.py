"""Hugging Face `Trainer` integration: the controller runs in `on_optimizer_step`.

    controller = AllocationController(model)            # optimizer comes from the Trainer
    trainer = Trainer(model=model, args=args, ..., callbacks=[DynamicLoraCallback(controller)])

`on_optimizer_step` fires after `optimizer.step()` and before `zero_grad()`, once per
optimizer step (gradient accumulation included), which is exactly the controller's protocol.
The Trainer's optimizer and run length are picked up at `on_train_begin`. The regulariser
(`lambda_a`, `lambda_b`, `lambda_orth`) is a loss term, which the stock Trainer does not add:
with non-zero lambdas, override `compute_loss` to add `controller.loss_terms()`.

Checkpoints: every checkpoint the Trainer saves gets the controller's state beside it
(`allocation_controller.json`). The saved weights have the saved ranks, so resuming needs
the adapters resized first, before the Trainer loads them:

    callback = DynamicLoraCallback(AllocationController(model))   # a freshly built model
    callback.load_checkpoint("out/checkpoint-500")                # resizes to the saved ranks
    Trainer(model=model, ..., callbacks=[callback]).train(resume_from_checkpoint="out/checkpoint-500")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from dynalora.allocation.controller import AllocationController
from dynalora.files import read_json, write_json

CONTROLLER_STATE_FILE = "allocation_controller.json"


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

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        # Fires right after the Trainer wrote output_dir/checkpoint-<global_step>.
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_json(folder / CONTROLLER_STATE_FILE, self.controller.state_dict())

    def load_checkpoint(self, folder: str | os.PathLike) -> None:
        """Restore the controller from a Trainer checkpoint written with this callback.

        Call it before `trainer.train(resume_from_checkpoint=folder)`: it resizes the adapters
        to the saved ranks, so the Trainer's own loading of weights and optimizer state fits.
        """
        self.controller.load_state_dict(read_json(Path(folder) / CONTROLLER_STATE_FILE,
                                                  "allocation controller state (saved by DynamicLoraCallback)"))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self.controller.remove_hooks()
