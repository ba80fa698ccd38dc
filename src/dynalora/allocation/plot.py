"""Plots of an allocation history: rank per layer over training, importance and weights."""

from __future__ import annotations

import os
import re
from typing import Any

from dynalora.files import atomic_path


def short_layer_name(name: str) -> str:
    """'bert.encoder.layer.3.attention.self.query' -> '3.query' (index + module)."""
    index = re.findall(r"\.(\d+)\.", name)
    leaf = name.rsplit(".", 1)[-1]
    return f"{index[-1]}.{leaf}" if index else leaf


def plot_history(history: list[dict[str, Any]], names: list[str], path: str | os.PathLike,
                 title: str | None = None) -> None:
    """PNG with a rank heatmap (layers x reallocation steps) and, when recorded, the
    importance and allocation-weight trajectories. Uses the Agg canvas directly, so it
    neither needs a display nor changes matplotlib's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("nothing to plot: no reallocation has happened yet")
    steps = [h["step"] for h in history]
    ranks = [[h["ranks"][n] for h in history] for n in names]
    curves = [key for key in ("importance", "weights") if all(key in h for h in history)]
    fig = Figure(figsize=(11, 3.2 + 0.18 * len(names) + 2.6 * len(curves)))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1 + len(curves), 1, height_ratios=[max(2.0, 0.18 * len(names))] + [2.4] * len(curves))
    ax = fig.add_subplot(grid[0])
    image = ax.imshow(ranks, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_yticks(range(len(names)), [short_layer_name(n) for n in names], fontsize=7)
    ticks = list(range(0, len(steps), max(1, len(steps) // 12)))
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
    ax.set_xlabel("optimizer step")
    ax.set_title(title or "rank per layer")
    fig.colorbar(image, ax=ax, label="rank")
    for row, key in enumerate(curves, start=1):
        axis = fig.add_subplot(grid[row])
        for i, name in enumerate(names):
            axis.plot(steps, [h[key][i] for h in history], label=short_layer_name(name), linewidth=1)
        axis.set_ylabel(key)
        axis.set_xlabel("optimizer step")
        if len(names) <= 16:
            axis.legend(fontsize=6, ncol=4)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
