"""One run pipeline for every task: the run folder, the loop over an objective, the report.

    run = open_run_folder(config)                    # the output can be a run folder; nothing changes
    ... the task loads data and model, prepares the method, picks an objective ...
    with run.claim(resume=config.resume, overwrite=config.overwrite):   # the lock, one writer
        checkpoint = start_run_folder(config, run)   # resume point, or a clean folder
        outcome = run_loop(config, RunSetup(...), run, checkpoint, callbacks)
        metrics = {**task_fields, **summary(outcome)}
        publish_report(config.output, metrics, outcome)  # metrics.json, curves.png, hook reports

Every input is checked before the folder changes (`claim` comes after the data and the model
are loaded), and each new best model is published whole as `best/` (dynalora.runs).

`dynalora.training.api.train` (classification) and `dynalora.llm.sft.train_sft` (SFT) are
both this sequence; they differ only in data, model, objective and the fields they report.

Started by torchrun / accelerate launch, every process runs the same sequence: the first
step joins the launcher's process group, each process trains on its shard of every global
batch (dynalora.distributed), and the main process alone writes the run folder.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora.data import BucketBatcher
from dynalora.distributed import (
    ShardedBatches,
    barrier,
    broadcast_object,
    broadcast_parameters,
    current,
    gather_objects,
    join_process_group,
    rank_digest,
)
from dynalora.errors import ConfigError
from dynalora.files import write_json
from dynalora.runs import RunFolder
from dynalora.training.checkpoint import Checkpoint, latest_checkpoint
from dynalora.training.loop import TrainingLoop
from dynalora.training.objective import Objective
from dynalora.training.optim import seed_everything
from dynalora.training.registry import Prepared
from dynalora.training.report import RunLog, plot_curves
from dynalora.training.tracking import make_sinks, show_bar

# Fields that may differ between a run and its resumption.
RESUME_FREE = ("resume", "overwrite", "progress", "output", "logging_steps", "report_to", "max_skipped_share")


def check_resumable(config: Any, saved: dict[str, Any], where: Path, also_free: tuple[str, ...] = ()) -> None:
    """`also_free`: more fields (beyond RESUME_FREE) that may change between the run and its resume.

    A field left unset (None) now that the run recorded a value for takes that value: the run
    goes on as it started, even when the field's default has since become "decide later"
    (sft's strip_calculator was True, now None: on for the gsm8k layout only)."""
    for key, value in saved.items():
        if value is not None and getattr(config, key, value) is None and key not in RESUME_FREE + also_free:
            setattr(config, key, value)
    current = config.to_dict()
    changed = [k for k in current if k not in RESUME_FREE + also_free and saved.get(k) != current[k]]
    if changed:
        details = ", ".join(f"{k}={saved.get(k)!r} -> {current[k]!r}" for k in changed[:4])
        raise ConfigError(f"resume: the checkpoint in {where} was written with other settings ({details}); "
                          "use the same settings, or drop --resume to start over")


def open_run_folder(config: Any) -> RunFolder:
    """The run's folder, checked before anything else is: a folder (or one can be made there),
    writable, and holding a checkpoint if `config.resume`. Nothing changes yet."""
    join_process_group(config.device)  # under a launcher: before the main process claims the folder
    run = RunFolder(config.output)
    run.check_path()
    run.check_resumable(config.resume)
    return run


def claim_run(run: RunFolder, config: Any) -> contextlib.AbstractContextManager:
    """`run.claim(...)` (the folder's lock) in the main process; the other processes of a
    distributed run write nothing there and take no lock."""
    if current().is_main:
        return run.claim(resume=config.resume, overwrite=config.overwrite)
    return contextlib.nullcontext()


def start_run_folder(config: Any, run: RunFolder, also_free: tuple[str, ...] = ()) -> Checkpoint | None:
    """Inside `run.claim(...)`: the checkpoint to resume from (`config.resume`), checked
    against `config`, or None; then the folder is tidied, and a fresh run clears the previous
    run's outputs, so it can never resume from stale state or leave them beside its own."""
    checkpoint = latest_checkpoint(run.path / "checkpoints") if config.resume else None
    if checkpoint is not None:
        check_resumable(config, checkpoint.progress["config"], checkpoint.folder, also_free)
    if current().is_main:
        run.start(fresh=checkpoint is None)
    barrier()  # every process has read the checkpoint before the main one writes the next
    return checkpoint


def fit_max_length(config: Any, model_config: Any, where: str | Path) -> Any:
    """`config`, with `max_length` cut to the positions the model has, saying so: a longer input
    would crash the run mid-way (the cut value is what the run records and evaluates with)."""
    limit = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(limit, int) or config.max_length <= limit:
        return config
    warnings.warn(f"max_length={config.max_length} is more than the {limit} positions the model in {where} "
                  f"has; inputs are cut at {limit} tokens", UserWarning, stacklevel=2)
    return config.replace(max_length=limit)


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


def start_processes_alike(model: nn.Module, seed: int) -> None:
    """Every process starts from rank 0's trainable weights; the others then take their own
    random streams (dropout), while rank 0 keeps exactly the stream of a one-process run."""
    process = current()
    if not process.distributed:
        return
    broadcast_parameters([p for p in model.parameters() if p.requires_grad])
    if process.rank:
        seed_everything(seed + 7919 * process.rank)


def run_loop(config: Any, setup: RunSetup, run: RunFolder, checkpoint: Checkpoint | None,
             callbacks: list[Any] | None = None,
             before_first_step: Callable[[TrainingLoop, RunLog], None] | None = None) -> RunOutcome:
    """Train to the end in the claimed `run` folder, publishing each new best model (the
    method's files plus `setup.run_file`) as `best/`; `before_first_step(loop, log)` runs on a
    fresh (not resumed) run."""
    out = run.path
    process = current()
    train_batches = setup.train_batches
    if process.distributed:
        train_batches = ShardedBatches(train_batches, process.rank, process.world_size)
    start_processes_alike(setup.prepared.model, config.seed)

    def save_best(record: dict[str, Any]) -> None:
        if not process.is_main:
            return

        def write(folder: Path) -> None:
            setup.prepared.save(folder, setup.metadata)
            write_json(folder / setup.run_file, {"format": setup.run_format, "version": 1,
                                                 "metadata": setup.metadata, "best": record})

        run.publish(write)

    loop = TrainingLoop(setup.prepared, setup.objective, config, setup.lr, setup.head_lr, train_batches,
                        setup.eval_batches, out, setup.device, setup.dtype, save_best, callbacks or [])
    if checkpoint is not None:
        loop.restore(checkpoint)
    log = RunLog(out / "log.jsonl", resume_step=loop.state["step"] if checkpoint else None,
                 sinks=make_sinks(config, out, loop.total_steps, show_bar(config)) if process.is_main else None,
                 enabled=process.is_main)
    if checkpoint is not None and process.distributed:
        # the records before the checkpoint are in the main process's log.jsonl: every process's
        # outcome holds them (SFT's summary reads the initial evaluation from them)
        log.records = broadcast_object(log.records)
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
        # patience can run out at the very last evaluation: that run still trained to the end
        "stopped_early": bool(state["stopped"]) and state["step"] < outcome.loop.total_steps,
        "train_wall_s": round(state["train_wall_s"], 2),
        "trainable_params": trainable, "total_params": total, "lr": outcome.setup.lr,
        **{key: value for hook in outcome.loop.hooks for key, value in (hook.summary() or {}).items()},
        **processes_record(outcome.setup.prepared),
    }


def processes_record(prepared: Prepared) -> dict[str, Any]:
    """The processes that trained: the world size and, for the LoRA family, a digest of the
    final per-layer ranks each process holds (all equal when they stayed in step)."""
    record: dict[str, Any] = {"world_size": current().world_size}
    if prepared.wrapper is not None:
        record["rank_digests"] = gather_objects(rank_digest(prepared.wrapper.ranks()))
    return record


def publish_report(folder: str | Path, metrics: dict[str, Any], outcome: RunOutcome, title: str = "") -> None:
    """metrics.json, curves.png (the objective's main metric, under `title`) and each hook's
    report files. In a distributed run the main process writes them and the others wait."""
    folder = Path(folder)
    if current().is_main:
        write_json(folder / "metrics.json", metrics)
        plot_curves(outcome.records, folder / "curves.png", outcome.setup.objective.main_metric, title=title)
        for hook in outcome.loop.hooks:
            hook.write_report(folder)
    barrier()  # the run folder is complete when any process returns
