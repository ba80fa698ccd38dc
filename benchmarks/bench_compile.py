"""Does `torch.compile` pay for a LoRA fine-tune on this machine? Steady-state training step
time compiled against eager, and how many steps the compilation takes to earn back.

    .venv/bin/python benchmarks/bench_compile.py [--rounds 20] [--batch 32] [--lengths 32 48 64 96 128]

Real MiniLM, LoRA r=8 on query/value of every layer, mean-pooling head, AdamW step (the step of
`bench_speed.py`). Batches come in several sequence lengths, as length-bucketed training gives
them, so the compiled model must handle changing shapes (dynamo recompiles once, then marks the
length dynamic). First, each case runs every batch once and that time is kept apart (for the
compiled case it is the compilation); then both cases run interleaved rounds on the same batches
(paired ratios, median, bootstrap 95% interval, load average recorded).

Compilation is timed cold: inductor's on-disk cache (compiled C++ kernels, FX graphs) goes to a
fresh temporary folder, since a cache left by an earlier run makes "compiling" a 13 s lookup
instead of minutes of work (measured here). `--warm-cache` keeps the user's cache, as a second
run of the same training would.

Writes `benchmarks/results/compile.json`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_common import interleaved_rounds, load_average, paired_summary, result_header
from bench_speed import training_step

from dynalora.adapters import LoraConfig, get_lora_model
from dynalora.files import write_json
from dynalora.training.classifier import build_classifier, default_model_path


def first_pass_seconds(step, batches: list[dict]) -> float:
    """Seconds to run each batch once (compilation included for a compiled model)."""
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return time.perf_counter() - start


def break_even_steps(extra_s: float, summary: dict) -> float | None:
    """Steps until compiling has paid for itself, from the paired ratio (the per-step saving is
    the eager median times 1 - ratio); None when the ratio's 95% interval holds 1, that is when
    no saving was measured, however long one trains."""
    low, high = summary["ratio_95ci"]["compiled / eager"]
    if low <= 1.0 <= high:
        return None
    saving = summary["median_seconds"]["eager"] * (1 - summary["median_paired_ratio"]["compiled / eager"])
    return max(0.0, extra_s) / saving if saving > 0 else None  # a warm cache may compile for free


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 48, 64, 96, 128])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warm-cache", action="store_true",
                        help="use inductor's existing on-disk cache instead of a fresh one (times a warm compile)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "compile.json"))
    args = parser.parse_args(argv)
    if min(args.lengths) < 1 or args.batch < 1 or args.rounds < 1:
        parser.error("--lengths, --batch and --rounds must be positive")
    if args.warm_cache:
        return measure(args, argv)
    with tempfile.TemporaryDirectory(prefix="dynalora-inductor-") as cache:
        previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read when inductor first compiles
        try:
            return measure(args, argv)
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_classifier(default_model_path(), num_labels=2, backbone_dropout=0.0, head_dropout=0.0)
    config = LoraConfig(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
    eager = get_lora_model(copy.deepcopy(base), config)
    compiled_model = get_lora_model(copy.deepcopy(base), config)
    compiled_model.load_state_dict(eager.state_dict())  # the same start: only the execution differs
    cases = {"eager": training_step(eager), "compiled": training_step(torch.compile(compiled_model))}
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(1000, 30522, (args.batch, n), generator=gen),
                "attention_mask": torch.ones(args.batch, n, dtype=torch.long),
                "labels": torch.randint(0, 2, (args.batch,), generator=gen)} for n in args.lengths]
    load_before = load_average()
    first = {name: first_pass_seconds(step, batches) for name, step in cases.items()}
    times = interleaved_rounds(cases, batches, args.rounds, args.warmup)
    summary = paired_summary(times, {"compiled / eager": ("compiled", "eager")})
    extra = first["compiled"] - first["eager"]  # what compiling cost on top of one eager pass
    result = {
        **result_header("bench_compile.py", argv, args, load_before),
        "inductor_cache": "warm (the user's)" if args.warm_cache else "fresh (cold compile)",
        "first_pass_seconds": first,
        "compile_overhead_s": extra,
        "break_even_steps": break_even_steps(extra, summary),
        **summary,
        "times": times,
    }
    write_json(args.output, result)
    print(json.dumps({k: result[k] for k in ("first_pass_seconds", "compile_overhead_s", "break_even_steps",
                                             "median_seconds", "median_paired_ratio", "ratio_95ci")}, indent=2))
    return result


if __name__ == "__main__":
    main()
