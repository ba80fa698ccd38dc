"""`dynalora eval`: metrics of a trained run on a split, as JSON."""

from __future__ import annotations

import argparse
from typing import Any

from dynalora.cli.common import add_adapter_arg, positive_int, print_json
from dynalora.cli.predict import add_file_args

HELP = "evaluate a trained run"  # its line in `dynalora --help`


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval", help=HELP,
        description="Rebuild a trained model from its run folder and print its metrics as JSON. "
                    "With no other flags this reproduces the run's metrics.json.")
    add_adapter_arg(parser)
    parser.add_argument("--task", help="evaluate on this GLUE task (default: the one trained on)")
    # --dev-file instead of --task/--split: a labelled table of your own (see `dynalora predict`).
    parser.add_argument("--data-dir", metavar="DIR", help="GLUE data folder (default: the one trained with)")
    parser.add_argument("--split", default="dev", help="split to evaluate (default: dev)")
    parser.add_argument("--max-samples", type=positive_int, metavar="N",
                        help="evaluate a seeded random subset (default: as in training)")
    add_file_args(parser, "--dev-file")
    parser.add_argument("--model", metavar="PATH", help="base model folder, if it moved since training")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run the model: auto (a GPU if there is one), cpu or cuda (default: auto)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.dev_file:
        return run_on_file(args)
    from dynalora.training import evaluate

    print_json(evaluate(args.adapter, task=args.task, data_dir=args.data_dir, split=args.split,
                        max_samples=args.max_samples, base_model=args.model, device=args.device))
    return 0


def run_on_file(args: argparse.Namespace) -> int:
    from dynalora.data import DataError
    from dynalora.training.prediction import score_file

    if args.task or args.split != "dev":
        raise DataError("--dev-file replaces --task/--split: give one or the other")
    result = score_file(args.adapter, args.dev_file, args.text_columns, args.label_column, args.model, args.device)
    if not result["labelled"]:
        raise DataError(f"{args.dev_file}: the label column is missing (--label-column names it); "
                        "`dynalora predict` scores unlabelled files")
    print_json({"file": result["file"], "n_examples": result["n_examples"], "metrics": result["metrics"]})
    return 0
