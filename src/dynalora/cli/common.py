"""Small pieces the command modules share."""

from __future__ import annotations

import argparse
import json
from typing import Any


def print_json(data: Any) -> None:
    """Strict JSON on stdout: NaN/inf become null, listed under "nonfinite" (see finite_json).
    In a distributed run only the main process prints."""
    from dynalora.distributed import current  # here: `dynalora --help` must not import torch
    from dynalora.files import finite_json

    if current().is_main:
        print(json.dumps(finite_json(data), indent=2, default=str, allow_nan=False))


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (0 must not quietly mean "all")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_adapter_arg(parser: Any) -> None:
    parser.add_argument("--adapter", required=True, metavar="DIR",
                        help="a run folder written by `dynalora train` (its --output)")
