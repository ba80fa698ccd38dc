"""Serving several LoRA adapters on one base: one mixed batch against one batch per adapter.

    .venv/bin/python benchmarks/bench_multi_adapter.py [--repeats 10] [--batch 8] [--seq 128] [--threads 1]

The base is the packaged SmolLM2-135M-Instruct (or --model), with --adapters adapters of rank
--rank on q/k/v/o, each with a random non-zero B so every adapter really changes the output.
Row i of a batch belongs to adapter i mod --adapters. Cases (unmerged adapters, no grad):

* per_row_prefill       the whole batch in one forward, each row through its own adapter
                        (`DynaLoraModel.per_row_adapters`)
* sequential_prefill    one forward per adapter over that adapter's rows (`set_adapter`)
* one_adapter_prefill   the whole batch through a single adapter: what a batch costs when no
                        per-row routing is needed (the bound per_row_prefill aims at)
* per_row_generate / sequential_generate   greedy generation of --new-tokens tokens after a
                        --gen-prompt token prompt, the same two ways (skip with --new-tokens 0)

A prefill computes the last position's logits only (what generation needs; the full 49k-wide
logits of every position would otherwise dominate). Before timing, the two ways are checked
to give the same output: the last-position logits within --atol, and the same generated
tokens. Cases run interleaved in a shuffled order each round (bench_speed.measure) and each
case's time is the median over rounds. Writes `benchmarks/results/multi_adapter.json`
(tokens per second, medians, ratios, raw times, the command, machine, date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from bench_speed import machine, measure

from dynalora.adapters import DynaLoraModel, LoraConfig
from dynalora.files import write_json
from dynalora.llm.models import load_causal_lm

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
RATIOS = {
    "per_row_prefill / sequential_prefill": ("per_row_prefill", "sequential_prefill"),
    "per_row_prefill / one_adapter_prefill": ("per_row_prefill", "one_adapter_prefill"),
    "per_row_generate / sequential_generate": ("per_row_generate", "sequential_generate"),
}


def serving_model(source: str | None, n_adapters: int, rank: int, alpha: float, seed: int) -> DynaLoraModel:
    """The base with adapters "0", "1", ... whose B are random (a fresh adapter's B is 0)."""
    base, _ = load_causal_lm(source)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, alpha=alpha, dropout=0.0, target_modules=TARGETS)
    wrapper = DynaLoraModel(base, config, adapter_name="0")
    for name in range(1, n_adapters):
        wrapper.add_adapter(str(name), config)
    with torch.no_grad():
        for name in wrapper.configs:
            for adapter in wrapper.adapter_modules(name).values():
                torch.nn.init.normal_(adapter.lora_B, std=0.02)
    for p in wrapper.parameters():
        p.requires_grad_(False)
    return wrapper.eval()


def row_groups(names: list[str]) -> dict[str, torch.Tensor]:
    """Adapter name -> the batch rows it serves."""
    return {n: torch.tensor([i for i, m in enumerate(names) if m == n]) for n in dict.fromkeys(names)}


def prefill_per_row(model: DynaLoraModel, names: list[str], batch: dict) -> torch.Tensor:
    with torch.inference_mode(), model.per_row_adapters(names):
        return model(**batch, logits_to_keep=1).logits[:, -1]


def prefill_sequential(model: DynaLoraModel, names: list[str], batch: dict) -> torch.Tensor:
    out = None
    with torch.inference_mode():
        for name, rows in row_groups(names).items():
            model.set_adapter(name)
            logits = model(**{k: v[rows] for k, v in batch.items()}, logits_to_keep=1).logits[:, -1]
            out = logits.new_empty(len(names), logits.shape[-1]) if out is None else out
            out[rows] = logits
    return out


def prefill_one_adapter(model: DynaLoraModel, names: list[str], batch: dict) -> torch.Tensor:
    model.set_adapter(names[0])
    with torch.inference_mode():
        return model(**batch, logits_to_keep=1).logits[:, -1]


def generate_kwargs(new_tokens: int) -> dict:
    # Exactly `new_tokens` per row (no early stop at EOS), greedy: every way does the same work.
    return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
            "temperature": None, "top_p": None, "top_k": None, "pad_token_id": 0}


def generate_per_row(model: DynaLoraModel, names: list[str], batch: dict, new_tokens: int) -> torch.Tensor:
    with torch.inference_mode(), model.per_row_adapters(names):
        return model.generate(**batch, **generate_kwargs(new_tokens))


def generate_sequential(model: DynaLoraModel, names: list[str], batch: dict, new_tokens: int) -> torch.Tensor:
    out = None
    with torch.inference_mode():
        for name, rows in row_groups(names).items():
            model.set_adapter(name)
            tokens = model.generate(**{k: v[rows] for k, v in batch.items()}, **generate_kwargs(new_tokens))
            out = tokens.new_empty(len(names), tokens.shape[1]) if out is None else out
            out[rows] = tokens
    return out


