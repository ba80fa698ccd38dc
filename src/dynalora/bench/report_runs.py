"""The report's tables of how the counted runs went: convergence (did the epoch cap bind?),
parameter budget, where the rank-changing arms put their ranks, and how much of its rank each
arm's updates use (each takes the counted runs of dynalora.bench.report); and, from all
records, how a configuration scored at each lr it ran at on the same seeds."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from typing import Any

from dynalora.analysis.spectrum import rank_use_table
from dynalora.bench.records import KEY_FIELDS, lr_text


def stopped_early(record: dict[str, Any]) -> bool:
    """Patience ran out before the epoch cap (records before the fix also called a run stopped
    when patience ran out at the very last evaluation)."""
    cap = (record.get("settings") or {}).get("epochs", math.inf)
    return bool(record["stopped_early"]) and record["epochs_run"] < cap - 1e-6


def convergence_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["task"], r["arm"])].append(r)
    rows = []
    for (task, arm), mine in groups.items():
        peaked_last = sum(1 for r in mine if r["curve"] and r["best_epoch"] >= r["curve"][-1][0] - 1e-6)
        rows.append({"task": task, "arm": arm, "runs": len(mine),
                     "epochs run (mean)": f"{statistics.fmean(r['epochs_run'] for r in mine):.1f}",
                     "best epoch (mean)": f"{statistics.fmean(r['best_epoch'] for r in mine):.1f}",
                     "stopped early": sum(stopped_early(r) for r in mine),
                     "best at last evaluation": peaked_last,
                     "run time s (mean)": f"{statistics.fmean(r['run_wall_s'] for r in mine):.0f}"})
    return rows


def budget_rows(runs: list[dict[str, Any]], arms: list[str]) -> list[dict[str, Any]]:
    rows = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:  # e.g. its lr grid is not complete yet
            continue
        ratios = [r["budget_vs_lora"] for r in mine if r.get("budget_vs_lora") is not None]
        adapters = [r["adapter_params"] for r in mine if r.get("adapter_params") is not None]
        rows.append({"arm": arm, "trainable params (median)": int(statistics.median(r["trainable_params"] for r in mine)),
                     "final adapter params (mean)": f"{statistics.fmean(adapters):.0f}" if adapters else "–",
                     "vs uniform LoRA (mean, min-max)": f"{statistics.fmean(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
                     if ratios else "–",
                     # a pooled mean can hide a task where the arm ends under or over budget
                     "vs uniform LoRA by task (mean)": _by_task(mine)})
    return rows


def _by_task(runs: list[dict[str, Any]]) -> str:
    ratios = defaultdict(list)
    for r in runs:
        if r.get("budget_vs_lora") is not None:
            ratios[r["task"]].append(r["budget_vs_lora"])
    return ", ".join(f"{task} {statistics.fmean(ratios[task]):.3f}" for task in sorted(ratios)) or "–"


def allocation_rows(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Where the rank-changing arms put their budget, per task: the final mean rank of each
    module type (a rank costs d_in + d_out parameters, so an FFN rank costs more than an
    attention one), layer resizes, rank reversals per layer (records that carry them) and
    the weights' range. Returns the rows and the module-type columns."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if (r.get("allocation") or {}).get("ranks_by_type"):
            groups[(r["arm"], r["task"])].append(r["allocation"])
    kinds = sorted({k for allocations in groups.values() for a in allocations for k in a["ranks_by_type"]})
    rows = []
    for (arm, task), allocations in groups.items():
        row: dict[str, Any] = {"arm": arm, "task": task, "runs": len(allocations)}
        for kind in kinds:
            means = [a["ranks_by_type"][kind]["mean"] for a in allocations if kind in a["ranks_by_type"]]
            row[kind] = f"{statistics.fmean(means):.1f}" if means else "–"
        row["resizes (mean)"] = f"{statistics.fmean(a.get('resizes', 0) for a in allocations):.0f}"
        turns = [a["reversals"]["mean_per_layer"] for a in allocations if "reversals" in a]
        row["reversals per layer"] = f"{statistics.fmean(turns):.2f} (n={len(turns)})" if turns else "–"
        low = [a["weight_min"] for a in allocations if "weight_min" in a]
        high = [a["weight_max"] for a in allocations if "weight_max" in a]
        row["weights (min-max)"] = f"{min(low):.2f}-{max(high):.2f}" if low and high else "–"
        rows.append(row)
    return rows, kinds


def rank_use_rows(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """How much of its rank each arm's chosen adapters use, per task and module type: mean
    effective rank / mean rank (records that carry `rank_use`, see dynalora.analysis.spectrum)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if r.get("rank_use") and "error" not in r["rank_use"]:
            groups[(r["arm"], r["task"])].append(r["rank_use"])
    return rank_use_table(groups, lambda mine: f"{statistics.fmean(m['effective_rank'] for m in mine):.1f} / "
                                               f"{statistics.fmean(m['r'] for m in mine):.1f}")


