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


def quality_plot(results: list[dict[str, Any]], methods: list[str], output: Path) -> None:
    """quality.png: each task's GLUE metric per method, mean with std over seeds as error bars."""
    import matplotlib.pyplot as plt

    rows = [r for r in table1_rows(results, methods) if r["task"] != "average"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks) * len(methods) / 4), 4))
    for k, method in enumerate(methods):
        mine = {r["task"]: r for r in rows if r["method"] == method}
        x = np.arange(len(tasks)) + (k - (len(methods) - 1) / 2) * width
        means = [mine[t]["main"] if t in mine else np.nan for t in tasks]
        stds = [mine[t]["main_std"] if t in mine else np.nan for t in tasks]
        ax.bar(x, means, width, yerr=np.nan_to_num(stds), label=method, capsize=2)
    ax.set_xticks(np.arange(len(tasks)), [f"{t} ({rows[[r['task'] for r in rows].index(t)]['glue_metric']})" for t in tasks])
    ax.set_ylabel("dev metric")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("GLUE metric per task (mean ± std over seeds)")
    save_figure(fig, output / "quality.png")


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
