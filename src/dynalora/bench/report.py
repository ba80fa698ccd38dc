"""The protocol's report, from runs.jsonl alone: `dynalora bench report`.

Which runs count: for an arm tuned by a grid, the runs at its chosen lr (recomputed from the
grid records, as the bench chose it); for an arm without grid records (ablation variants),
all its runs, except that a variant tuned by another arm's grid (`tuned_by`) counts at that
arm's chosen lr. One run per (task, arm, seed). A run the bench found already recorded under
another arm (the same run: e.g. an ablation variant at LoRA's lr, whose seed-0 MRPC run is
dynamic's grid run at that lr) counts for both arms, as the bench counts it done for both.
Every figure is the dev GLUE score of the model chosen on the selection split, in points (x100).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from dynalora.analysis.tables import write_table
from dynalora.bench.protocol import (
    GRID_SEED,
    GRID_TASKS,
    MAIN_ARMS,
    choose_lrs,
    expected_grids,
    grid_scores,
    paper_protocol,
)
from dynalora.bench.protocol_runner import progress_table
from dynalora.bench.records import lr_text, read_records, settings_only
from dynalora.bench.report_plots import dot_plot, paired_plot
from dynalora.bench.report_runs import (
    allocation_rows,
    budget_rows,
    convergence_rows,
    dev_points,
    lr_sensitivity_rows,
    rank_use_rows,
)
from dynalora.bench.report_summary import summary_text, write_summary
from dynalora.bench.stats import MIN_T, MIN_WILCOXON, Paired, paired
from dynalora.data import get_task
from dynalora.files import atomic_path

PAIRED_COLUMNS = ["arm", "task", "n", "mean difference", "95% CI", "Wilcoxon p"]
GLUE_METRIC = {"regression": "mean of Pearson and Spearman", "f1": "mean of accuracy and F1", "mcc": "MCC"}


def glue_metric_name(task: str) -> str:
    spec = get_task(task)
    return GLUE_METRIC["regression"] if spec.is_regression else GLUE_METRIC.get(spec.main_metric, "accuracy")


def decided_lrs(records: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each arm's chosen lr: an arm of the paper protocol once its whole grid is recorded (a
    partial grid decides nothing, as in the runner), any other arm from its records alone."""
    grids = expected_grids(paper_protocol(), records)
    expected = {arm: grids[arm] for arm in {r["arm"] for r in records if r.get("stage") == "grid"} if arm in grids}
    chosen = choose_lrs(records, expected)
    chosen.update(choose_lrs([r for r in records if r["arm"] not in expected]))
    return chosen, expected


def borrowed_lrs(records: list[dict[str, Any]]) -> dict[str, str]:
    """arm -> the arm whose chosen lr it trains at, for arms that take another's (ablation
    variants): from their records' `tuned_by`, else from the protocol's definition."""
    arms = paper_protocol().arms
    borrowed = {}
    for r in records:
        other = r.get("tuned_by") or (arms[r["arm"]].tuned_by if r["arm"] in arms else r["arm"])
        if other != r["arm"]:
            borrowed[r["arm"]] = other
    return borrowed


def run_shape(record: dict[str, Any]) -> str:
    """What a run is apart from its task, seed and lr."""
    return json.dumps([record.get(k) for k in ("method", "targets", "method_options", "settings")], sort_keys=True)


