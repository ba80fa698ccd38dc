"""`dynalora analyze`: rank use, and the LoRA paper's subspace similarity and amplification of saved adapters."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "rank use, subspace similarity and amplification of one or two trained adapters"  # its line in `dynalora --help`


def add_parser(subparsers: Any) -> None:
    from dynalora.analysis.subspace import SOURCES

    parser = subparsers.add_parser(
        "analyze", help=HELP,
        description="The analyses of the LoRA paper (section 7) on LoRA-family run folders "
                    "(lora, dynamic, rank1). For each adapter, per layer: how much of its rank the "
                    "update uses (effective rank, top-1/top-2 energy share, rank holding 90% of the "
                    "energy: spectrum_<k>), and the amplification "
                    "||Delta W|| / ||U^T W0 V|| along Delta W's top singular directions, against "
                    "W0's own top directions and random ones. For two adapters also the subspace "
                    "similarity phi(i, j) between their top-i and top-j singular directions, per "
                    "layer. Prints the tables and writes them as CSV and Markdown, PNG figures "
                    "(amplification_<k>.png, subspace.png) and analysis.json into --output.")
    parser.add_argument("--adapters", nargs="+", required=True, metavar="DIR",
                        help="one or two run folders written by `dynalora train` (or adapter folders)")
    parser.add_argument("--output", default="analysis", metavar="DIR",
                        help="folder for the tables and figures (default: analysis)")
    parser.add_argument("--base", metavar="PATH",
                        help="base model folder holding W0 (default: the one the adapter records)")
    parser.add_argument("--source", default="A", choices=SOURCES,
                        help="directions compared by phi: A's right-singular vectors as in the LoRA paper "
                             "(A), or Delta W's input (delta-in) or output (delta-out) singular vectors "
                             "(default: A)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random reference directions (default: 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dynalora.analysis import analyze

    analyze(args.adapters, args.output, base=args.base, source=args.source, seed=args.seed)
    print(f"tables and figures written to {args.output}")
    return 0
