"""Plots of an allocation history, readable for 12 layers or 200: heatmaps, not line tangles.

    ranks    layers x reallocation steps (each layer named, e.g. "3.value")
    weights  layers x reallocation steps (dynamic LoRA), diverging around 1
    blocks   final rank as block index x module type (when names carry block indices and
             there are several module types: the view that reads for LLMs)
"""

from __future__ import annotations

import os
import re
from typing import Any

from dynalora.files import atomic_path

MAX_TICK_LABELS = 60


def module_type(name: str) -> str:
    """The module's path inside its block: 'bert.encoder.layer.3.attention.output.dense' ->
    'attention.output.dense' (BERT has three kinds of 'dense'); without a block index, the leaf."""
    found = list(re.finditer(r"\.(\d+)\.", name))
    return name[found[-1].end():] if found else name.rsplit(".", 1)[-1]


def short_layer_name(name: str) -> str:
    """'bert.encoder.layer.3.attention.self.query' -> '3.query' (block index + leaf)."""
    index = re.findall(r"\.(\d+)\.", name)
    leaf = name.rsplit(".", 1)[-1]
    return f"{index[-1]}.{leaf}" if index else leaf


def layer_label(name: str) -> str:
    """'bert.encoder.layer.3.attention.output.dense' -> '3.attention.output.dense' (block +
    module type): unambiguous where leaves repeat (BERT's three 'dense' per block)."""
    index = re.findall(r"\.(\d+)\.", name)
    return f"{index[-1]}.{module_type(name)}" if index else module_type(name)


def _per_layer(value: Any, names: list[str]) -> list[float]:
    """A record's per-layer values in `names` order (dicts by name; older records: lists)."""
    if isinstance(value, dict):
        return [float(value.get(n, float("nan"))) for n in names]
    return [float(v) for v in value]


def block_grid(ranks: dict[str, int]) -> tuple[list[int], list[str], list[list[float]]] | None:
    """(block indices, module types, rank[block][type]) or None when there is no such grid."""
    cells: dict[tuple[int, str], int] = {}
    for name, r in ranks.items():
        found = re.findall(r"\.(\d+)\.", name)
        if not found:
            return None
        cells[(int(found[-1]), module_type(name))] = r
    blocks = sorted({b for b, _ in cells})
    kinds = sorted({k for _, k in cells})
    if len(kinds) < 2 or len(blocks) < 2:
        return None
    return blocks, kinds, [[float(cells.get((b, k), float("nan"))) for k in kinds] for b in blocks]


def _heatmap(fig: Any, slot: Any, rows: list[list[float]], names: list[str], steps: list[int], title: str,
             label: str, cmap: str, center: float | None = None) -> None:
    ax = fig.add_subplot(slot)
    kwargs: dict[str, Any] = {}
    if center is not None:
        from matplotlib.colors import TwoSlopeNorm

        flat = [v for row in rows for v in row if v == v]  # NaN-free
        kwargs["norm"] = TwoSlopeNorm(vcenter=center, vmin=min([*flat, center - 1e-6]),
                                      vmax=max([*flat, center + 1e-6]))
    image = ax.imshow(rows, aspect="auto", interpolation="nearest", cmap=cmap, **kwargs)
    every = max(1, -(-len(names) // MAX_TICK_LABELS))
    ax.set_yticks(range(0, len(names), every), [layer_label(n) for n in names][::every],
                  fontsize=max(4, min(8, 400 // max(len(names), 1))))
    ticks = list(range(0, len(steps), max(1, len(steps) // 12)))
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
    ax.set_xlabel("optimizer step (reallocation)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=label)


def plot_history(history: list[dict[str, Any]], names: list[str], path: str | os.PathLike,
                 title: str | None = None) -> None:
    """PNG of the history (see the module doc). Uses the Agg canvas directly, so it neither
    needs a display nor changes matplotlib's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("nothing to plot: no reallocation has happened yet")
    steps = [h["step"] for h in history]
    ranks = [[float(h["ranks"][n]) for h in history] for n in names]
    panels: list[tuple[str, Any]] = [("ranks", ranks)]
    if all("weights" in h for h in history):
        columns = [_per_layer(h["weights"], names) for h in history]
        panels.append(("weights", [[col[i] for col in columns] for i in range(len(names))]))
    grid = block_grid(history[-1]["ranks"])
    layer_height = max(2.4, 0.14 * len(names))
    heights = [layer_height] * len(panels) + ([max(2.4, 0.3 * len(grid[0]))] if grid else [])
    fig = Figure(figsize=(11, 1.0 + sum(heights)))
    FigureCanvasAgg(fig)
    slots = fig.add_gridspec(len(heights), 1, height_ratios=heights)
    _heatmap(fig, slots[0], ranks, names, steps, title or "rank per layer", "rank", "viridis")
    if len(panels) > 1:
        _heatmap(fig, slots[1], panels[1][1], names, steps, "allocation weight per layer", "weight", "coolwarm",
                 center=1.0)
    if grid:
        blocks, kinds, cells = grid
        ax = fig.add_subplot(slots[len(panels)])
        image = ax.imshow(cells, aspect="auto", interpolation="nearest", cmap="viridis")
        ax.set_xticks(range(len(kinds)), kinds, fontsize=7, rotation=20, ha="right")
        every = max(1, -(-len(blocks) // MAX_TICK_LABELS))
        ax.set_yticks(range(0, len(blocks), every), [str(b) for b in blocks][::every], fontsize=7)
        ax.set_ylabel("block")
        ax.set_title(f"final rank by block and module type (step {steps[-1]})", fontsize=9)
        fig.colorbar(image, ax=ax, label="rank")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
