"""`dynalora merge`: a plain transformers checkpoint with the trained update folded in."""

from __future__ import annotations

import argparse
from typing import Any

from dynalora.cli.common import add_adapter_arg


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "merge", help="fold the adapter into the base weights",
        description="Write the trained backbone as a plain transformers checkpoint "
                    "(AutoModel.from_pretrained loads it without dynalora), with the tokenizer and "
                    "the classification head (head.safetensors + head.json) beside it.")
    add_adapter_arg(parser)
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--model", metavar="PATH", help="base model folder, if it moved since training")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dynalora.training.artifacts import merge_trained

    path = merge_trained(args.adapter, args.output, base_model=args.model)
    print(f"merged model written to {path}")
    return 0
