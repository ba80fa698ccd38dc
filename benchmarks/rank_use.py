"""How much of its rank each trained adapter uses, over the protocol's run folders.

For every run folder with a dynalora adapter in `best/` (LoRA, dynamic LoRA, Rank-1), the
number of directions holding 90% of each layer's update energy and its effective rank
(dynalora.analysis.spectrum), averaged per arm, task and module type. The question it answers:
does the rank budget bind? If LoRA at r=8 puts 90% of an update in 3-4 directions, moving rank
between layers has little to gain.

    .venv/bin/python benchmarks/rank_use.py runs/bench-paper          # the bench's run folders
    .venv/bin/python benchmarks/rank_use.py /work/wt/evidence/runs/bench-paper \
        /work/wt/lowrank/runs/bench-paper --records docs/results/paper/runs.jsonl \
        --output benchmarks/results/rank_use

Folders are read as <tier>/<task>/<arm>/lr<lr>/seed<k>/best (the paper bench's layout); runs
still in flight (a checkpoints/ folder beside best/) are left out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from bench_common import result_header

from dynalora.analysis.factors import load_factors
from dynalora.analysis.spectrum import rank_use_by_type, rank_use_table
from dynalora.analysis.tables import write_table
from dynalora.bench.records import lr_text, read_records
from dynalora.files import write_json


def recorded_folders(records: Path) -> set[tuple[str, str, str, str]]:
    """(task, arm folder name, lr folder, seed folder) of every run the records hold."""
    return {(r["task"], r["arm"].replace(":", "-"), f"lr{lr_text(r['lr'])}", f"seed{r['seed']}")
            for r in read_records(records)}


def collect(root: Path, records: Path | None) -> dict[tuple[str, str], list[dict]]:
    """(arm, task) -> the rank use of each finished run folder under `root` (only the runs that
    `records` holds, when given: leftovers of retired or unrecorded runs stay out)."""
    wanted = recorded_folders(records) if records else None
    found: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for best in sorted(root.glob("*/*/*/lr*/seed*/best")):
        # a finished run's folder has no checkpoints left (the worker removes them); a run in
        # flight has them, and its best/ is not final
        if not (best / "dynalora_config.json").is_file() or (best.parent / "checkpoints").exists():
            continue
        if wanted is not None and tuple(best.parts[-5:-1]) not in wanted:
            continue
        found[(best.parts[-4], best.parts[-5])].append(rank_use_by_type(load_factors(best)[0]))
    return found


def rows_of(found: dict[tuple[str, str], list[dict]]) -> tuple[list[dict], list[str]]:
    return rank_use_table(dict(sorted(found.items())), lambda mine: (
        f"{statistics.fmean(m['rank_for_90'] for m in mine):.1f} / {statistics.fmean(m['r'] for m in mine):.1f} "
        f"({statistics.fmean(m['effective_rank'] for m in mine):.2f})"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="the bench's run folders (runs/bench-paper; several when "
                                                 "benches ran from several worktrees)")
    parser.add_argument("--records", help="runs.jsonl: read only the run folders it records")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "rank_use"),
                        help="stem of the .json / .md / .csv results")
    args = parser.parse_args(argv)
    found: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for root in args.roots:
        for key, uses in collect(Path(root), Path(args.records) if args.records else None).items():
            found[key] += uses
    if not found:
        sys.exit(f"{' '.join(args.roots)}: no run folders with a dynalora adapter "
                 "(<tier>/<task>/<arm>/lr*/seed*/best)")
    rows, kinds = rows_of(found)
    text = write_table(rows, ["arm", "task", "runs", *kinds], Path(args.output),
                       title="Rank use per module type: mean rank holding 90% of the update's energy / "
                             "mean rank (mean effective rank)")
    write_json(Path(args.output + ".json"), {**result_header("rank_use.py", argv, args, []), "rows": rows,
                                             "runs": {f"{a}/{t}": uses for (a, t), uses in found.items()}})
    print(text)


if __name__ == "__main__":
    main()
