"""Cost figures of a trained run: parameter budget, inference latency, memory.

Latency: median wall time of a no-grad forward of random token ids (batch 1 and batch 32,
`seq_len` tokens, full attention mask) after two warm-up calls, on the trained model merged
into its base where the method allows (LoRA family, PEFT); the Houlsby adapter and
input-gated adapters stay as they are. Shapes are fixed so every method sees the same work.
Memory: peak resident set size of the process that trained (Linux `ru_maxrss`), and that
peak minus the resident size measured after imports, before the model was loaded: CPU
training has no allocator statistics like CUDA's, and tracemalloc does not see torch's
buffers, so RSS is the honest measure here.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from dynalora.adapters import DynaLoraModel


def rss_bytes() -> int:
    """Current resident set size of this process."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _peft_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("peft")


def adapter_shapes(model: nn.Module) -> list[tuple[str, int, int, int]]:
    """(layer, live rank, in, out) of every low-rank adapter in `model` (ours or PEFT's)."""
    if isinstance(model, DynaLoraModel):
        return [(n, a.r, a.in_features, a.out_features) for n, a in model.adapter_modules().items()]
    if not _peft_model(model):
        return []
    shapes = []
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, nn.ParameterDict | nn.ModuleDict) or "default" not in lora_a:
            continue
        a = lora_a["default"]
        weight = a.weight if isinstance(a, nn.Linear) else a
        rank, in_features = weight.shape
        lora_e = getattr(module, "lora_E", None)
        if lora_e is not None and "default" in lora_e:  # AdaLoRA: live rank = non-zero singular values
            rank = int((lora_e["default"] != 0).sum())
        out_features = module.get_base_layer().weight.shape[0]
        shapes.append((name, int(rank), int(in_features), int(out_features)))
    return shapes


def adapter_budget(model: nn.Module) -> int | None:
    """sum over adapted layers of r_l (d_l + k_l): METHOD.md's budget, with live ranks."""
    shapes = adapter_shapes(model)
    return sum(r * (i + o) for _, r, i, o in shapes) if shapes else None


def merge_for_inference(model: nn.Module) -> tuple[nn.Module, str]:
    """The model to time and whether it was merged: "yes", "no" (cannot) or "n/a" (nothing to merge)."""
    if isinstance(model, DynaLoraModel):
        try:
            model.merge()
        except RuntimeError:
            return model, "no"
        return model, "yes"
    if _peft_model(model):
        return model.merge_and_unload(), "yes"
    has_extra = any("adapter" in n for n, _ in model.named_modules())  # Houlsby bottlenecks
    return model, "no" if has_extra else "n/a"


@torch.inference_mode()
def latency_ms(model: nn.Module, batch_size: int, seq_len: int, repeats: int, seed: int = 0) -> float:
    model.eval()
    vocab = getattr(getattr(model, "config", None), "vocab_size", 1000)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab - 1), vocab, (batch_size, seq_len), generator=gen)
    mask = torch.ones_like(ids)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
