"""Batched greedy generation on the held-out prompts of an SFT run: quality shares and tokens/s.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sft_generation.py \
        --data ../shared/data/gsm8k/train.jsonl --eval-data ../shared/data/gsm8k/test.jsonl \
        --max-eval-samples 200 --n 200 --output docs/results/sft-gsm8k-v2/base

The prompts are those `dynalora sft` with the same --data/--eval-data/--max-eval-samples/--seed
answers (the same code picks them), so OUTPUT.jsonl can be passed to a run as
`--baseline-samples` (it holds the base model's answers as the "before" side). Writes
OUTPUT.jsonl (per prompt: answer, stop reason, new tokens, reference and predicted answer) and
OUTPUT.json (exact match, share that ends / loops / writes `#### n`, tokens/s, wall time, the
command). `--adapter DIR` answers with a saved adapter instead of the base model.

Choosing a decoding setting without looking at the test problems:
`--selection-from-train K --max-train-samples N` answers K problems of --data that an
`sft --max-train-samples N --seed S` run did not train on (instead of the --eval-data ones),
and several `--repetition-penalty` values (one model load) write OUTPUT-rp<value>.json(l) each.
The penalty counts the answer's tokens only, as `dynalora generate` does, unless --penalize-prompt.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dynalora.files import write_json
from dynalora.llm.evaluate import predicted_answer, reference_answer
from dynalora.llm.generate import GenerationSettings, generate_many
from dynalora.llm.models import load_causal_lm, load_with_adapters
from dynalora.llm.quality import find_loop, summarize
from dynalora.llm.selection import pick_selection_records
from dynalora.llm.sft import SftConfig, read_records, split_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--eval-data", default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=200, help="the first N held-out prompts")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", required=True, help="path prefix of the .jsonl and .json results")
    parser.add_argument("--repetition-penalty", type=float, nargs="+",
                        default=[GenerationSettings.repetition_penalty],
                        help="one or more values (1: none; default: `dynalora generate`'s); with several, "
                             "OUTPUT-rp<value> per value")
    parser.add_argument("--penalize-prompt", action="store_true",
                        help="the penalty counts the prompt's tokens too (transformers' own behaviour)")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None)
    parser.add_argument("--selection-from-train", type=int, default=None, metavar="K",
                        help="answer K problems of --data that the run with --max-train-samples did not train on")
    parser.add_argument("--max-train-samples", type=int, default=None)
    args = parser.parse_args()
    if args.selection_from_train is not None and args.max_train_samples is None:
        # without it every training problem counts as trained on, and none would be left to answer
        parser.error("--selection-from-train needs --max-train-samples (the size of the run it is chosen for)")

    records = held_out_records(args)
    if args.adapter:
        model, tokenizer = load_with_adapters([args.adapter], model=args.model)
    else:
        model, tokenizer = load_causal_lm(args.model)
    for penalty in args.repetition_penalty:
        out = Path(args.output)
        if len(args.repetition_penalty) > 1:
            out = out.with_name(f"{out.name}-rp{penalty:g}")
        answer(model, tokenizer, records, SftConfig(
            data=args.data, max_new_tokens=args.max_new_tokens, repetition_penalty=penalty,
            penalize_prompt=args.penalize_prompt, no_repeat_ngram_size=args.no_repeat_ngram_size).generation_settings(), args, out)


def held_out_records(args: argparse.Namespace) -> list:
    """The test prompts an `sft` run with the same --eval-data/--max-eval-samples/--seed answers,
    or (--selection-from-train) training problems that run never saw."""
    if args.selection_from_train is None:
        config = SftConfig(data=args.data, eval_data=args.eval_data, max_eval_samples=args.max_eval_samples,
                           seed=args.seed)
        return split_records(config)[1][: args.n]
    config = SftConfig(data=args.data, eval_data=args.eval_data, max_eval_samples=args.max_eval_samples,
                       seed=args.seed, max_train_samples=args.max_train_samples)
    trained = split_records(config)[0]
    return pick_selection_records(read_records(config, args.data), args.selection_from_train, trained)


def answer(model: Any, tokenizer: Any, records: list, settings: Any, args: argparse.Namespace, out: Path) -> None:
    start = time.perf_counter()
    generations = generate_many(model, tokenizer, [r.context() for r in records], settings, args.batch_size,
                                on_batch=lambda done: print(f"{done}/{len(records)} "
                                                            f"{time.perf_counter() - start:.0f}s", flush=True))
    wall = time.perf_counter() - start
    rows, correct, decoding = [], [], settings.to_dict()
    for record, generation in zip(records, generations):
        reference, prediction = reference_answer(record.response), predicted_answer(generation.text)
        correct.append(reference is not None and prediction == reference)
        rows.append({"where": record.where, "prompt": record.prompt, "decoding": decoding,
                     "before": generation.text,
                     "before_stop": generation.stop_reason, "before_tokens": generation.new_tokens,
                     "before_loops": find_loop(generation.text) is not None,
                     "reference_answer": reference, "before_answer": prediction, "before_correct": correct[-1]})
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tokens = sum(g.new_tokens for g in generations)
    write_json(Path(f"{out}.json"), {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "summary": summarize(generations, correct), "settings": settings.to_dict(),
        "batch_size": args.batch_size, "wall_s": round(wall, 1), "new_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1), "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
    })
    print(json.dumps({"wall_s": round(wall, 1), "tokens_per_s": round(tokens / wall, 1),
                      **summarize(generations, correct)}, indent=1))


if __name__ == "__main__":
    main()
