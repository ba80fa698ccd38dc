"""Speed ratios measured side by side in one process: our LoRA against PEFT and the bounds.

    .venv/bin/python benchmarks/bench_speed.py [--steps 20] [--batch 32] [--seq 128]

Every case sees the same batches (random token ids of batch x seq, full attention mask),
cases run interleaved in a shuffled order each round, and each case's time is the median
over the rounds, so drifting machine load hits every case alike. Cases (real MiniLM, the
mean-pooling classifier the trainer uses, r=8 on query/value, AdamW):

* ours_lora_step      forward + backward + optimizer step, dynalora LoRA
* peft_lora_step      the same with Hugging Face PEFT's LoRA (same targets, rank, alpha)
* dynamic_step        dynalora dynamic LoRA with its controller hook after each step
* lower_bound_step    frozen model, forward + backward to the input embeddings only: what
                      any adapter that sits in the first layer must at least pay
* base_infer / merged_infer / unmerged_infer   no-grad forward of the plain base model, of
                      our LoRA merged into it, and of our LoRA unmerged

Writes `benchmarks/results/speed.json` (medians, ratios, raw times, command, machine).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import interleaved_rounds

from dynalora.adapters import LoraConfig, get_lora_model
from dynalora.files import write_json
from dynalora.training.classifier import build_classifier, default_model_path

RATIOS = {
    "ours_lora_step / peft_lora_step": ("ours_lora_step", "peft_lora_step"),
    "dynamic_step / ours_lora_step": ("dynamic_step", "ours_lora_step"),
    "ours_lora_step / lower_bound_step": ("ours_lora_step", "lower_bound_step"),
    "merged_infer / base_infer": ("merged_infer", "base_infer"),
    "unmerged_infer / base_infer": ("unmerged_infer", "base_infer"),
}


def training_step(model: torch.nn.Module, make_hooks: Callable[[torch.optim.Optimizer], list] | None = None
                  ) -> Callable[[dict], None]:
    """One AdamW step; `make_hooks(optimizer)` builds step hooks (e.g. the allocation controller)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    hooks = make_hooks(optimizer) if make_hooks else []
    state = {"step": 0}

    def step(batch: dict) -> None:
        model.train()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        F.cross_entropy(logits, batch["labels"]).backward()
        optimizer.step()
        state["step"] += 1
        for hook in hooks:
            hook.after_optimizer_step(state["step"])
        optimizer.zero_grad(set_to_none=True)

    return step


def lower_bound_step(model: torch.nn.Module) -> Callable[[dict], None]:
    """Gradients flow through every layer to the input embeddings; no parameter is trained."""
    for p in model.parameters():
        p.requires_grad_(False)
    embed = model.backbone.get_input_embeddings()

    def step(batch: dict) -> None:
        model.train()
        inputs = embed(batch["input_ids"]).detach().requires_grad_(True)
        hidden = model.backbone(inputs_embeds=inputs, attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        logits = model.head((hidden * mask).sum(1) / mask.sum(1))
        F.cross_entropy(logits, batch["labels"]).backward()

    return step


def inference(model: torch.nn.Module) -> Callable[[dict], None]:
    def run(batch: dict) -> None:
        model.eval()
        with torch.inference_mode():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    return run


def peft_lora(model: torch.nn.Module, r: int, alpha: float) -> torch.nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    config = PeftLoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=["query", "value"],
                            modules_to_save=["classifier"])
    return get_peft_model(model, config)


def dynamic_case(base: torch.nn.Module, r: int, alpha: float, total_steps: int) -> Callable[[dict], None] | None:
    """Dynamic LoRA with its controller, or None when dynalora.allocation lacks the pieces."""
    try:
        from dynalora.allocation import AllocationController, DynamicLoraConfig
    except ImportError as err:
        print(f"dynamic_step skipped: {err}", file=sys.stderr)
        return None
    config = DynamicLoraConfig(r=r, alpha=alpha, target_modules=["query", "value"], modules_to_save=["classifier"])
    model = get_lora_model(base, config)
    return training_step(model, lambda opt: [AllocationController(model, opt, total_steps=total_steps)])


def make_batches(n: int, batch: int, seq: int, vocab: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [{
        "input_ids": torch.randint(1000, vocab, (batch, seq), generator=gen),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=gen),
    } for _ in range(n)]


def build_cases(args: argparse.Namespace) -> dict[str, Callable[[dict], None]]:
    torch.manual_seed(0)
    base = build_classifier(args.model, num_labels=2, pooling="mean", backbone_dropout=0.0)
    fresh = lambda: copy.deepcopy(base)  # noqa: E731 - identical starting weights for every case
    cases = {
        "ours_lora_step": training_step(get_lora_model(fresh(), lora_config(args))),
        "peft_lora_step": training_step(peft_lora(fresh(), args.rank, args.alpha)),
        "lower_bound_step": lower_bound_step(fresh()),
        "base_infer": inference(fresh()),
    }
    dynamic = dynamic_case(fresh(), args.rank, args.alpha, args.steps + args.warmup)
    if dynamic is not None:
        cases["dynamic_step"] = dynamic
    merged = get_lora_model(fresh(), lora_config(args))
    unmerged = get_lora_model(fresh(), lora_config(args))
    for model in (merged, unmerged):  # a non-zero B so the update is real
        for adapter in model.adapter_modules().values():
            torch.nn.init.normal_(adapter.lora_B, std=0.01)
    merged.merge()
    cases["merged_infer"] = inference(merged)
    cases["unmerged_infer"] = inference(unmerged)
    return {name: cases[name] for name in args.cases if name in cases}


def lora_config(args: argparse.Namespace) -> LoraConfig:
    return LoraConfig(r=args.rank, alpha=args.alpha, target_modules=["query", "value"], modules_to_save=["classifier"])


def measure(cases: dict[str, Callable[[dict], None]], batches: list[dict], steps: int, warmup: int,
            seed: int) -> dict[str, list[float]]:
    return interleaved_rounds(cases, batches, steps, warmup, seed, progress=True)


def machine() -> dict[str, object]:
    import peft
    import transformers

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="encoder folder (default: the packaged MiniLM)")
    parser.add_argument("--steps", type=int, default=20, help="measured rounds per case")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", nargs="+", default=["ours_lora_step", "peft_lora_step", "dynamic_step",
                                                      "lower_bound_step", "base_infer", "merged_infer",
                                                      "unmerged_infer"])
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "speed.json"))
    args = parser.parse_args(argv)
    args.model = args.model or str(default_model_path())
    cases = build_cases(args)
    batches = make_batches(4, args.batch, args.seq, vocab=30522, seed=args.seed)
    times = measure(cases, batches, args.steps, args.warmup, args.seed)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {label: medians[a] / medians[b] for label, (a, b) in RATIOS.items() if a in medians and b in medians}
    result = {
        "command": " ".join([".venv/bin/python", "benchmarks/bench_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "cases")},
        "median_seconds": medians,
        "ratios": ratios,
        "times": times,
    }
    write_json(args.output, result)
    print(json.dumps({"median_seconds": medians, "ratios": ratios}, indent=2))
    return result


if __name__ == "__main__":
    main()