def dev_points(record: dict[str, Any]) -> float:
    """The run's dev GLUE score x100; an undefined one (a correlation of constant predictions,
    NaN) counts as 0, the score the majority line gives a regression task."""
    value = record["dev"]["glue"]
    return 100 * value if value is not None and math.isfinite(value) else 0.0


def configuration(record: dict[str, Any]) -> str:
    """What a run trained, without its task, seed and lr (a missing options dict is the empty one)."""
    values = [record.get(k) or ({} if k in ("method_options", "settings") else None)
              for k in KEY_FIELDS if k not in ("task", "seed", "lr")]
    return json.dumps(values, sort_keys=True)


def lr_sensitivity_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where one configuration ran at two or more lrs on the same task and seeds (an arm's grid
    lr beside a variant trained at another arm's lr), the mean selection and dev scores per lr
    over those seeds, and the lr the selection split prefers: whether a choice made on that
    task's own selection split would have matched the protocol's (MRPC seed 0).

    The lrs compared are those with at least two seeds, taken from the best-covered down, as
    long as they still share two seeds; a run without a finite selection score is left out."""
    groups: dict[tuple[str, str], dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r.get("selection_score") is not None and math.isfinite(r["selection_score"]):
            groups[(r["task"], configuration(r))][lr_text(r["lr"])][r["seed"]] = r
    rows = []
    for (task, _), by_lr in groups.items():
        multi_seed = sorted((lr for lr in by_lr if len(by_lr[lr]) >= 2), key=lambda lr: (-len(by_lr[lr]), float(lr)))
        kept, common = multi_seed[:1], set(by_lr[multi_seed[0]]) if multi_seed else set()
        for lr in multi_seed[1:]:
            if len(common & set(by_lr[lr])) >= 2:
                kept, common = [*kept, lr], common & set(by_lr[lr])
        if len(kept) < 2:
            continue
        seeds = sorted(common)
        scores = {lr: [100 * by_lr[lr][s]["selection_score"] for s in seeds] for lr in kept}
        means = {lr: round(statistics.fmean(v), 2) for lr, v in scores.items()}
        tied = sum(1 for m in means.values() if m == max(means.values())) > 1
        for lr in sorted(kept, key=float):
            best_on = sum(all(scores[lr][k] > scores[other][k] for other in kept if other != lr)
                          for k in range(len(seeds)))
            rows.append({"task": task, "arms": ", ".join(sorted({by_lr[lr][s]["arm"] for s in seeds})), "lr": lr,
                         "seeds": ",".join(str(s) for s in seeds), "selection (mean)": f"{means[lr]:.2f}",
                         "seeds where it is best": best_on,
                         "dev (mean)": f"{statistics.fmean(dev_points(by_lr[lr][s]) for s in seeds):.2f}",
                         "selection picks": ("yes (tie)" if tied else "yes") if means[lr] == max(means.values()) else ""})
    return rows
