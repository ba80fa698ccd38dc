"""summary.md: the protocol's headline tables laid out for a reader rather than for checking.

Only the arms the protocol set before its first run (the issue's tiers 1-3), with readable
names; Table 1 with the majority-class score under it, the paired differences against LoRA one
row per arm, and Table 2 when the timing has been written beside the report. The README's
results section quotes this file; everything else stays in report.md.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from dynalora.analysis.tables import markdown_table
from dynalora.files import atomic_path

ARM_TITLES = {"lora": "LoRA", "dynamic": "dynamic LoRA", "peft-adalora": "PEFT AdaLoRA",
              "lora-qv": "LoRA (query/value)", "rank1": "Rank-1 Sum LoRA", "full": "full fine-tuning",
              "head": "feature extraction (head)", "adapter": "Houlsby adapter", "bitfit": "BitFit"}
TASK_TITLES = {"mrpc": "MRPC", "rte": "RTE", "stsb": "STS-B", "cola": "CoLA", "sst2": "SST-2"}


def _table(header: list[str], rows: list[list[str]]) -> str:
    return markdown_table([dict(zip(header, row)) for row in rows], header)


def _minus(text: str) -> str:
    """A typographic minus for negative figures (a hyphen reads as a dash in prose)."""
    return text.replace("-", "−")


def percent_text(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def table2_rows(path: Path, reference: str) -> list[list[str]]:
    """Table 2 (timing) rows from its csv: step time, its ratio to `reference`, latencies,
    trainable share and peak memory."""
    rows = [r for r in csv.DictReader(path.open()) if r["arm"] in ARM_TITLES]
    base = next((float(r["s_per_step"]) for r in rows if r["arm"] == reference), None)
    return [[ARM_TITLES[r["arm"]], f"{float(r['s_per_step']):.2f}",
             "–" if base is None else f"{float(r['s_per_step']) / base:.2f}", f"{float(r['latency_b1_ms']):.1f}",
             f"{float(r['latency_b32_ms']):.0f}", percent_text(float(r["trainable_share_pct"])),
             f"{float(r['peak_rss_mb']):.0f}"] for r in rows]


def summary_text(table1: list[dict[str, Any]], paired_wide: list[dict[str, Any]], tasks: list[str],
                 majority: dict[str, float | None], reference: str, table2_csv: Path | None = None) -> str:
    titles = [TASK_TITLES.get(t, t) for t in tasks]
    parts = ["# The protocol at a glance\n\nDev GLUE score x100 of the checkpoint chosen on the selection "
             "split; the full report, with every arm and every check, is report.md.\n",
             "## Table 1: mean ± std over paired seeds\n",
             _table(["method", *titles, "average"],
                    [[ARM_TITLES[r["arm"]], *(str(r.get(t, "–")) for t in tasks), str(r["GLUE average"])]
                     for r in table1 if r["arm"] in ARM_TITLES]
                    + [["majority class", *("–" if majority.get(t) is None else f"{majority[t]:.2f}" for t in tasks),
                        ""]])]
    against = [r for r in paired_wide if r["minus"] == reference and r["arm"] in ARM_TITLES]
    if against:
        parts += [f"## Paired against {ARM_TITLES.get(reference, reference)}: mean [95% t-interval] (seeds), "
                  "points\n",
                  _table([f"method − {ARM_TITLES.get(reference, reference)}", *titles, "average"],
                         [[ARM_TITLES[r["arm"]], *(_minus(str(r[k])) for k in (*tasks, "average"))] for r in against])]
    if table2_csv is not None and table2_csv.is_file():
        parts += ["## Table 2: cost per arm (table2.md: its task, rounds and threads)\n",
                  _table(["method", "s / step", f"vs {ARM_TITLES.get(reference, reference)}", "latency batch 1 (ms)",
                          "batch 32 (ms)", "trainable %", "peak RSS (MB)"], table2_rows(table2_csv, reference))]
    return "\n".join(parts)


def write_summary(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
