"""`dynalora generate`: answer a prompt with a base causal LM and saved adapters, streaming."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "generate text with a causal LM and LoRA adapters (streamed)"  # its line in `dynalora --help`


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "generate", help=HELP,
        description="Answer --prompt with the base model an adapter was trained on (it is recorded in "
                    "the adapter folder) plus the adapter. Repeat --adapter to sum several adapters, "
                    "weighted by --weights; --no-adapter runs the base model alone.")
    parser.add_argument("--adapter", action="append", default=[], metavar="DIR",
                        help="adapter folder (a `dynalora sft` run folder); repeat to mix several")
    parser.add_argument("--weights", nargs="+", type=float, metavar="W",
                        help="one weight per --adapter for a weighted sum (default: 1 each)")
    parser.add_argument("--no-adapter", action="store_true", help="the base model alone")
    parser.add_argument("--model", metavar="PATH",
                        help="base model (folder, .gguf or Hub id); default: what the adapter records, "
                             "or the packaged SmolLM2 with --no-adapter")
    parser.add_argument("--prompt", required=True, help="the user's message")
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                        help="stop after this many new tokens (default: 128)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sample at this temperature (default: greedy decoding)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (with --temperature)")
    parser.add_argument("--repetition-penalty", type=float, default=None, metavar="X",
                        help="divide the scores of tokens already in the answer by X (> 1 discourages "
                             "loops, 1 for none; default: 1.05, see docs/sft.md)")
    parser.add_argument("--penalize-prompt", action="store_true",
                        help="let --repetition-penalty count the prompt's tokens too, as transformers does")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N",
                        help="never repeat an n-gram of N tokens")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="end the answer after this string (repeat for several)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    parser.add_argument("--no-stream", action="store_true", help="print the answer once it is complete")
    parser.set_defaults(func=run)


def check_sampling(args: argparse.Namespace) -> None:
    import math

    from dynalora.adapters.config import check

    check(args.max_new_tokens > 0, "max_new_tokens", "must be a positive integer", args.max_new_tokens)
    check(args.temperature is None or (math.isfinite(args.temperature) and args.temperature >= 0), "temperature",
          "must be a finite number >= 0 (0: greedy)", args.temperature)
    check(args.top_p is None or 0 < args.top_p <= 1, "top_p", "must be in (0, 1]", args.top_p)
    check(args.top_p is None or args.temperature, "top_p", "needs --temperature > 0 (it only affects sampling)",
          args.top_p)
    check(all(math.isfinite(w) for w in args.weights or []), "weights", "must be finite numbers", args.weights)


def run(args: argparse.Namespace) -> int:
    import torch

    from dynalora.adapters.config import ConfigError
    from dynalora.llm.generate import GenerationSettings, generate
    from dynalora.llm.models import load_causal_lm, load_with_adapters

    # bad generation values are one-line errors before any model loads
    penalty = {} if args.repetition_penalty is None else {"repetition_penalty": args.repetition_penalty}
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p,  # no flag: the default penalty
                                  penalize_prompt=args.penalize_prompt, no_repeat_ngram_size=args.no_repeat_ngram_size,
                                  stop=args.stop, **penalty)
    if args.no_adapter == bool(args.adapter):
        raise ConfigError("adapter: give --adapter DIR (one or more) or --no-adapter, not both or neither")
    if args.weights is not None and len(args.weights) != len(args.adapter):
        raise ConfigError(f"weights: {len(args.weights)} weight(s) for {len(args.adapter)} adapter(s)")
    check_sampling(args)  # before the model loads: a bad value should not cost a minute
    if args.no_adapter:
        model, tokenizer = load_causal_lm(args.model)
    else:
        model, tokenizer = load_with_adapters(args.adapter, args.weights, args.model)
    torch.manual_seed(args.seed)
    text = generate(model, tokenizer, args.prompt, stream=not args.no_stream, settings=settings)
    if args.no_stream:
        print(text)
    else:
        print()  # end the streamed line
    return 0
