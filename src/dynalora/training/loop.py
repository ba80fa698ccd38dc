"""The one training loop: AdamW, warm-up + linear decay, accumulation, clipping, mixed
precision, evaluation with best-model selection and early stopping, resumable checkpoints.

What is optimised and how a model is judged comes from an `Objective` (training/objective.py:
classification here, the causal-LM response loss in llm/objective.py); methods and callers add
step hooks (training/hooks.py). One optimizer step:
    loss = objective.loss(batch) + sum(hook.loss_terms())   per micro-batch, / group size
    loss.backward(); clip; optimizer.step()
    hook.after_optimizer_step(step)                  grads still present (may resize adapters)
    scheduler.step(); optimizer.zero_grad()

A run is deterministic on CPU for a given seed, and a run resumed from a checkpoint takes
exactly the steps the uninterrupted run would have taken: the checkpoint holds the epoch and
the position inside it (the batcher's order depends only on seed and epoch), every RNG state,
and the optimizer, scheduler and hook states.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from dynalora.distributed import (
    LOSS_SHARE,
    all_reduce_gradients,
    broadcast_parameters,
    current,
    gather_objects,
)
from dynalora.distributed.statistics import StatisticsReducer, input_statistics_of
from dynalora.training.checkpoint import Checkpoint, load_model_state, save_checkpoint
from dynalora.training.hooks import as_step_hook
from dynalora.training.objective import Objective, score, task_loss
from dynalora.training.optim import (
    autocast,
    linear_schedule,
    param_groups,
    rng_state,
    set_rng_state,
    steps_per_epoch,
    total_steps,
)
from dynalora.training.registry import Prepared
from dynalora.training.report import RunLog
from dynalora.training.tracking import show_bar

__all__ = ["TrainingDiverged", "TrainingLoop", "batch_tokens", "score", "task_loss"]


def batch_tokens(batch: dict[str, Any]) -> int:
    """Real (unpadded) tokens in a batch; 0 for batches of cached features."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else 0


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN/inf; the last good checkpoint is kept."""


class TrainingLoop:
    """Runs `prepared.model` over `train_batches` towards `objective`; `save_best(record)` is
    called on each new best evaluation. `callbacks`: extra step hooks (training/hooks.py)."""

    def __init__(self, prepared: Prepared, objective: Objective, config: Any, lr: float, head_lr: float,
                 train_batches: Any, eval_batches: Any, run_dir: Path, device: torch.device,
                 dtype: torch.dtype | None, save_best: Callable[[dict[str, Any]], None],
                 callbacks: list[Any] = ()) -> None:
        self.prepared, self.objective, self.config = prepared, objective, config
        self.model = prepared.model
        self.train_batches, self.eval_batches = train_batches, eval_batches
        self.run_dir, self.device, self.dtype = run_dir, device, dtype
        self.save_best = save_best
        self.eval_split = "selection" if getattr(config, "selection", "dev") == "split" else "dev"
        self.steps_per_epoch = steps_per_epoch(len(train_batches), config.grad_accum)
        self.total_steps = total_steps(len(train_batches), config.grad_accum, config.epochs)
        # An objective without a separate head (a causal LM's SFT) trains everything at `lr`.
        self.optimizer = AdamW(param_groups(self.model, objective.head, lr, head_lr, config.weight_decay), lr=lr)
        warmup = round(config.warmup_ratio * self.total_steps)
        self.scheduler = LambdaLR(self.optimizer, linear_schedule(warmup, self.total_steps))
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        self.hooks = [as_step_hook(h) for h in (*prepared.make_hooks(self.optimizer, self.total_steps), *callbacks)]
        # Data-parallel runs (dynalora.distributed): train_batches yields this process's shards
        self.process = current()
        self.statistics = StatisticsReducer(input_statistics_of(self.hooks))
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "position": 0, "best": None,
                                      "best_step": None, "bad_evals": 0, "stopped": False,
                                      "train_wall_s": 0.0}
        self.pending_rng: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None

    # -- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def checkpoint(self) -> None:
        # Every process holds the same model, optimizer and hook states; only the random
        # generators differ (each one's dropout), so each process's are kept.
        generators = gather_objects(rng_state())
        if not self.process.is_main:
            self.last_checkpoint = self.checkpoint_dir / f"step-{self.state['step']:08d}"
            return
        trainer = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "hooks": [h.state_dict() for h in self.hooks],
            "rng": generators[0],
            "rng_by_rank": generators,
        }
        progress = {**self.state, "config": self.config.to_dict(), "world_size": self.process.world_size}
        self.last_checkpoint = save_checkpoint(self.checkpoint_dir, self.state["step"], self.model,
                                               trainer, progress)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Load a checkpoint; hooks first, since a controller may resize adapters to saved ranks."""
        trainer = checkpoint.trainer
        for hook, state in zip(self.hooks, trainer["hooks"]):
            if state is not None:
                hook.load_state_dict(state)
        load_model_state(self.model, checkpoint.model, checkpoint.folder)
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        if self.scaler and trainer["scaler"]:
            self.scaler.load_state_dict(trainer["scaler"])
        self.state.update({k: checkpoint.progress[k] for k in self.state})
        by_rank = trainer.get("rng_by_rank") or [trainer["rng"]]
        # resumed with as many processes: each continues its own streams; else all take rank 0's
        self.pending_rng = by_rank[self.process.rank] if len(by_rank) == self.process.world_size else trainer["rng"]
        self.last_checkpoint = checkpoint.folder

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        metrics, n_examples = self.objective.evaluate(self.model, self.eval_batches, self.device, self.dtype)
        step = self.state["step"]
        return {"kind": "eval", "step": step, "epoch": round(step / self.steps_per_epoch, 4),
                "n_examples": n_examples, "metrics": metrics}

    def after_eval(self, record: dict[str, Any]) -> None:
        # Before min_epochs an evaluation neither becomes the best model nor uses up patience:
        # methods that reallocate ranks (peft-adalora) reach their final budget only by then.
        floor = getattr(self.config, "min_epochs", None)
        if floor is not None and record["epoch"] < floor - 1e-6:
            return
        best = self.state["best"]
        if best is None or self.objective.score(record["metrics"]) > self.objective.score(best["metrics"]):
            self.state.update(best=record, best_step=record["step"], bad_evals=0)
            self.save_best(record)
        else:
            self.state["bad_evals"] += 1
            patience = self.config.early_stopping_patience
            if patience is not None and self.state["bad_evals"] >= patience:
                self.state["stopped"] = True

    # -- training ---------------------------------------------------------------------------
    def micro_step(self, batch: dict[str, torch.Tensor], group: int) -> float:
        # Distributed: a shard's mean loss weighs by its share of the global batch and the
        # regularisers (the same in every process) by 1 / world size, so the gradients' sum
        # over the processes is one process's gradient on the global batch.
        share = batch.pop(LOSS_SHARE, None)
        world = self.process.world_size
        with autocast(self.device, self.dtype):
            if share is None:
                loss = self.objective.loss(self.model, batch, self.device)
            elif len(batch["index"]):
                loss = self.objective.loss(self.model, batch, self.device) * share.item()
            else:  # an empty shard of a short last batch
                loss = torch.zeros((), device=self.device)
            for hook in self.hooks:
                term = hook.loss_terms()
                if term is not None:
                    loss = loss + term / world
        # distributed: every process must reach the gradient sum; `synchronise` checks the total
        if world == 1 and not torch.isfinite(loss):
            self.diverged(f"the loss is {loss.item()}")
        loss = loss / group
        if world == 1 or loss.requires_grad:  # an empty shard without regularisers has nothing to differentiate
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        return loss.item()

    def synchronise(self, loss: float, tokens: int) -> tuple[float, int]:
        """Distributed: sum the accumulated gradients (with `loss` and `tokens`) over the processes
        and merge the allocation statistics, before the step and its decisions; returns the global
        batch's loss and tokens."""
        if not self.process.distributed:
            return loss, tokens
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        loss, total = all_reduce_gradients(params, [loss, tokens])
        if not math.isfinite(loss):
            self.diverged(f"the loss is {loss}")
        self.statistics.reduce()
        return loss, round(total)

    def optimizer_step(self) -> float:
        """One optimizer step; returns the gradient norm before clipping (for the log)."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        # max_norm=inf measures the norm without clipping when clipping is off
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm or math.inf)
        if self.config.max_grad_norm is not None and self.scaler is None and not torch.isfinite(norm):
            self.diverged(f"the gradient norm is {norm.item()}")
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.state["step"] += 1
        for hook in self.hooks:
            hook.after_optimizer_step(self.state["step"])
        live = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.process.distributed and any(a is not b for a, b in zip(params, live)):
            # a reallocation replaced adapter parameters: every process computed the same ones
            # (growth is seeded by the step), but an SVD may round differently on another
            # device, so rank 0's values are made everyone's (a cheap guarantee)
            broadcast_parameters(live)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def check_weights(self) -> None:
        """Refuse to evaluate or save weights that a step made NaN/inf (its loss was still finite)."""
        for name, p in self.model.named_parameters():
            if p.requires_grad and not torch.isfinite(p).all():
                self.diverged(f"the weights of {name} are not finite", self.state["step"])

    def diverged(self, what: str, step: int | None = None) -> None:
        """Raise TrainingDiverged for `step` (default: the step being computed)."""
        step = self.state["step"] + 1 if step is None else step
        kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training diverged at step {step}: {what}; {kept} and the best model "
            f"so far is in {self.run_dir}. Start again with a lower learning rate (--lr) or --max-grad-norm "
            "(--overwrite to reuse this folder; --resume would repeat the same steps)"
        )

    def run(self, log: RunLog) -> dict[str, Any]:
        """Train to the end (or early stop); returns the best evaluation record."""
        config, state = self.config, self.state
        n_batches = len(self.train_batches)
        bar = tqdm(total=self.total_steps, initial=state["step"],
                   disable=not (show_bar(config) and self.process.is_main),
                   desc=f"{config.method} {self.objective.name}", unit="step", dynamic_ncols=True)
        started = time.perf_counter() - state["train_wall_s"]
        self.model.train()
        try:
            while state["step"] < self.total_steps and not state["stopped"]:
                if state["position"] >= n_batches:
                    state["epoch"] += 1
                    state["position"] = 0
                self.train_batches.set_epoch(state["epoch"])
                batches = iter(self.train_batches)
                for _ in range(state["position"]):  # resuming mid-epoch: skip what was trained on
                    next(batches)
                if self.pending_rng is not None:
                    set_rng_state(self.pending_rng)
                    self.pending_rng = None
                while state["position"] < n_batches and state["step"] < self.total_steps:
                    group = min(config.grad_accum, n_batches - state["position"])
                    loss, tokens, step_start = 0.0, 0, time.perf_counter()
                    self.statistics.begin_step()
                    for _ in range(group):
                        batch = next(batches)
                        tokens += batch_tokens(batch)
                        loss += self.micro_step(batch, group)
                        state["position"] += 1
                    lr = self.scheduler.get_last_lr()[0]  # this step's lr; optimizer_step moves the schedule on
                    loss, tokens = self.synchronise(loss, tokens)
                    grad_norm = self.optimizer_step()
                    step = state["step"]
                    now = time.perf_counter()
                    state["train_wall_s"] = now - started
                    # time and tokens_per_s are wall-clock facts; the rest is identical across reruns
                    log.write({"kind": "train", "step": step, "epoch": round(step / self.steps_per_epoch, 4),
                               "loss": loss, "lr": lr, "grad_norm": grad_norm,
                               "tokens_per_s": round(tokens / max(now - step_start, 1e-9), 1),
                               "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")})
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                    due = (step % config.eval_every == 0) if config.eval_every else state["position"] == n_batches
                    evaluated = due or step == self.total_steps
                    saving = evaluated or bool(config.checkpoint_every and step % config.checkpoint_every == 0)
                    if saving:
                        self.check_weights()
                    if evaluated:
                        record = self.evaluate()
                        log.write(record)
                        self.after_eval(record)
                        # stderr, like the bar: stdout is left to the command's result (JSON)
                        if self.process.is_main:
                            glue = record["metrics"].get("glue")  # what chooses the checkpoint, when the task has one
                            bar.write(f"step {step}: {self.eval_split} {self.objective.main_metric} = "
                                      f"{record['metrics']['main']:.4f}"
                                      + ("" if glue is None else f", glue score {glue:.4f}"), file=sys.stderr)
                        started = time.perf_counter() - state["train_wall_s"]  # eval time is not training time
                    if saving:
                        self.checkpoint()
                    for hook in self.hooks:
                        hook.on_step_end(step)
                    if state["stopped"]:
                        break
        finally:
            bar.close()
        return state["best"]



def __getattr__(name: str) -> Any:
    # `Trainer`, the loop's old name, read as transformers' Trainer; it still imports.
    if name == "Trainer":
        warnings.warn("dynalora.training.loop.Trainer is renamed TrainingLoop (it takes an Objective)",
                      DeprecationWarning, stacklevel=2)
        return TrainingLoop
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
