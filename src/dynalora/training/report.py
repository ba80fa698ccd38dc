"""The run's log (log.jsonl: one JSON record per optimizer step and per evaluation) and its plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dynalora.files import atomic_path


def _clean(value: Any) -> Any:
    """NaN/inf become None so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class RunLog:
    """Appends records to `log.jsonl`; on resume, drops what came after the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and path.is_file():
            kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.records = [r for r in kept if r.get("step", 0) <= resume_step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        self._file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        record = _clean(record)
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def plot_curves(records: list[dict[str, Any]], path: Path, metric: str) -> None:
    """Training loss (and its running mean) and the evaluation metric against the step."""
    # The Agg canvas directly: no display needed, matplotlib's global backend left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records if r.get("kind") == "train"]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
    window = max(1, len(losses) // 20)
    if len(losses) >= window:
        smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                  for i in range(len(losses))]
        left.plot(steps, smooth, lw=1.5, label=f"mean of {window}")
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss")
    left.legend()
    right.plot([r["step"] for r in evals], [r["metrics"].get(metric) for r in evals], marker="o")
    right.set_xlabel("optimizer step")
    right.set_ylabel(f"dev {metric}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
