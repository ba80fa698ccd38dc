"""One bench run in its own process: `python -m dynalora.bench.worker RUN_FOLDER`.

Reads `spec.json`, trains with `dynalora.training.train` into `RUN_FOLDER`, reloads the
best model onto the device it trained on, measures its cost (see `dynalora.bench.measure`)
and writes `result.json`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from dynalora.bench.measure import peak_rss_bytes, rss_bytes


def lora_budget(model: Any, rank: int) -> int | None:
    """What uniform LoRA at `rank` on the same layers would spend: sum r (d + k)."""
    from dynalora.bench.measure import adapter_shapes

    shapes = adapter_shapes(model)
    return sum(rank * (i + o) for _, _, i, o in shapes) if shapes else None


def main(folder: str) -> None:
    baseline = rss_bytes()
    import shutil

    from dynalora.bench.measure import (
        adapter_budget,
        latency_ms,
        latency_seq_len,
        merge_for_inference,
        peak_gpu_bytes,
    )
    from dynalora.data import get_task
    from dynalora.files import read_json, write_json
    from dynalora.training import TrainConfig, load_trained, train
    from dynalora.training.optim import pick_device

    baseline = max(baseline, rss_bytes())  # after the imports, before any model exists
    run = Path(folder)
    spec = read_json(run / "spec.json", "bench run spec")
    # The bench owns this folder: a run whose spec changed replaces the old one's results.
    config = TrainConfig(**{**spec["train"], "output": str(run), "overwrite": True})
    prefix = os.environ.get("DYNALORA_BENCH_PREFIX", "")
    device = pick_device(config.device)
    metrics = train(config)
    peak = peak_rss_bytes()
    peak_gpu = peak_gpu_bytes(device)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)  # resumability is per run here; save disk

    model, _, _ = load_trained(run, device=str(device))
    budget = adapter_budget(model)
    reference = lora_budget(model, config.rank)
    model, merged = merge_for_inference(model)
    repeats, seq = spec["latency_repeats"], latency_seq_len(model, spec["seq_len"])
    cost = {
        "train_seconds": metrics["train_wall_s"],
        "steps": metrics["steps"],
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "trainable_share_pct": 100.0 * metrics["trainable_params"] / metrics["total_params"],
        "adapter_params": budget,
        "lora_budget": reference,
        "budget_vs_lora": budget / reference if budget is not None and reference else None,
        "merged": merged,
        "device": str(device),
        "latency_seq_len": seq,
        "latency_b1_ms": latency_ms(model, 1, seq, 2 * repeats),
        "latency_b32_ms": latency_ms(model, 32, seq, repeats),
        "peak_rss_mb": peak / 2**20,
        "peak_rss_delta_mb": (peak - baseline) / 2**20,
        "peak_gpu_mb": None if peak_gpu is None else peak_gpu / 2**20,
    }
    result = {"task": metrics["task"], "method": metrics["method"], "seed": config.seed,
              "task_metric": get_task(metrics["task"]).main_metric, "metrics": metrics["metrics"],
              "best_step": metrics["best_step"], "cost": cost, "spec": spec}
    write_json(run / "result.json", result)
    if prefix:
        print(f"{prefix}: measured (latency b32 {cost['latency_b32_ms']:.0f} ms, peak RSS "
              f"{cost['peak_rss_mb']:.0f} MB)", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m dynalora.bench.worker RUN_FOLDER")
    main(sys.argv[1])
