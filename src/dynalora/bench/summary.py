"""From per-run results to the paper's Table 1 (quality) and Table 2 (cost), mean ± std over seeds."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from dynalora.analysis.tables import fmt, write_table
from dynalora.data import get_task

QUALITY = ("accuracy", "roc_auc", "f1", "recall")
COST = ("train_seconds", "latency_b1_ms", "latency_b32_ms", "trainable_share_pct", "peak_rss_mb",
        "peak_rss_delta_mb", "peak_gpu_mb")


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def pm(mean: float, std: float, digits: int = 4) -> str:
    """'0.8123 ± 0.0100' (or just the mean with one seed)."""
    if math.isnan(mean):
        return "–"
    return fmt(mean, digits) if math.isnan(std) else f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def group(results: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["task"], r["method"])].append(r)
    return groups


def table1_rows(results: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Rows (task, method) and (average, method); each metric as mean and std over seeds."""
    groups = group(results)
    tasks = list(dict.fromkeys(r["task"] for r in results))
    rows = []
    for task in tasks:
        glue_name = get_task(task).main_metric
        for method in methods:
            runs = groups.get((task, method))
            if not runs:
                continue
            row = {"task": task, "method": method, "seeds": len(runs), "glue_metric": glue_name}
            for metric in (*QUALITY, "main"):
                row[metric], row[f"{metric}_std"] = mean_std([r["metrics"].get(metric) for r in runs])
            rows.append(row)
    for method in methods:  # the average over tasks of the per-task means
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        avg = {"task": "average", "method": method, "seeds": min(r["seeds"] for r in mine), "glue_metric": "glue"}
        for metric in (*QUALITY, "main"):
            avg[metric], _ = mean_std([r[metric] for r in mine])
            avg[f"{metric}_std"] = float("nan")
        rows.append(avg)
    return rows


def table2_rows(results: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """One row per method, cost figures averaged over tasks and seeds."""
    rows = []
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        row: dict[str, Any] = {"method": method, "runs": len(runs), "merged": runs[0]["cost"].get("merged"),
                               "device": runs[0]["cost"].get("device")}
        for key in COST:
            row[key], row[f"{key}_std"] = mean_std([r["cost"].get(key) for r in runs])
        row["trainable_params"] = runs[0]["cost"].get("trainable_params")
        row["adapter_params"] = runs[0]["cost"].get("adapter_params")
        row["budget_vs_lora"] = runs[0]["cost"].get("budget_vs_lora")
        rows.append(row)
    return rows


def write_tables(results: list[dict[str, Any]], methods: list[str], output: Path) -> str:
    """table1.{csv,md}, table2.{csv,md} in `output`; returns the Markdown of both."""
    t1 = table1_rows(results, methods)
    t2 = table2_rows(results, methods)
    metric_cols = [m for metric in (*QUALITY, "main") for m in (metric, f"{metric}_std")]
    write_table(t1, ["task", "method", "seeds", "glue_metric", *metric_cols], output / "table1")
    write_table(t2, ["method", "runs", "merged", "device", "trainable_params", "adapter_params", "budget_vs_lora",
                     *[c for key in COST for c in (key, f"{key}_std")]], output / "table2")
    shown1 = [{**r, **{m: pm(r[m], r[f"{m}_std"]) for m in (*QUALITY, "main")}} for r in t1]
    md1 = write_table(shown1, ["task", "method", "seeds", "accuracy", "roc_auc", "f1", "recall", "glue_metric", "main"],
                      output / "table1_display", title="Table 1: quality on the dev sets (mean ± std over seeds)")
    shown2 = [{**r, **{k: pm(r[k], r[f"{k}_std"], 1) for k in COST},
               "trainable_share_pct": pm(r["trainable_share_pct"], float("nan"), 3)} for r in t2]
    gpu = ["peak_gpu_mb"] if any(not math.isnan(r["peak_gpu_mb"]) for r in t2) else []  # CUDA runs only
    md2 = write_table(shown2, ["method", "runs", "train_seconds", "latency_b1_ms", "latency_b32_ms", "merged",
                               "device", "trainable_params", "trainable_share_pct", "adapter_params", "budget_vs_lora",
                               "peak_rss_mb", "peak_rss_delta_mb", *gpu],
                      output / "table2_display", title="Table 2: cost (mean ± std over tasks and seeds)")
    return md1 + "\n" + md2
