"""`dynalora eval`: metrics of a trained run on a split, as JSON."""

from __future__ import annotations

import argparse
from typing import Any

from dynalora.cli.common import add_adapter_arg, print_json


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a trained run",
        description="Rebuild a trained model from its run folder and print its metrics as JSON. "
                    "With no other flags this reproduces the run's metrics.json.")
    add_adapter_arg(parser)
    parser.add_argument("--task", help="evaluate on this GLUE task (default: the one trained on)")
    parser.add_argument("--data-dir", metavar="DIR", help="GLUE data folder (default: the one trained with)")
    parser.add_argument("--split", default="dev", help="split to evaluate (default: dev)")
    parser.add_argument("--max-samples", type=int, metavar="N",
                        help="evaluate a seeded random subset (default: as in training)")
    parser.add_argument("--model", metavar="PATH", help="base model folder, if it moved since training")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run the model: auto (a GPU if there is one), cpu or cuda (default: auto)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dynalora.training import evaluate

    print_json(evaluate(args.adapter, task=args.task, data_dir=args.data_dir, split=args.split,
                        max_samples=args.max_samples, base_model=args.model, device=args.device))
    return 0
