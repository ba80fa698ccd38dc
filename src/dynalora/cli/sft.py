"""`dynalora sft`: instruction-tune a causal LM; its flags are the fields of `SftConfig`."""

from __future__ import annotations

import argparse
from typing import Any

from dynalora.cli.common import print_json
from dynalora.cli.train import add_config_flags, config_from_args

HELP = "instruction-tune a causal LM (default: the packaged SmolLM2) on prompt/response data"  # its line in `dynalora --help`


def add_parser(subparsers: Any) -> None:
    from dynalora.llm.sft import SftConfig

    parser = subparsers.add_parser(
        "sft", help=HELP,
        description="Supervised fine-tuning of a decoder LLM with lora, dynamic or rank1 adapters; the "
                    "loss counts response tokens only. Writes into --output the adapter, metrics.json "
                    "(held-out loss and perplexity before and after), log.jsonl, curves.png, "
                    "checkpoints, allocation.json/png (dynamic, rank1: ranks per layer), gates.png (rank1 "
                    "with scalar gates: |gate| per component), "
                    "samples.jsonl (the first --samples held-out prompts answered by the base model "
                    "and by the adapter; exact match too for GSM8K-style answers) and report.md "
                    "(all of it side by side), and prints the final metrics as JSON. The saved adapter is the "
                    "evaluation with the lowest held-out loss, or the best --metric-for-best-model (e.g. "
                    "exact_match, measured by generating at each evaluation). Data: one .jsonl/.json file "
                    "of records; --preset gsm8k (question/answer), alpaca (instruction/input/output), "
                    "generic (prompt/response) or messages (OpenAI or ShareGPT turns) sets the fields, "
                    "default: detected from the first record. GSM8K's <<a=b>> calculator annotations are "
                    "removed from the answers of the gsm8k layout by default (--strip-calculator / "
                    "--no-strip-calculator force it either way, in any layout). --stop takes several "
                    "strings after one flag (--stop A B), and a repeated --stop adds more. Try the "
                    "result with `dynalora generate --adapter OUTPUT --prompt ...`.")
    add_config_flags(parser, SftConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dynalora.llm.sft import SftConfig, train_sft

    print_json(train_sft(config_from_args(args, SftConfig)))
    return 0
