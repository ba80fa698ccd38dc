"""`dynalora bench --profile paper`, `dynalora bench report` and `dynalora bench timing`: the
comparison protocol (dynalora.bench.protocol), its report from runs.jsonl, and Table 2's timing."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dynalora.adapters.config import ConfigError

DEFAULT_RECORDS = "docs/results/paper/runs.jsonl"


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_protocol_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("protocol (--profile paper)")
    group.add_argument("--tier", nargs="+", metavar="TIER",
                       help="tiers to run, in the order given: 0 (lr grid of lora, dynamic, peft-adalora), 1 (5 "
                            "paired seeds on MRPC, RTE, STS-B, CoLA), 2 (lora-qv, rank1), ablation (dynamic with one "
                            "mechanism removed), ablation-extra (other dynamic variants), 3 (full, head, adapter, "
                            "bitfit), sst2, and the exploratory low-rank (lora and dynamic at r=2 on CoLA and STS-B), "
                            "low-rank-wide (the same on tier 1's tasks and seeds) and lora-lr-wide (dynamic at LoRA's "
                            "lr on tier 1's tasks and seeds); PROTOCOL.md defines each (default: all, in that order)")
    group.add_argument("--records", default=DEFAULT_RECORDS, metavar="FILE",
                       help=f"runs.jsonl: one line per finished run; recorded runs are skipped (default: "
                            f"{DEFAULT_RECORDS}); lr_choice.json is written next to it")
    group.add_argument("--workers", type=positive, default=1, metavar="N",
                       help="runs side by side, each in its own process (default: 1)")
    group.add_argument("--threads", type=positive, default=1, metavar="N",
                       help="torch threads per run (default: 1)")
    group.add_argument("--plan", action="store_true",
                       help="print the runs left per tier and their estimated time, then exit")
    group.add_argument("--ablation", default=None, metavar="FILE.yaml",
                       help="dynamic-LoRA variants for the ablation tier: `variants:` mapping a name to "
                            "method_options (default: benchmarks/paper_ablation.yaml)")


def paper_from_args(args: argparse.Namespace) -> Any:
    from dynalora.bench.protocol import ABLATION_FILE, paper_protocol

    protocol = paper_protocol(Path(args.ablation) if args.ablation else ABLATION_FILE)
    changes = {name: getattr(args, name) for name in ("epochs", "max_train_samples", "max_eval_samples")
               if hasattr(args, name)}
    if "epochs" in changes:  # a shorter budget (e.g. a smoke test) keeps min_epochs inside it
        changes["min_epochs"] = min(protocol.shared["min_epochs"], changes["epochs"])
    return protocol.replace_shared(**changes)


def run_paper(args: argparse.Namespace) -> int:
    from dynalora.bench.protocol_runner import describe_plan, run_protocol

    for flag in ("tasks", "seeds"):
        if getattr(args, flag):
            raise ConfigError(f"--{flag}: not used by --profile paper (its tiers fix tasks and seeds; "
                              "choose with --tier and --methods)")
    protocol = paper_from_args(args)
    tiers = args.tier or [t.name for t in protocol.tiers]
    records = Path(args.records)
    if args.plan:
        for name in tiers:
            protocol.tier(name)
        print(describe_plan(protocol, tiers, records, args.workers, args.methods)[2])
        return 0
    failures = run_protocol(protocol, tiers, records, args.output or "runs/bench-paper", workers=args.workers,
                            threads=args.threads, arms=args.methods, data_dir=args.data_dir, model=args.model)
    return 1 if failures else 0


def add_report_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "report", help="tables and plots of the protocol, from runs.jsonl alone",
        description="Read runs.jsonl and write into --output: table1 (dev GLUE score per task and arm, "
                    "mean ± std over seeds, GLUE average), paired (each arm minus LoRA per task and on "
                    "average: mean difference, 95% t-interval over paired seeds, Wilcoxon p; again without the "
                    "grid seed on the grid task, and against each arm's own baseline where it has one), "
                    "lr_grid (selection scores of the learning-rate grid), convergence, budget, allocation "
                    "and rank-use tables, dots.png (every seed per task, majority-class line) and "
                    "paired.png (each difference with its interval).")
    parser.add_argument("--records", default=DEFAULT_RECORDS, metavar="FILE", help=f"(default: {DEFAULT_RECORDS})")
    parser.add_argument("--output", default=None, metavar="DIR", help="(default: the records' folder)")
    parser.add_argument("--reference", default="lora", metavar="ARM",
                        help="the arm every other is paired against (default: lora)")
    parser.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from dynalora.bench.report import write_report

    records = Path(args.records)
    if not records.is_file():
        raise FileNotFoundError(f"records file not found: {records}")
    print(write_report(records, Path(args.output) if args.output else records.parent, args.reference))
    return 0


def add_timing_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "timing", help="Table 2: training step time, inference latency, trainable share, peak memory",
        description="Time every arm in its own process, interleaved (repeat 1 of every arm, then repeat 2, "
                    "...), so that load on the machine hits every arm alike: seconds per training step, "
                    "latency at batch 1 and 32 (merged where the method allows), trainable share, peak "
                    "memory. Writes table2.{csv,md} and timing.jsonl into --output.")
    parser.add_argument("--arms", nargs="+", metavar="ARM", help="arms to time (default: every arm of tiers 1-3)")
    parser.add_argument("--task", default="mrpc", help="GLUE task whose batches are timed (default: mrpc)")
    parser.add_argument("--repeats", type=positive, default=3, metavar="N", help="rounds over the arms (default: 3)")
    parser.add_argument("--steps", type=positive, default=20, metavar="N", help="timed training steps (default: 20)")
    parser.add_argument("--threads", type=positive, default=1, metavar="N", help="torch threads (default: 1)")
    parser.add_argument("--data-dir", metavar="DIR", help="GLUE data folder")
    parser.add_argument("--model", metavar="PATH", help="base model folder (default: the packaged MiniLM)")
    parser.add_argument("--output", default="docs/results/paper", metavar="DIR", help="(default: docs/results/paper)")
    parser.add_argument("--fresh", action="store_true",
                        help="move timing.jsonl to timing.jsonl.bak (.bak.1, ... if taken) and measure every round again (default: "
                             "keep the rounds already there and measure only the rest; rounds measured under "
                             "other settings - task, steps, threads, model, data, arms, host - are refused)")
    parser.set_defaults(func=run_timing)


def run_timing(args: argparse.Namespace) -> int:
    from dynalora.bench.timing import run_timing as timing

    print(timing(arms=args.arms, task=args.task, repeats=args.repeats, steps=args.steps, threads=args.threads,
                 data_dir=args.data_dir, model=args.model, output=Path(args.output), fresh=args.fresh))
    return 0