def counted_runs(records: list[dict[str, Any]], chosen: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs the tables use (see the module doc): an arm tuned by a grid, its own or another
    arm's, counts at that grid's chosen lr only; the last record wins a duplicate. A run the
    bench found recorded under another arm (same method, targets, options, settings and lr, on a
    task the arm has records of) also counts for this arm, unless the arm has its own record."""
    borrowed = borrowed_lrs(records)
    gridded = {r["arm"] for r in records if r.get("stage") == "grid"}
    lr_of = {arm: chosen[arm]["lr"] for arm in gridded if arm in chosen}
    lr_of.update({arm: chosen[other]["lr"] for arm, other in borrowed.items() if other in chosen})
    waiting = gridded | set(borrowed)  # arms counted only at a chosen lr
    kept: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in records:
        if r["arm"] in waiting and (r["arm"] not in lr_of or lr_text(r["lr"]) != lr_text(lr_of[r["arm"]])):
            continue
        kept[(r["task"], r["arm"], r["seed"])] = r
    for arm in set(borrowed) & set(lr_of):
        own = [r for r in kept.values() if r["arm"] == arm]
        shapes, tasks = {run_shape(r) for r in own}, {r["task"] for r in own}
        for r in records:
            if (r["arm"] != arm and r["task"] in tasks and run_shape(r) in shapes
                    and lr_text(r["lr"]) == lr_text(lr_of[arm])):
                kept.setdefault((r["task"], arm, r["seed"]), {**r, "arm": arm, "shared_with": r["arm"]})
    return list(kept.values())


def config_conflicts(runs: list[dict[str, Any]], arms: list[str]) -> list[dict[str, Any]]:
    """(arm, field, values) wherever an arm's counted runs recorded different values of a method
    config field that all of them recorded (`method_config`; older records lack it)."""
    rows = []
    for arm in arms:
        configs = [settings_only(r["method_config"]) for r in runs
                   if r["arm"] == arm and isinstance(r.get("method_config"), dict)]
        shared = set.intersection(*(set(c) for c in configs)) if configs else set()
        for key in sorted(shared):
            values = sorted({json.dumps(c[key], sort_keys=True) for c in configs})
            if len(values) > 1:
                rows.append({"arm": arm, "field": key, "values": " / ".join(values)})
    return rows


def by_cell(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[int, float]]:
    """(task, arm) -> {seed: dev GLUE score in points}."""
    cells: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for r in runs:
        cells[(r["task"], r["arm"])][r["seed"]] = dev_points(r)
    return cells


def balanced(cells: dict[tuple[str, str], dict[int, float]], arms: tuple[str, ...] = MAIN_ARMS
             ) -> dict[tuple[str, str], dict[int, float]]:
    """Table 1's cells: on each task, the main arms keep only the seeds every one of them has,
    so while a seed is half-way through its arms no arm's mean has a seed the others lack
    (a seed is a draw of data order and head: an extra one moves a mean by itself)."""
    out = dict(cells)
    for task in {t for t, _ in cells}:
        present = [a for a in arms if (task, a) in cells]
        if len(present) < 2:
            continue
        common = set.intersection(*(set(cells[(task, a)]) for a in present))
        for a in present:
            out[(task, a)] = {s: v for s, v in cells[(task, a)].items() if s in common}
    return out


def mean_std_text(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def table1(cells: dict, tasks: list[str], arms: list[str]) -> list[dict[str, Any]]:
    rows = []
    for arm in arms:
        row: dict[str, Any] = {"arm": arm}
        means = []
        for task in tasks:
            values = list(cells.get((task, arm), {}).values())
            row[task] = mean_std_text(values)
            if values:
                means.append(statistics.fmean(values))
        complete = len(means) == len(tasks)
        row["GLUE average"] = "–" if not means else f"{statistics.fmean(means):.2f}" + (
            "" if complete else f" ({len(means)}/{len(tasks)} tasks)")
        rows.append(row)
    return rows


def paired_results(cells: dict, tasks: list[str], arms: list[str], reference: str) -> list[tuple[str, str, Paired]]:
    """(arm, task or "average (k tasks)", paired statistics in points) for every arm but the
    reference, per task it shares with the reference and on average over those tasks."""
    out = []
    for arm in arms:
        if arm == reference:
            continue
        shared_tasks = [t for t in tasks if (t, arm) in cells and (t, reference) in cells]
        per_seed: dict[int, list[float]] = defaultdict(list)
        for task in shared_tasks:
            mine, ref = cells[(task, arm)], cells[(task, reference)]
            seeds = sorted(set(mine) & set(ref))
            out.append((arm, task, paired([mine[s] - ref[s] for s in seeds])))
            for s in seeds:
                per_seed[s].append(mine[s] - ref[s])
        if len(shared_tasks) > 1:  # a seed counts on average only when it has every shared task
            whole = [statistics.fmean(v) for v in per_seed.values() if len(v) == len(shared_tasks)]
            out.append((arm, f"average ({len(shared_tasks)} tasks)", paired(whole)))
    return out


def own_reference_results(cells: dict, tasks: list[str], arms: list[str]) -> list[tuple[str, str, Paired, str]]:
    """paired_results of every arm the protocol pairs with a baseline of its own (Arm.paired_with)
    against that baseline, where both have records; each item carries the baseline's name."""
    defined = paper_protocol().arms
    out = []
    for arm in arms:
        other = defined[arm].paired_with if arm in defined else None
        if other in arms:
            out += [(*item, other) for item in paired_results(cells, tasks, [arm], other)]
    return out


def paired_rows(results: list[tuple]) -> list[dict[str, Any]]:
    """Table rows of paired_results items (arm, task, Paired[, reference])."""
    rows = []
    for arm, task, p, *reference in results:
        row = {"reference": reference[0]} if reference else {}
        rows.append({**row, "arm": arm, "task": task, "n": p.n,
                     "mean difference": "–" if p.n == 0 else f"{p.mean:+.2f}",
                     "95% CI": p.interval_text(scale=1.0), "Wilcoxon p": p.p_text()})
    return rows


def paired_wide_rows(results: list[tuple], tasks: list[str], arms: list[str], reference: str) -> list[dict[str, Any]]:
    """The paired tables at a glance: a row per arm (in the order of `arms`) against its own
    reference where it has one with shared seeds (the low-rank arms against lora-r2), else
    against `reference`; a column per task and the average; each cell "mean [95% CI] (n)" in
    points, without the interval where there are too few seeds for one."""
    rows: dict[str, dict[str, Any]] = {}
    has_own = {item[0] for item in results if len(item) > 3 and item[2].n > 0}
    for arm, task, p, *own_reference in results:
        if p.n == 0 or (arm in has_own and not own_reference):
            continue
        row = rows.setdefault(arm, {"arm": arm, "minus": own_reference[0] if own_reference else reference})
        mean = round(p.mean, 1) + 0.0  # + 0.0: no "-0.0"
        interval = p.interval_text(scale=1.0, digits=1)
        cell = f"{mean:+.1f}" + ("" if p.n < MIN_T else f" {interval}")
        if task.startswith("average"):  # over the tasks the arm shares with its reference
            shared = sum(1 for t in tasks if t in row)
            row["average"] = f"{cell} (n={p.n}{'' if shared == len(tasks) else f', {shared}/{len(tasks)} tasks'})"
        else:
            row[task] = f"{cell} (n={p.n})"
    ordered = sorted(rows.values(), key=lambda row: arms.index(row["arm"]) if row["arm"] in arms else len(arms))
    return [{k: row.get(k, "–") for k in ("arm", "minus", *tasks, "average")} for row in ordered]


def lr_rows(records: list[dict[str, Any]], chosen: dict[str, dict[str, Any]],
            expected: dict[str, tuple[list[float], tuple[str, ...]]]) -> list[dict[str, Any]]:
    """Every grid run's selection score; an arm whose grid is incomplete says how far it got."""
    rows = []
    for arm, by_lr in grid_scores(records).items():
        done = sum(len(v) for v in by_lr.values())
        wanted = len(expected[arm][0]) * len(expected[arm][1]) if arm in expected else done
        for lr, tasks in sorted(by_lr.items()):
            rows.append({"arm": arm, "lr": f"{lr:g}", "chosen": choice_mark(chosen.get(arm), lr, done, wanted),
                         **{task: f"{100 * v:.2f}" for task, v in tasks.items()},
                         "mean": f"{100 * statistics.fmean(tasks.values()):.2f}"})
    return rows


def choice_mark(choice: dict[str, Any] | None, lr: float, done: int, wanted: int) -> str:
    """The lr grid table's `chosen` column: pending, blank, yes, or yes at the grid's end."""
    if choice is None:
        return f"pending ({done} of {wanted} runs)"
    if float(lr) != choice["lr"]:
        return ""
    return "yes (grid end)" if choice.get("at_grid_end") else "yes"


def write_report(records_path: Path, output: Path, reference: str = "lora") -> str:
    """Every table and dots.png into `output`; returns report.md's text."""
    records = read_records(records_path)
    chosen, expected = decided_lrs(records)
    runs = counted_runs(records, chosen)
    tasks = list(dict.fromkeys(r["task"] for r in sorted(runs, key=lambda r: r.get("tier", ""))))
    arms = list(dict.fromkeys(r["arm"] for r in records))  # a shared run's arm has records of its own
    cells = by_cell(runs)
    output.mkdir(parents=True, exist_ok=True)
    metric_note = "; ".join(f"{t}: {glue_metric_name(t)}" for t in tasks)
    parts = [f"# Protocol report\n\nFrom {records_path} ({len(records)} records, {len(runs)} counted). "
             f"Dev GLUE score x100 of the checkpoint chosen on the selection split ({metric_note}).\n"]
    table1_rows = table1(balanced(cells), tasks, arms)
    parts.append(write_table(table1_rows, ["arm", *tasks, "GLUE average"], output / "table1",
                             title="Table 1: dev GLUE score, mean ± std over seeds (the main arms "
                                   f"{', '.join(MAIN_ARMS)}: the seeds all of them have on the task)"))
    wide: list[dict[str, Any]] = []
    if reference in arms:
        note = (f"Each arm minus {reference}, seed by seed, in points; 95% t-interval over paired seeds; "
                f"two-sided Wilcoxon signed-rank p (n < {MIN_WILCOXON}: n too small; at n = 5 the smallest "
                "possible p is 0.0625).\n")
        results = paired_results(cells, tasks, arms, reference)
        parts.append(write_table(paired_rows(results), PAIRED_COLUMNS, output / "paired",
                                 title=f"Paired differences against {reference}") + "\n" + note)
        if any(p.n >= 3 for _, _, p in results):
            paired_plot(results, reference, output / "paired.png")
            parts.append("![paired differences](paired.png)\n")
        own = own_reference_results(cells, tasks, arms)
        wide = paired_wide_rows(results + own, tasks, arms, reference)
        parts.append(write_table(wide, ["arm", "minus", *tasks, "average"],
                                 output / "paired_wide",
                                 title="Paired differences at a glance: arm minus its reference, dev GLUE points, "
                                       "mean [95% t-interval] (paired seeds)"))
        if own:
            parts.append(write_table(paired_rows(own), ["reference", *PAIRED_COLUMNS], output / "paired_own",
                                     title="Paired differences against each arm's own baseline (the low-rank "
                                           "arms against lora-r2, the ablation variants against dynamic:lora-lr)"))
            if any(p.n >= 3 for _, _, p, _ in own):
                paired_plot(own, reference, output / "paired_own.png")
                parts.append("![paired differences against each arm's own baseline](paired_own.png)\n")
        # The grid seed's runs on the grid tasks chose the lr they are reported at (a mild
        # winner's curse): the same table without that seed shows whether it carries a result.
        later = {(task, arm): {s: v for s, v in seeds.items() if s != GRID_SEED or task not in GRID_TASKS}
                 for (task, arm), seeds in cells.items()}
        parts.append(write_table(paired_rows(paired_results(later, tasks, arms, reference)), PAIRED_COLUMNS,
                                 output / "paired_without_grid_seed",
                                 title=f"Paired differences against {reference}, seed {GRID_SEED} left out on "
                                       f"the grid's tasks ({', '.join(GRID_TASKS)}: its runs there chose the lrs)"))
    grid_tasks = sorted({r["task"] for r in records if r.get("stage") == "grid"})
    parts.append(write_table(lr_rows(records, chosen, expected), ["arm", "lr", "chosen", *grid_tasks, "mean"], output / "lr_grid",
                             title="Learning-rate grid: selection-split GLUE score x100 (seed 0)"))
    sensitivity = lr_sensitivity_rows(records)
    if sensitivity:
        parts.append(write_table(sensitivity, list(sensitivity[0]), output / "lr_sensitivity",
                                 title="One configuration at several lrs on the same task and seeds: mean "
                                       "selection and dev GLUE score x100 per lr, and the lr this task's own "
                                       "selection split prefers (the protocol chose on MRPC seed 0)"))
    parts.append(write_table(convergence_rows(runs), ["task", "arm", "runs", "epochs run (mean)", "best epoch (mean)",
                                                   "stopped early", "best at last evaluation", "run time s (mean)"],
                             output / "convergence", title="Convergence of the counted runs: a run whose best was "
                             "its last evaluation may have stopped too soon; `stopped early`: patience ran out "
                             "before the epoch cap"))
    parts.append(write_table(budget_rows(runs, arms), ["arm", "trainable params (median)", "final adapter params (mean)",
                                                       "vs uniform LoRA (mean, min-max)", "vs uniform LoRA by task (mean)"],
                             output / "budget",
                             title="Parameter budget (final live adapter parameters; uniform LoRA on the same layers at the "
                                   "rank the arm's budget matches = 1)"))
    allocation, kinds = allocation_rows(runs)
    if allocation:
        parts.append(write_table(allocation, ["arm", "task", "runs", *kinds, "resizes (mean)", "reversals per layer",
                                              "weights (min-max)"], output / "allocation",
                                 title="Allocation: final mean rank per module type (uniform LoRA: every rank "
                                       "at --rank), resizes, rank reversals per layer, weight range"))
    use, kinds = rank_use_rows(runs)
    if use:
        parts.append(write_table(use, ["arm", "task", "runs", *kinds], output / "rank_use",
                                 title="Rank use: mean effective rank / mean rank of the chosen adapters' updates "
                                       "per module type (a budget binds when the two are close)"))
    conflicts = config_conflicts(runs, arms)
    for stale in (output / "config_conflicts.csv", output / "config_conflicts.md"):
        stale.unlink(missing_ok=True)  # a warning of an earlier report that no longer holds
    if conflicts:
        parts.append(write_table(conflicts, ["arm", "field", "values"], output / "config_conflicts",
                                 title="Warning: an arm's runs were trained under different method settings "
                                       "(a default changed between records); its figures mix them"))
    parts.append(progress_table(paper_protocol(), records, {arm: float(c["lr"]) for arm, c in chosen.items()}, output))
    majority = {t: majority_line(runs, t) for t in tasks}
    write_summary(output / "summary.md", summary_text(table1_rows, wide, tasks, majority, reference,
                                                      output / "table2.csv"))
    if runs:  # nothing to plot while every grid is incomplete
        dot_plot(runs, tasks, arms, {t: glue_metric_name(t) for t in tasks}, majority, output / "dots.png")
        parts.append("![every seed per task](dots.png)\n")
    text = "\n".join(parts)
    with atomic_path(output / "report.md") as tmp:
        tmp.write_text(text)
    return text


def majority_line(runs: list[dict[str, Any]], task: str) -> float | None:
    values = [r["majority_dev"] for r in runs if r["task"] == task and r.get("majority_dev") is not None]
    return 100 * values[0] if values and not math.isnan(values[0]) else None
