"""One run pipeline for every task: the run folder, the loop over an objective, the report.

    checkpoint = start_run_folder(config)            # resume point, or a clean folder
    ... the task loads data and model, prepares the method, picks an objective ...
    outcome = run_loop(config, RunSetup(...), checkpoint, callbacks)
    metrics = {**task_fields, **summary(outcome)}
    publish_report(config.output, metrics, outcome)  # metrics.json, curves.png, hook reports

`dynalora.training.api.train` (classification) and `dynalora.llm.sft.train_sft` (SFT) are
both this sequence; they differ only in data, model, objective and the fields they report.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora.data import BucketBatcher
from dynalora.errors import ConfigError
from dynalora.files import write_json
from dynalora.training.checkpoint import Checkpoint, latest_checkpoint
from dynalora.training.loop import TrainingLoop
from dynalora.training.objective import Objective
from dynalora.training.registry import Prepared
from dynalora.training.report import RunLog, plot_curves
from dynalora.training.tracking import make_sinks, show_bar

# Fields that may differ between a run and its resumption.
RESUME_FREE = ("resume", "progress", "output", "logging_steps", "report_to")


def check_resumable(config: Any, saved: dict[str, Any], where: Path, also_free: tuple[str, ...] = ()) -> None:
    """`also_free`: more fields (beyond RESUME_FREE) that may change between the run and its resume."""
    current = config.to_dict()
    changed = [k for k in current if k not in RESUME_FREE + also_free and saved.get(k) != current[k]]
    if changed:
        details = ", ".join(f"{k}={saved.get(k)!r} -> {current[k]!r}" for k in changed[:4])
        raise ConfigError(f"resume: the checkpoint in {where} was written with other settings ({details}); "
                          "use the same settings, or drop --resume to start over")


def start_run_folder(config: Any, also_free: tuple[str, ...] = ()) -> Checkpoint | None:
    """The checkpoint to resume from (`config.resume`), checked against `config`; or None, after
    deleting any old checkpoints so a fresh run can never resume from stale state."""
    root = Path(config.output) / "checkpoints"
    checkpoint = latest_checkpoint(root) if config.resume else None
    if checkpoint is not None:
        check_resumable(config, checkpoint.progress["config"], checkpoint.folder, also_free)
    elif root.exists():
        shutil.rmtree(root)
    return checkpoint


def make_batches(train_features: list[Any], eval_features: list[Any], config: Any,
                 pad_token_id: int) -> tuple[BucketBatcher, BucketBatcher]:
    """Shuffled training batches (order from the seed and epoch) and fixed evaluation batches."""
    train = BucketBatcher(train_features, config.batch_size, shuffle=True, seed=config.seed,
                          pad_token_id=pad_token_id)
    evaluation = BucketBatcher(eval_features, config.eval_batch_size, shuffle=False, pad_token_id=pad_token_id)
    return train, evaluation


def count_parameters(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@dataclass
class RunSetup:
    """Everything task-specific the loop needs, ready to run."""

    prepared: Prepared
    objective: Objective
    train_batches: Any
    eval_batches: Any
    device: torch.device
    dtype: torch.dtype | None
    lr: float
    head_lr: float
    run_file: str  # the run description written beside each new best model
    run_format: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunOutcome:
    loop: TrainingLoop
    best: dict[str, Any]
    records: list[dict[str, Any]]  # log.jsonl's records
    setup: RunSetup


def run_loop(config: Any, setup: RunSetup, checkpoint: Checkpoint | None, callbacks: list[Any] | None = None,
             before_first_step: Callable[[TrainingLoop, RunLog], None] | None = None) -> RunOutcome:
    """Train to the end, saving each new best model (the method's files plus `setup.run_file`)
    into `config.output`; `before_first_step(loop, log)` runs on a fresh (not resumed) run."""
    out = Path(config.output)

    def save_best(record: dict[str, Any]) -> None:
        setup.prepared.save(out, setup.metadata)
        write_json(out / setup.run_file, {"format": setup.run_format, "version": 1, "metadata": setup.metadata,
                                          "best": record})

    loop = TrainingLoop(setup.prepared, setup.objective, config, setup.lr, setup.head_lr, setup.train_batches,
                        setup.eval_batches, out, setup.device, setup.dtype, save_best, callbacks or [])
    if checkpoint is not None:
        loop.restore(checkpoint)
    log = RunLog(out / "log.jsonl", resume_step=loop.state["step"] if checkpoint else None,
                 sinks=make_sinks(config, out, loop.total_steps, show_bar(config)))
    try:
        if checkpoint is None and before_first_step is not None:
            before_first_step(loop, log)
        best = loop.run(log)
    finally:
        log.close()
    return RunOutcome(loop, best, log.records, setup)


def summary(outcome: RunOutcome) -> dict[str, Any]:
    """The metrics.json fields every task reports: the best evaluation and the run's size, plus
    what the step hooks add (dynamic LoRA / Rank-1: the allocation summary)."""
    best, state = outcome.best, outcome.loop.state
    trainable, total = count_parameters(outcome.setup.prepared.model)
    return {
        "n_examples": best["n_examples"], "best_step": best["step"], "best_epoch": best["epoch"],
        "metrics": best["metrics"], "steps": state["step"], "total_steps": outcome.loop.total_steps,
        "stopped_early": state["stopped"], "train_wall_s": round(state["train_wall_s"], 2),
        "trainable_params": trainable, "total_params": total, "lr": outcome.setup.lr,
        **{key: value for hook in outcome.loop.hooks for key, value in (hook.summary() or {}).items()},
    }


def publish_report(folder: str | Path, metrics: dict[str, Any], outcome: RunOutcome, title: str = "") -> None:
    """metrics.json, curves.png (the objective's main metric, under `title`) and each hook's
    report files."""
    folder = Path(folder)
    write_json(folder / "metrics.json", metrics)
    plot_curves(outcome.records, folder / "curves.png", outcome.setup.objective.main_metric, title=title)
    for hook in outcome.loop.hooks:
        hook.write_report(folder)
