"""Bench figures: loss curves per method, the main metric per task, and rank allocation over training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dynalora.analysis.plots import curves, rank_heatmap, save_figure
from dynalora.bench.profiles import run_dir
from dynalora.bench.summary import table1_rows
from dynalora.training.report import METRIC_NAMES


def read_log(folder: Path) -> list[dict[str, Any]]:
    path = folder / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def smoothed_loss(records: list[dict[str, Any]], window: int) -> tuple[list[int], list[float]]:
    steps = [r["step"] for r in records if r.get("kind") == "train"]
    losses = np.array([r["loss"] for r in records if r.get("kind") == "train"], dtype=float)
    if len(losses) == 0:
        return [], []
    kernel = np.ones(min(window, len(losses))) / min(window, len(losses))
    smooth = np.convolve(losses, kernel, mode="valid")
    return steps[len(steps) - len(smooth):], smooth.tolist()


def loss_plots(results: list[dict[str, Any]], methods: list[str], output: Path) -> None:
    """loss_<task>.png: the training loss of each method (first seed), moving average over 10 steps."""
    for task in dict.fromkeys(r["task"] for r in results):
        series = {}
        for method in methods:
            mine = sorted((r for r in results if r["task"] == task and r["method"] == method), key=lambda r: r["seed"])
            if mine:
                x, y = smoothed_loss(read_log(run_dir(output, task, method, mine[0]["seed"])), 10)
                if x:
                    series[method] = (x, y)
        if series:
            curves(series, output / f"loss_{task}.png", "optimizer step", "training loss (moving average of 10)",
                   f"{task}: training loss (seed {min(r['seed'] for r in results)})")


def majority_scores(results: list[dict[str, Any]]) -> dict[str, float]:
    """Per task, the main metric of always predicting the most common evaluation label, on the
    examples the runs were evaluated on (tasks whose data cannot be read again are left out)."""
    from dynalora.data import DataError, get_task, load_split
    from dynalora.training.metrics import compute_metrics

    scores = {}
    for r in {r["task"]: r for r in results}.values():
        spec, settings = get_task(r["task"]), r.get("spec", {}).get("train", {})
        if spec.is_regression or not settings.get("data_dir"):
            continue
        try:
            examples = load_split(spec, "dev", settings["data_dir"], settings.get("max_eval_samples"),
                                  settings.get("seed", 0))
        except (DataError, OSError):
            continue
        labels = np.array([e.label for e in examples])
        logits = np.zeros((len(labels), spec.num_labels))
        logits[:, np.bincount(labels).argmax()] = 1.0
        scores[r["task"]] = compute_metrics(spec, logits, labels)["main"]
    return scores


def quality_plot(results: list[dict[str, Any]], methods: list[str], output: Path) -> None:
    """quality.png: see `quality_figure`."""
    save_figure(quality_figure(results, methods, majority_scores(results)), output / "quality.png")


def quality_figure(results: list[dict[str, Any]], methods: list[str], majority: dict[str, float]) -> Any:
    """Per task, each method's GLUE metric (mean, std over seeds as a bar) on an
    axis zoomed to the results, gridded every point, with the majority-class score marked:
    a bar chart from 0 hides one-point differences and what "no better than guessing" is."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in table1_rows(results, methods) if r["task"] != "average"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 0.42 * len(methods) + 1.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = {r["method"]: r for r in rows if r["task"] == task}
        shown = [m for m in methods if m in mine]
        y = np.arange(len(shown))[::-1]
        means = np.array([100 * mine[m]["main"] for m in shown])
        stds = np.nan_to_num(np.array([100 * mine[m]["main_std"] for m in shown]))
        ax.errorbar(means, y, xerr=stds, fmt="o", color="tab:blue", ecolor="tab:gray", capsize=3)
        for yi, mean in zip(y, means):
            ax.annotate(f"{mean:.1f}", (mean, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ends = [*(means - stds), *(means + stds)]
        if task in majority:
            base = 100 * majority[task]
            ax.axvline(base, color="tab:red", ls="--", lw=1)
            ax.text(base, 0.99, f" majority class {base:.1f} ", transform=ax.get_xaxis_transform(), rotation=90,
                    va="top", ha="right", fontsize=7, color="tab:red")
            ends.append(base)
        ax.set_xlim(min(ends) - 1, max(ends) + 1)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=12, steps=[1, 2, 5, 10], integer=True))
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks(y, shown)
        seeds = min(mine[m]["seeds"] for m in shown)
        metric = METRIC_NAMES.get(mine[shown[0]]["glue_metric"], mine[shown[0]]["glue_metric"])
        ax.set_title(f"{task}: {metric} (dev, mean ± std over {seeds} seeds)", fontsize=9)
        ax.set_xlabel(f"{metric} (%)")
    fig.tight_layout()
    return fig


def allocation_plots(results: list[dict[str, Any]], output: Path) -> None:
    """Per task, the first seed's rank allocation: the controller's own figure for dynamic / rank1,
    a rank heatmap for PEFT AdaLoRA (from the hook's adalora_ranks.json)."""
    firsts: dict[tuple[str, str], dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        firsts.setdefault((r["task"], r["method"]), r)
    for (task, method), r in firsts.items():
        folder = run_dir(output, task, method, r["seed"])
        if (folder / "allocation.png").is_file():
            shutil.copyfile(folder / "allocation.png", output / f"allocation_{task}_{method}.png")
        ranks_file = folder / "adalora_ranks.json"
        if ranks_file.is_file():
            history = json.loads(ranks_file.read_text())["history"]
            if history:
                layers = list(history[0]["ranks"])
                grid = np.array([[h["ranks"][n] for h in history] for n in layers])
                rank_heatmap([h["step"] for h in history], layers, grid,
                             output / f"allocation_{task}_{method}.png", f"{task}: PEFT AdaLoRA live rank per layer")


def write_plots(results: list[dict[str, Any]], methods: list[str], output: Path) -> None:
    loss_plots(results, methods, output)
    quality_plot(results, methods, output)
    allocation_plots(results, output)
