"""Where a run's log records go besides log.jsonl: plain progress lines, TensorBoard, W&B, MLflow.

`RunLog` hands every record it writes (training steps and evaluations, see loop.py) to these
sinks. The trackers' own libraries do the writing; they are optional (`pip install
'dynalora[track]'`) and imported only when asked for. W&B runs offline unless WANDB_MODE
says otherwise, and MLflow writes to `<run folder>/mlruns` unless MLFLOW_TRACKING_URI points
elsewhere, so both work on a machine without internet.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TextIO

from dynalora.errors import MissingDependencyError
from dynalora.training.run_config import REPORT_TO

__all__ = ["REPORT_TO", "make_sinks", "show_bar"]
# Fields of a training record that are not scalars to plot.
NOT_SCALARS = ("kind", "step", "time")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A record's numbers under tracker-style names: train/loss, eval/accuracy, ..."""
    if record.get("kind") == "eval":
        items = {f"eval/{k}": v for k, v in record.get("metrics", {}).items() if k != "main"}
    elif record.get("kind") == "train":
        items = {f"train/{k}": v for k, v in record.items() if k not in NOT_SCALARS}
    else:  # e.g. SFT's description of its data
        return {}
    return {k: float(v) for k, v in items.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class PlainProgress:
    """One line per `every` training steps and one per evaluation, for logs and pipes (no
    carriage-return frames): `step 40/126 (epoch 0.95) loss 0.5123 lr 9.1e-04 grad_norm 1.32 ...`."""

    def __init__(self, every: int, total_steps: int, stream: TextIO | None = None) -> None:
        self.every, self.total_steps, self.stream = every, total_steps, stream or sys.stderr

    def write(self, record: dict[str, Any]) -> None:
        if record.get("kind") != "train" or (record["step"] % self.every and record["step"] != self.total_steps):
            return
        parts = [f"step {record['step']}/{self.total_steps}", f"(epoch {record.get('epoch', 0):.2f})"]
        for key, fmt in (("loss", ".4f"), ("lr", ".2e"), ("grad_norm", ".3g"), ("tokens_per_s", ".0f")):
            if isinstance(record.get(key), (int, float)):
                parts.append(f"{key} {record[key]:{fmt}}")
        print(" ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        pass


def _require(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"--report-to {what} needs the {what} package: "
                                     "pip install 'dynalora[track]'") from None


class TensorBoardSink:
    """Event files in `<run folder>/runs/` (TensorBoard's own default layout)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "runs"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()))

    def write(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        wandb = _require("wandb", "wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "dynalora"), dir=str(run_dir),
                              config=config, mode=os.environ.get("WANDB_MODE", "offline"),
                              name=Path(run_dir).name)

    def write(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.mlflow = _require("mlflow", "mlflow")
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            self.mlflow.set_tracking_uri((Path(run_dir) / "mlruns").resolve().as_uri())
        self.mlflow.start_run(run_name=Path(run_dir).name)
        self.mlflow.log_params({k: str(v)[:250] for k, v in config.items()})

    def write(self, record: dict[str, Any]) -> None:
        values = {k.replace("/", "_"): v for k, v in scalars(record).items()}
        self.mlflow.log_metrics(values, step=record["step"])

    def close(self) -> None:
        self.mlflow.end_run()


TRACKERS = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "mlflow": MlflowSink}


def make_sinks(config: Any, run_dir: Path, total_steps: int, bar_shown: bool) -> list[Any]:
    """The sinks a run config asks for: plain progress lines unless the interactive bar is
    shown, and its `report_to` tracker."""
    sinks: list[Any] = [] if bar_shown else [PlainProgress(config.logging_steps, total_steps)]
    if config.report_to != "none":
        sinks.append(TRACKERS[config.report_to](run_dir, config.to_dict()))
    return sinks


def show_bar(config: Any) -> bool:
    """The interactive progress bar only on a terminal: in a file it is a pile of carriage returns."""
    return bool(config.progress) and sys.stderr.isatty()
