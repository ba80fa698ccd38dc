"""PNG figures for the analyses (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from dynalora.files import atomic_path


def short_layer(name: str) -> str:
    """`bert.encoder.layer.3.attention.self.query` -> `3.query`: enough to tell layers apart."""
    parts = name.split(".")
    index = next((p for p in parts if p.isdigit()), "")
    return f"{index}.{parts[-1]}" if index else parts[-1]


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def phi_heatmaps(grids: dict[str, np.ndarray], path: str | Path, title: str, max_layers: int = 12) -> Path:
    """One phi(i, j) heatmap per layer (rows i of adapter 1, columns j of adapter 2).

    Constrained layout keeps each panel's title clear of the tick labels of the panel above;
    the axis names are written once (left column, bottom row) instead of on every panel.
    """
    names = list(grids)[:max_layers]
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols + 1.2, 3.0 * rows + 0.6), squeeze=False,
                             layout="constrained")
    for k, (ax, name) in enumerate(zip(axes.flat, names)):
        grid = grids[name]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="upper", aspect="auto",
                       extent=(0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5))
        ax.set_title(f"layer {short_layer(name).replace('.', ': ', 1)}", fontsize=9)
        if k % cols == 0:
            ax.set_ylabel("i (adapter 1)", fontsize=8)
        if k >= len(names) - cols:
            ax.set_xlabel("j (adapter 2)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="phi (subspace similarity)")
    fig.suptitle(title)
    return save_figure(fig, path)


def amplification_bars(rows: list[dict], path: str | Path, title: str) -> Path:
    """Amplification per layer: along Delta W's own directions vs random directions (log scale)."""
    names = [short_layer(r["layer"]) for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 3.6))
    ax.bar(x - 0.2, [r["amplification"] for r in rows], 0.4, label="||dW|| / ||U^T W0 V|| (dW's directions)")
    ax.bar(x + 0.2, [r["amplification_random"] for r in rows], 0.4, label="same, random directions")
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=70, fontsize=8)
    ax.set_ylabel("amplification")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def rank_heatmap(steps: list[int], layers: list[str], ranks: np.ndarray, path: str | Path,
                 title: str = "rank per layer over training") -> Path:
    """ranks: len(layers) x len(steps)."""
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.25 * len(layers))))
    im = ax.imshow(ranks, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(layers)), [short_layer(n) for n in layers], fontsize=7)
    ticks = np.linspace(0, len(steps) - 1, min(8, len(steps))).astype(int)
    ax.set_xticks(ticks, [str(steps[t]) for t in ticks])
    ax.set_xlabel("optimizer step")
    fig.colorbar(im, ax=ax, label="rank")
    ax.set_title(title)
    return save_figure(fig, path)


def trajectories(steps: list[int], series: dict[str, list[float]], path: str | Path, ylabel: str,
                 title: str) -> Path:
    """One line per layer (e.g. importance or allocation weight over training)."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for name, values in series.items():
        ax.plot(steps[: len(values)], values, lw=1, label=short_layer(name))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) <= 24:
        ax.legend(fontsize=6, ncol=4)
    return save_figure(fig, path)


def curves(series: dict[str, tuple[list[float], list[float]]], path: str | Path, xlabel: str,
           ylabel: str, title: str) -> Path:
    """Named (x, y) curves on one axis, e.g. training loss per method."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, lw=1.2, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
