"""The run's log (log.jsonl: one JSON record per optimizer step and per evaluation) and its plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dynalora.files import atomic_path
from dynalora.runs.errors import RunFolderError


def _clean(value: Any) -> Any:
    """NaN/inf become None so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def read_records(path: Path) -> list[dict[str, Any]]:
    """The log's records. A last line cut short (the run was killed while writing it) is
    dropped: the checkpoint the run resumes from comes before it. A broken line elsewhere
    means the file was damaged some other way, and is an error naming it."""
    lines = [line for line in path.read_text(errors="replace").split("\n") if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RunFolderError(f"{path}, line {number}: not a JSON record; the log is damaged "
                                   "(move it away to resume without it)") from None
        if isinstance(record, dict):
            records.append(record)
    return records


class RunLog:
    """Appends records to `log.jsonl`; on resume, drops what came after the checkpoint.

    `sinks` (dynalora.training.tracking: progress lines, TensorBoard, W&B, MLflow) receive each
    new record too, and are closed with the log. enabled=False keeps the records in memory
    only (the other processes of a distributed run: the main process alone writes the run folder).
    """

    def __init__(self, path: Path, resume_step: int | None = None, sinks: list[Any] | None = None,
                 enabled: bool = True) -> None:
        self.path = path
        self.sinks = list(sinks or [])
        self.records: list[dict[str, Any]] = []
        self._file = None
        if not enabled:
            return
        if resume_step is not None and path.is_file():
            self.records = [r for r in read_records(path) if r.get("step", 0) <= resume_step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        self._file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        record = _clean(record)
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        for sink in self.sinks:
            sink.close()


# How the evaluation metrics read on an axis (the keys are those of compute_metrics and SFT).
METRIC_NAMES = {
    "accuracy": "accuracy", "f1": "F1", "mcc": "Matthews correlation", "pearson": "Pearson r",
    "spearman": "Spearman rank correlation", "roc_auc": "ROC AUC", "loss": "held-out loss",
    "perplexity": "held-out perplexity", "exact_match": "exact match", "ended": "share of answers that end",
    "looping": "share of answers that loop",
}
LOWER_IS_BETTER = ("loss", "perplexity", "looping")


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(records: list[dict[str, Any]], path: Path, metric: str, title: str = "") -> None:
    """curves.png: see `curves_figure`."""
    fig = curves_figure(records, metric, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def curves_figure(records: list[dict[str, Any]], metric: str, title: str = "") -> Any:
    """Training loss (and its moving average) and the evaluation `metric` against the step,
    the best evaluation marked; `title` says what ran (task, method, model)."""
    # The Agg canvas directly: no display needed, matplotlib's global backend left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in records if r.get("kind") == "train" and r.get("loss") is not None]
    steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
    evals = [r for r in records if r.get("kind") == "eval" and r["metrics"].get(metric) is not None]
    name = METRIC_NAMES.get(metric, metric)
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    window = max(1, len(losses) // 20)
    if window > 1:
        left.plot(steps, losses, lw=0.6, alpha=0.35, color="tab:blue", label="per step")
        left.plot(steps, moving_average(losses, window), lw=1.6, color="tab:blue",
                  label=f"moving average of {window} steps")
        left.legend(fontsize=8)
    else:
        left.plot(steps, losses, lw=1.2, color="tab:blue")
    left.set(xlabel="optimizer step", ylabel="training loss", title="training loss")
    left.grid(alpha=0.3)
    if evals:
        x, y = [r["step"] for r in evals], [r["metrics"][metric] for r in evals]
        right.plot(x, y, marker="o", color="tab:orange")
        best = (min if metric in LOWER_IS_BETTER else max)(range(len(y)), key=y.__getitem__)
        right.plot([x[best]], [y[best]], marker="*", ms=14, color="tab:red", ls="none",
                   label=f"best: {y[best]:.4g} at step {x[best]}")
        right.legend(fontsize=8)
    right.set(xlabel="optimizer step", ylabel=f"{name} (evaluation split)", title=f"evaluation: {name}")
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def gate_heatmap(gates: dict[str, Any], path: Path, title: str) -> None:
    """Rank-1 Sum LoRA's gates after training: a row per layer, its |gate| per rank-1 component
    from largest to smallest; blank cells are components pruned away (the layer has fewer)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(gates)
    width = max(len(g) for g in gates.values())
    grid = np.full((len(names), width), np.nan)
    for row, name in enumerate(names):
        values = np.sort(np.abs(np.asarray(gates[name], dtype=float)))[::-1]
        grid[row, : len(values)] = values
    fig = Figure(figsize=(max(5.0, 0.45 * width + 3.0), 1.4 + 0.28 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
    labels = [f"{'.'.join(p for p in n.split('.') if p.isdigit())}.{n.rsplit('.', 1)[-1]} (r={len(gates[n])})"
              for n in names]
    ax.set_yticks(range(len(names)), labels, fontsize=7)
    ax.set_xticks(range(width), [str(i + 1) for i in range(width)], fontsize=7)
    ax.set_xlabel("rank-1 component, by |gate| (blank: pruned)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="|gate|")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
