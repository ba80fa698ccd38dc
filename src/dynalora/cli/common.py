"""Small pieces the command modules share."""

from __future__ import annotations

import json
from typing import Any


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def add_adapter_arg(parser: Any) -> None:
    parser.add_argument("--adapter", required=True, metavar="DIR",
                        help="a run folder written by `dynalora train` (its --output)")
