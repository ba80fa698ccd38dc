"""How much of its rank an adapter uses: the singular values of each layer's Delta W.

A layer trained at rank r has at most r non-zero singular values s_1 >= ... >= s_r. Their
energy shares p_i = s_i^2 / sum s^2 say how the update spreads over its directions:
  effective rank   exp(-sum p_i log p_i): 1 when one direction holds everything, r when all
                   hold the same. With energy shares this is Roy & Vetterli's effective rank
                   of Delta W Delta W^T; theirs of Delta W itself (shares s_i / sum s) reads
                   higher on a decaying spectrum (1, .5, .25, ...: 3.9 against 2.1 here);
  top-k energy     p_1 + ... + p_k;
  rank for 90%     the fewest directions holding 90% of the energy.
A budget binds when layers use their whole rank; on MiniLM's GLUE runs, LoRA at r=8 puts 90%
of each update's energy in fewer than 8 directions (docs/results/dynamic_v2/NOTES.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from dynalora.analysis.factors import LayerFactors

SPECTRUM_COLUMNS = ["layer", "r", "effective_rank", "top1_energy", "top2_energy", "rank_for_90"]


def spectrum(delta: torch.Tensor, r: int) -> dict[str, float | int]:
    """Effective rank, top-1 / top-2 energy share and the rank holding 90% of the energy of a
    rank-`r` update (all 0 for a zero update)."""
    values = torch.linalg.svdvals(delta.double())[: max(r, 0)]
    energy = values.square()
    total = float(energy.sum())
    if r <= 0 or total == 0.0:
        return {"r": r, "effective_rank": 0.0, "top1_energy": 0.0, "top2_energy": 0.0, "rank_for_90": 0}
    share = energy / total
    entropy = -float((share * torch.log(share.clamp_min(1e-300))).sum())
    cumulative = torch.cumsum(share, 0)
    return {"r": r, "effective_rank": math.exp(entropy), "top1_energy": float(share[0]),
            "top2_energy": float(cumulative[min(1, len(share) - 1)]),
            "rank_for_90": int((cumulative < 0.9 - 1e-12).sum()) + 1}


def spectrum_rows(layers: dict[str, LayerFactors]) -> list[dict]:
    return [{"layer": name, **spectrum(f.delta, f.r)} for name, f in layers.items()]


def rank_use_by_type(layers: dict[str, LayerFactors]) -> dict[str, dict[str, float]]:
    """Per module type (attention.self.query, intermediate.dense, ...): the number of layers
    and the mean over them of each SPECTRUM_COLUMNS figure (rank, effective rank, top-1 and
    top-2 energy share, rank holding 90% of the energy)."""
    from dynalora.allocation.plot import module_type

    groups: dict[str, list[dict]] = {}
    for row in spectrum_rows(layers):
        groups.setdefault(module_type(row["layer"]), []).append(row)
    def mean(rows: list[dict], key: str) -> float:
        return round(sum(r[key] for r in rows) / len(rows), 3)

    return {kind: {"layers": len(rows), **{key: mean(rows, key) for key in SPECTRUM_COLUMNS[1:]}}
            for kind, rows in sorted(groups.items())}


def rank_use_table(groups: dict[tuple[str, str], list[dict[str, Any]]],
                   cell: Callable[[list[dict[str, Any]]], str]) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, module types): a row per (arm, task) of `groups` (each a list of rank-use dicts,
    module type -> figures), its cell for a module type `cell` of the runs that have it."""
    kinds = sorted({k for uses in groups.values() for u in uses for k in u})
    rows = []
    for (arm, task), uses in groups.items():
        row: dict[str, Any] = {"arm": arm, "task": task, "runs": len(uses)}
        for kind in kinds:
            mine = [u[kind] for u in uses if kind in u]
            row[kind] = cell(mine) if mine else "–"
        rows.append(row)
    return rows, kinds
