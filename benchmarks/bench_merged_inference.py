"""Is a merged LoRA model exactly as fast as the base model? Structure check + paired timing.

    .venv/bin/python benchmarks/bench_merged_inference.py [--rounds 60] [--batch 16] [--seq 128]

`bench_speed.py` timed `merged_infer` on a model merged *in place*: the LoRA wrappers stay in
the forward (skipping their merged adapters), which is not what a user deploys. Deployment
goes through `merge_and_unload()` (or `save_merged`, which writes the same weights). This
script first checks that the unloaded model has exactly the base model's structure (module
types, parameter names/shapes/strides/dtypes, no forward hooks left), then times no-grad
forwards of: the base model, the merge_and_unload output, and the in-place merged wrapper.
Cases run interleaved in a shuffled order each round; each round gives a paired ratio
(case / base on the same batch and moment), and we report the median paired ratio with a
bootstrap 95% interval, plus the load average (the machine is shared).

Writes `benchmarks/results/merged_inference.json`.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from bench_common import interleaved_rounds, load_average, paired_summary, result_header

from dynalora.adapters import LoraConfig, get_lora_model
from dynalora.files import write_json
from dynalora.training.classifier import build_classifier, default_model_path


def structure(model: torch.nn.Module) -> dict[str, object]:
    """What the forward runs through: module types, parameters and their layout, hooks."""
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in model.modules())
    return {
        "modules": [type(m).__name__ for m in model.modules()],
        "parameters": [(n, tuple(p.shape), p.stride(), str(p.dtype), p.is_contiguous())
                       for n, p in model.named_parameters()],
        "hooks": hooks,
    }


def inference(model: torch.nn.Module):
    model.eval()

    def run(batch: dict) -> None:
        with torch.inference_mode():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "merged_inference.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_classifier(default_model_path(), num_labels=2, backbone_dropout=0.0)
    config = LoraConfig(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
    unloaded_wrapper = get_lora_model(copy.deepcopy(base), config)
    in_place = get_lora_model(copy.deepcopy(base), config)
    for wrapper in (unloaded_wrapper, in_place):
        torch.manual_seed(1)
        for adapter in wrapper.adapter_modules().values():  # a real (non-zero) update to fold in
            torch.nn.init.normal_(adapter.lora_B, std=0.01)
    in_place.merge()
    unloaded = unloaded_wrapper.merge_and_unload()

    same = structure(unloaded) == structure(base)
    print(f"merge_and_unload output has the base model's exact structure: {same}", flush=True)
    cases = {"base": inference(base), "merge_and_unload": inference(unloaded),
             "merged_in_place_wrapper": inference(in_place)}
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(1000, 30522, (args.batch, args.seq), generator=gen),
                "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long)} for _ in range(4)]
    load_before = load_average()
    times = interleaved_rounds(cases, batches, args.rounds, args.warmup)
    summary = paired_summary(times, {f"{name} / base": (name, "base") for name in cases if name != "base"})
    result = {
        **result_header("bench_merged_inference.py", argv, args, load_before),
        "same_structure_as_base": same,
        "unloaded_structure": {"hooks": structure(unloaded)["hooks"],
                               "lora_modules_left": sum("Lora" in t for t in structure(unloaded)["modules"])},
        **summary,
        "times": times,
    }
    write_json(args.output, result)
    print(json.dumps({k: result[k] for k in ("median_seconds", "median_paired_ratio", "ratio_95ci",
                                             "load_average_before_after")}, indent=2))
    return result


if __name__ == "__main__":
    main()
