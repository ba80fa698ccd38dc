"""`dynalora merge`: a plain transformers checkpoint with the trained update folded in."""

from __future__ import annotations

import argparse
from typing import Any

from dynalora.cli.common import add_adapter_arg

HELP = "fold the adapter into the base weights"  # its line in `dynalora --help`


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "merge", help=HELP,
        description="Write the trained classifier, the update folded into the encoder's weights, as a "
                    "folder AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True) "
                    "and pipeline('text-classification', model=DIR, trust_remote_code=True) load without "
                    "dynalora (label names in config.json, the tokenizer beside). Mean and first-token "
                    "pooling need the small modelling file written into DIR (hence trust_remote_code); "
                    "--pooling pooler on a BERT encoder is BERT's own head and needs no custom code. An "
                    "instruction-tuning run (`dynalora sft`) becomes a folder AutoModelForCausalLM loads.")
    add_adapter_arg(parser)
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--model", metavar="PATH", help="base model folder, if it moved since training")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --output, replacing files of the same names")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dynalora.training.artifacts import merge_trained

    path = merge_trained(args.adapter, args.output, base_model=args.model, overwrite=args.overwrite)
    print(f"merged model written to {path}")
    return 0
