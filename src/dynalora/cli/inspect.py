"""`dynalora inspect`: per-layer ranks, allocation weights and parameter counts of a run."""

from __future__ import annotations

import argparse
from typing import Any

from dynalora.cli.common import add_adapter_arg, print_json

COLUMNS = ("module", "rank", "weight", "scaling", "params")


HELP = "show what a run trained, layer by layer"  # its line in `dynalora --help`


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect", help=HELP,
        description="Print a table of the trained modules: rank, allocation weight, scaling and "
                    "parameter count per layer (read from the files; no model is loaded).")
    add_adapter_arg(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def table(rows: list[dict[str, Any]]) -> str:
    cells = [list(COLUMNS)] + [[("-" if r[c] is None else str(r[c])) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    # the module name left-aligned, the numbers right-aligned
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
                     for row in cells)


def run(args: argparse.Namespace) -> int:
    from dynalora.training.artifacts import describe_run

    info = describe_run(args.adapter)
    if args.json:
        print_json(info)
        return 0
    print(f"method {info['method']}, task {info['task']}, base {info['base_model']}")
    print(table(info["layers"]))
    print(f"trained parameters: {info['trained_params']:,}")
    return 0