def make_batch(batch: int, seq: int, vocab: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(100, vocab, (batch, seq), generator=generator),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def check_same_outputs(model: DynaLoraModel, names: list[str], prefill: dict, prompt: dict,
                       new_tokens: int, atol: float) -> dict:
    """Assert that both ways give the same outputs (and that the adapters differ at all)."""
    per_row = prefill_per_row(model, names, prefill)
    sequential = prefill_sequential(model, names, prefill)
    diff = float((per_row - sequential).abs().max())
    assert diff <= atol, f"per-row and sequential logits differ by {diff} > {atol}"
    spread = float((per_row - prefill_one_adapter(model, names, prefill)).abs().max())
    assert spread > 100 * max(diff, 1e-6), f"the adapters barely differ ({spread}); the comparison would be empty"
    result = {"prefill_max_abs_diff": diff, "prefill_max_abs_diff_vs_one_adapter": spread}
    if new_tokens:
        together = generate_per_row(model, names, prompt, new_tokens)
        apart = generate_sequential(model, names, prompt, new_tokens)
        assert torch.equal(together, apart), "per-row and sequential generation produced different tokens"
        result["generated_tokens_equal"] = True
    return result


def build_cases(model: DynaLoraModel, names: list[str], args: argparse.Namespace) -> dict[str, Callable[[dict], None]]:
    """Each case takes a round's inputs: {"prefill": batch, "prompt": batch}."""
    cases = {
        "per_row_prefill": lambda inputs: prefill_per_row(model, names, inputs["prefill"]),
        "sequential_prefill": lambda inputs: prefill_sequential(model, names, inputs["prefill"]),
        "one_adapter_prefill": lambda inputs: prefill_one_adapter(model, names, inputs["prefill"]),
    }
    if args.new_tokens:
        cases["per_row_generate"] = lambda inputs: generate_per_row(model, names, inputs["prompt"], args.new_tokens)
        cases["sequential_generate"] = lambda inputs: generate_sequential(model, names, inputs["prompt"],
                                                                          args.new_tokens)
    return cases


def tokens_per_case(args: argparse.Namespace) -> dict[str, int]:
    """Tokens one call of a case handles: prompt tokens for a prefill, new tokens for generation."""
    counts = {f"{way}_prefill": args.batch * args.seq for way in ("per_row", "sequential", "one_adapter")}
    counts.update({f"{way}_generate": args.batch * args.new_tokens for way in ("per_row", "sequential")})
    return counts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="causal LM folder/.gguf (default: the packaged SmolLM2)")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--batch", type=int, default=8, help="rows per batch (a multiple of --adapters)")
    parser.add_argument("--seq", type=int, default=128, help="prefill tokens per row")
    parser.add_argument("--gen-prompt", type=int, default=32, help="prompt tokens per row before generating")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per row; 0: no generation")
    parser.add_argument("--repeats", type=int, default=10, help="measured rounds per case")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    parser.add_argument("--atol", type=float, default=1e-3, help="largest logit difference allowed between the ways")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); on a machine shared with "
                             "other jobs 1 thread avoids threads waiting on each other")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "multi_adapter.json"))
    args = parser.parse_args(argv)
    if args.adapters < 2 or args.batch % args.adapters:
        parser.error(f"--batch {args.batch} must be a multiple of --adapters {args.adapters} (at least 2)")

    if args.threads:
        torch.set_num_threads(args.threads)
    model = serving_model(args.model, args.adapters, args.rank, args.alpha, args.seed)
    names = [str(i % args.adapters) for i in range(args.batch)]
    vocab = model.base_model.config.vocab_size
    inputs = {"prefill": make_batch(args.batch, args.seq, vocab, args.seed),
              "prompt": make_batch(args.batch, args.gen_prompt, vocab, args.seed + 1)}
    checks = check_same_outputs(model, names, inputs["prefill"], inputs["prompt"], args.new_tokens, args.atol)
    print(f"outputs agree: {checks}", flush=True)
    times = measure(build_cases(model, names, args), [inputs], args.repeats, args.warmup, args.seed)
    medians = {name: statistics.median(t) for name, t in times.items()}
    tokens = tokens_per_case(args)
    result = {
        "command": " ".join([".venv/bin/python", "benchmarks/bench_multi_adapter.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "model": args.model or "packaged SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to fp32)",
        "row_adapters": names,
        "checks": checks,
        "tokens_per_call": {name: tokens[name] for name in medians},
        "tokens_per_second": {name: tokens[name] / medians[name] for name in medians},
        "median_seconds": medians,
        "ratios": {label: medians[a] / medians[b] for label, (a, b) in RATIOS.items()
                   if a in medians and b in medians},
        "times": times,
    }
    write_json(args.output, result)
    print(json.dumps({k: result[k] for k in ("tokens_per_second", "median_seconds", "ratios")}, indent=2))
    return result


if __name__ == "__main__":
    main()
