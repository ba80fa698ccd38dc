"""What adapting only the upper layers saves, and whether running the frozen lower layers
under `torch.no_grad()` saves more.

    .venv/bin/python benchmarks/bench_frozen_prefix.py [--rounds 20] [--batch 32] [--seq 64]

Cases (real MiniLM, 6 layers, LoRA r=8 on query/value, mean-pooling head, AdamW step):

* all_layers            adapters in layers 0-5
* top_half              adapters in layers 3-5 only
* top_half_no_grad      the same, with layers 0-2 and the embeddings run with autograd
                        switched off by forward hooks (the "frozen prefix" lever)

Autograd records an operation only when one of its inputs requires grad; below the lowest
adapted layer nothing does (frozen weights, token ids in), so `top_half` should already
store no activations and run no backward there, and the lever should add nothing. Cases run
interleaved in a shuffled order each round (paired ratios per round, median, bootstrap 95%
interval; load average recorded: the machine is shared).

Writes `benchmarks/results/frozen_prefix.json`.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import interleaved_rounds, load_average, paired_summary, result_header

from dynalora.adapters import LoraConfig, get_lora_model
from dynalora.files import write_json
from dynalora.training.classifier import build_classifier, default_model_path


def no_grad_below(backbone: torch.nn.Module, first_trained_layer: int) -> None:
    """Forward hooks: autograd off from the embeddings up to layer `first_trained_layer`."""
    saved: list[bool] = []

    def off(module, args, kwargs):
        saved.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def on(module, args):
        torch.set_grad_enabled(saved[-1])

    def restore(module, args, kwargs, output):
        torch.set_grad_enabled(saved.pop())

    backbone.register_forward_pre_hook(off, with_kwargs=True)
    backbone.encoder.layer[first_trained_layer].register_forward_pre_hook(on)
    backbone.register_forward_hook(restore, with_kwargs=True)


def training_step(model: torch.nn.Module):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step(batch: dict) -> None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        F.cross_entropy(logits, batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def layers_regex(layers: range) -> str:
    return r".*encoder\.layer\.(" + "|".join(map(str, layers)) + r")\.attention\.self\.(query|value)"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "frozen_prefix.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_classifier(default_model_path(), num_labels=2, backbone_dropout=0.0, head_dropout=0.0)
    n_layers = len(base.backbone.encoder.layer)
    half = n_layers // 2

    def lora(layers: range) -> torch.nn.Module:
        return get_lora_model(copy.deepcopy(base), LoraConfig(r=8, alpha=16, target_modules=layers_regex(layers),
                                                              modules_to_save=["classifier"]))

    lever = lora(range(half, n_layers))
    no_grad_below(lever.base_model.backbone, half)
    cases = {"all_layers": training_step(lora(range(n_layers))),
             "top_half": training_step(lora(range(half, n_layers))),
             "top_half_no_grad": training_step(lever)}
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(1000, 30522, (args.batch, args.seq), generator=gen),
                "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
                "labels": torch.randint(0, 2, (args.batch,), generator=gen)} for _ in range(4)]
    load_before = load_average()
    times = interleaved_rounds(cases, batches, args.rounds, args.warmup)
    summary = paired_summary(times, {"top_half / all_layers": ("top_half", "all_layers"),
                                    "top_half_no_grad / top_half": ("top_half_no_grad", "top_half")})
    result = {
        **result_header("bench_frozen_prefix.py", argv, args, load_before),
        **summary,
        "times": times,
    }
    write_json(args.output, result)
    print(json.dumps({k: result[k] for k in ("median_seconds", "median_paired_ratio", "ratio_95ci",
                                             "load_average_before_after")}, indent=2))
    return result


if __name__ == "__main__":
    main()
