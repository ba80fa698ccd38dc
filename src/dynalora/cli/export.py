"""`dynalora export`: a trained adapter in another library's format (Hugging Face PEFT)."""

from __future__ import annotations

import argparse
from typing import Any

from dynalora.cli.common import add_adapter_arg

HELP = "export the adapter for Hugging Face PEFT"  # its line in `dynalora --help`


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export", help=HELP,
        description="Write a LoRA-family run's adapter as adapter_config.json + "
                    "adapter_model.safetensors that PEFT loads onto the base encoder "
                    "(PeftModel.from_pretrained(AutoModel.from_pretrained(BASE), OUTPUT)), with the "
                    "classification head (head.safetensors + head.json) beside it.")
    add_adapter_arg(parser)
    parser.add_argument("--format", default="peft", choices=["peft"], help="target format (default: peft)")
    parser.add_argument("--fold-scaling", action="store_true",
                        help="pad every layer to the largest rank and fold all scalings into lora_B, for "
                             "servers that ignore PEFT's rank_pattern/alpha_pattern")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --output, replacing files of the same names")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dynalora.training.artifacts import export_trained

    path = export_trained(args.adapter, args.output, args.format, args.fold_scaling, overwrite=args.overwrite)
    print(f"{args.format} adapter written to {path}")
    return 0
