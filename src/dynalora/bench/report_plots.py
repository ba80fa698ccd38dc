"""The protocol report's figures. dots.png: every seed's dev score per task and arm, so a reader
sees the spread, not just a mean; paired.png: each arm minus the reference with its 95% interval,
so a reader sees at a glance which differences exclude 0."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from dynalora.analysis.plots import save_figure
from dynalora.bench.report_runs import dev_points


def point_step(low: float, high: float) -> float:
    """Minor tick spacing: 1 point, or coarser when the axis spans more than 40 points."""
    for step in (1.0, 2.0, 5.0, 10.0):
        if (high - low) / step <= 40:
            return step
    return 20.0


def axis_range(values: list[float], line: float | None) -> tuple[float, float, bool]:
    """A panel's y-range and whether the majority line is drawn in it. A line far below the
    seeds (STS-B's 0 under scores of 86) would flatten them into one row, so it is only drawn
    when it lies within max(10, twice the seeds' spread) of them; otherwise it is named in the
    legend instead."""
    low, high = min(values), max(values)
    on_axis = line is not None and (0.0 if low <= line <= high else min(abs(line - low), abs(line - high))) \
        <= max(10.0, 2 * (high - low))
    if on_axis and line is not None:
        low, high = min(low, line), max(high, line)
    pad = max(1.0, 0.08 * (high - low))
    return low - pad, high + pad, on_axis


def dot_plot(runs: list[dict[str, Any]], tasks: list[str], arms: list[str], metric_names: dict[str, str],
             majority: dict[str, float | None], path: Path) -> Path:
    """One panel per task: a dot per seed, a bar at each arm's mean (only the arms with runs on
    the task), the majority-class line (`majority[task]`, in points; None: no line)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MultipleLocator

    cols = min(3, max(1, len(tasks)))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        values_seen, shown = [], []
        for arm in arms:
            mine = sorted((r for r in runs if r["task"] == task and r["arm"] == arm), key=lambda r: r["seed"])
            ys = [dev_points(r) for r in mine]  # as the tables count them (an undefined score: 0)
            if not ys:
                continue
            x = len(shown)
            shown.append(arm)
            values_seen += ys
            offsets = np.linspace(-0.15, 0.15, len(ys)) if len(ys) > 1 else [0.0]
            ax.scatter(x + np.asarray(offsets), ys, s=18, color="tab:blue", zorder=3)
            ax.hlines(statistics.fmean(ys), x - 0.3, x + 0.3, color="black", linewidth=1.5, zorder=4)
        line = majority.get(task)
        if values_seen:
            low, high, on_axis = axis_range(values_seen, line)
            ax.set_ylim(low, high)
            ax.yaxis.set_minor_locator(MultipleLocator(point_step(low, high)))
            ax.grid(axis="y", which="minor", color="0.9", linewidth=0.6)
            ax.grid(axis="y", which="major", color="0.75", linewidth=0.8)
            if line is not None and on_axis:
                ax.axhline(line, color="tab:red", linestyle="--", linewidth=1, label="majority class")
                ax.legend(fontsize=7, loc="best")
            elif line is not None:
                off = Line2D([], [], color="tab:red", linestyle="--", linewidth=1)
                ax.legend([off], [f"majority class {line:.1f} (off the axis)"], fontsize=7, loc="best")
        ax.set_xticks(range(len(shown)), shown, rotation=40, ha="right", fontsize=8)
        ax.set_xlim(-0.6, max(len(shown), 1) - 0.4)
        ax.set_title(f"{task}: dev {metric_names[task]}", fontsize=9)
        ax.set_ylabel("dev GLUE score x100 (dot = seed, bar = mean)", fontsize=8)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle("Every seed per task and arm (checkpoint chosen on the selection split; grid lines every "
                 "1 point where the range allows)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def panel_grid(n_panels: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Rows and columns for `n_panels` filled row by row (two columns past three panels), and
    the lowest panel in use of each column, (row, column): the one that carries the x-axis."""
    cols = 1 if n_panels <= 3 else 2
    rows = math.ceil(n_panels / cols)
    return rows, cols, [((n_panels - 1 - col) // cols, col) for col in range(min(cols, n_panels))]


def paired_plot(results: list[tuple], reference: str, path: Path) -> Path:
    """One panel per arm: its mean difference from its reference (points) per task and on
    average, with the 95% t-interval where there is one (n >= 3) and a line at 0. An item is
    (arm, task, Paired) against `reference`, or (arm, task, Paired, its own reference); one
    figure holds one kind per arm. One x-axis for all, so panels compare at a glance."""
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(item[0] for item in results))
    against = {item[0]: (item[3] if len(item) > 3 else reference) for item in results}
    rows, cols, bottoms = panel_grid(len(arms))
    most_items = max(sum(1 for item in results if item[0] == arm) for arm in arms)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, rows * (0.9 + 0.42 * most_items)), squeeze=False,
                             sharex=True)
    for ax, arm in zip(axes.flat, arms):
        mine = [(task, p) for a, task, p, *_ in results if a == arm and p.n > 0]
        ys = list(range(len(mine)))[::-1]
        for y, (task, p) in zip(ys, mine):
            has_interval = not math.isnan(p.low)
            color = "black" if task.startswith("average") else "tab:blue"
            if has_interval:
                ax.hlines(y, p.low, p.high, color=color, linewidth=1.5)
            ax.plot([p.mean], [y], "o", color=color,
                    markerfacecolor=color if has_interval else "white", zorder=3)
        ax.axvline(0.0, color="tab:red", linestyle="--", linewidth=1)
        ax.set_yticks(ys, [f"{task} (n={p.n})" for task, p in mine], fontsize=8)
        ax.set_ylim(-0.7, len(mine) - 0.3)
        ax.grid(axis="x", color="0.85", linewidth=0.6)
        ax.set_title(f"{arm} − {against[arm]}", fontsize=9)
    for ax in list(axes.flat)[len(arms):]:
        ax.axis("off")
    for row, col in bottoms:
        bottom = axes[row, col]
        bottom.xaxis.set_tick_params(labelbottom=True)
        bottom.set_xlabel("dev GLUE points, paired over seeds (bar: 95% t-interval; open dot: n < 3, "
                          "no interval)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
