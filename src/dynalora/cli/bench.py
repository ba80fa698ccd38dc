"""`dynalora bench`: the paper's Tables 1 and 2 rerun, our methods side by side with PEFT's."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dynalora.cli.bench_protocol import (
    add_protocol_flags,
    add_report_parser,
    add_timing_parser,
    run_paper,
)
from dynalora.cli.main import one_line
from dynalora.cli.train import none_or

# Flags that override the BenchProfile field of the same name (absent from args when not given).
PROFILE_OVERRIDES = ("max_train_samples", "max_eval_samples", "epochs")


HELP = "rerun the paper's Tables 1 and 2 (tasks x methods x seeds), PEFT side by side"  # its line in `dynalora --help`


def describe_profiles() -> str:
    from dynalora.bench.profiles import PROFILES

    parts = []
    for p in PROFILES.values():
        subset = "all" if p.max_train_samples is None else f"at most {p.max_train_samples}"
        parts.append(f"{p.name}: tasks {' '.join(p.tasks)}, seeds {' '.join(map(str, p.seeds))}, "
                     f"{p.epochs:g} epochs on {subset} training examples")
    return "; ".join(parts)


def add_parser(subparsers: Any) -> None:
    from dynalora.bench.profiles import ALL_METHODS, PROFILES

    parser = subparsers.add_parser(
        "bench", help=HELP,
        description="Train every (task, method, seed) of a profile, each in its own process, then write "
                    "results.jsonl, Table 1 (quality: accuracy, ROC AUC, F1, recall and the task's GLUE "
                    "metric, mean ± std over seeds) and Table 2 (cost: training time, inference latency "
                    "at batch 1 and 32, trainable share, peak memory) as CSV and Markdown, and PNG plots "
                    "into --output. Finished runs are cached under OUTPUT/runs: rerunning the same "
                    "command resumes, and only runs whose settings changed train again. Exits with "
                    "status 1 when a run failed (the others still finish; see bench.json). --profile paper "
                    "runs the comparison protocol instead (docs/results/paper/PROTOCOL.md): tiers of runs "
                    "chosen on a selection split, one line per finished run in --records, skipped when "
                    "recorded; `dynalora bench report` builds its tables.")
    parser.add_argument("--profile", default="quick", choices=[*PROFILES, "paper"], metavar="NAME",
                        help=f"preset of tasks, seeds and data sizes; {describe_profiles()}; paper: the "
                             "tiered comparison protocol, see --tier (default: quick)")
    parser.add_argument("--tasks", nargs="+", metavar="TASK",
                        help="GLUE tasks to run, e.g. mrpc sst2 rte (default: the profile's)")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help=f"methods to compare, of {' '.join(ALL_METHODS)} (with --profile paper: "
                             "arms, e.g. lora peft-adalora) (default: all of them)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="random seeds; every (task, method) runs once per seed (default: the profile's)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="GLUE data folder holding <TASK>/train.tsv and dev.tsv (default: the "
                             "training default, see `dynalora train --help`)")
    parser.add_argument("--model", metavar="PATH",
                        help="base model folder (default: the packaged MiniLM)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="folder for the tables, plots and runs/ (default: runs/bench; paper: the "
                             "run folders only, default runs/bench-paper, the records go to --records)")
    parser.add_argument("--max-train-samples", type=none_or(int), metavar="N", default=argparse.SUPPRESS,
                        help="train each run on a random subset of N examples; `none` for all "
                             "(default: the profile's)")
    parser.add_argument("--max-eval-samples", type=none_or(int), metavar="N", default=argparse.SUPPRESS,
                        help="evaluate on a random subset of N dev examples; `none` for all "
                             "(default: the profile's)")
    parser.add_argument("--epochs", type=float, metavar="E", default=argparse.SUPPRESS,
                        help="training epochs per run (default: the profile's)")
    parser.add_argument("--stop-on-failure", action="store_true",
                        help="stop at the first failed run instead of reporting it and going on")
    add_protocol_flags(parser)
    parser.set_defaults(func=run)
    commands = parser.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", parser_class=type(parser),
                                     help="report: the protocol's tables and plots from runs.jsonl; timing: "
                                          "its Table 2 (leave out to run a profile)")
    add_report_parser(commands)
    add_timing_parser(commands)


def run(args: argparse.Namespace) -> int:
    if args.profile == "paper":
        return run_paper(args)
    from dynalora.bench import get_profile, run_bench
    from dynalora.files import read_json

    args.output = args.output or "runs/bench"
    overrides = {name: getattr(args, name) for name in PROFILE_OVERRIDES if hasattr(args, name)}
    profile = get_profile(args.profile).replace(**overrides)  # run_bench checks the values
    try:
        run_bench(tasks=args.tasks, methods=args.methods, seeds=args.seeds, profile=profile,
                  output=args.output, data_dir=args.data_dir, model=args.model,
                  keep_going=not args.stop_on_failure)
    except RuntimeError as err:  # --stop-on-failure: a run failed; its own output said why
        print(f"dynalora bench: error: {one_line(err)}", file=sys.stderr)
        return 1
    failed = read_json(Path(args.output) / "bench.json", "bench summary").get("failed", [])
    if failed:
        print(f"dynalora bench: {len(failed)} run(s) failed: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
