"""Cost figures of a trained run: parameter budget, inference latency, memory.

Latency: median wall time of a no-grad forward of random token ids (batch 1 and batch 32,
`seq_len` tokens or the model's position limit if lower, full attention mask) after two warm-up calls, on the device the run trained
on, with the trained update merged into the base weights and the adapter layers removed where
the method allows (LoRA family, PEFT), so a merged method costs exactly what its base model
costs; the Houlsby adapter and input-gated adapters stay as they are. Shapes are fixed so
every method sees the same work.
Memory: the peak resident set size of the process that trained (the kernel's high-water mark
`VmHWM` of this process's own memory), and that peak minus the resident size measured after
imports, before the model was loaded: CPU training has no allocator statistics like CUDA's,
and tracemalloc does not see torch's buffers, so RSS is the honest measure here. Not
`getrusage().ru_maxrss`: Linux carries that figure over `exec` from the parent, so a worker
started by a large bench process would report the parent's peak. On CUDA the peak of
allocated GPU memory (`torch.cuda.max_memory_allocated`) is reported as well.
"""

from __future__ import annotations

import resource
import statistics
import sys
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
    """Highest resident set size this process has had (since its `exec`)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    # No procfs: ru_maxrss (kB on Linux, bytes on macOS), which may include a parent's peak.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


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
    """sum over adapted layers of r_l (d_l + k_l): the budget of docs/method.md, with live ranks."""
    shapes = adapter_shapes(model)
    return sum(r * (i + o) for _, r, i, o in shapes) if shapes else None


def merge_for_inference(model: nn.Module) -> tuple[nn.Module, str]:
    """The model to time and whether it was merged: "yes", "no" (cannot) or "n/a" (nothing to merge)."""
    if isinstance(model, DynaLoraModel):
        try:
            # Unloaded too, not just merged: a merged LoraLayer still adds a wrapper call per layer.
            return model.merge_and_unload(), "yes"
        except RuntimeError:  # input-conditional gates; checked before anything changes
            return model, "no"
    if _peft_model(model):
        return model.merge_and_unload(), "yes"
    has_extra = any("adapter" in n for n, _ in model.named_modules())  # Houlsby bottlenecks
    return model, "no" if has_extra else "n/a"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gpu_bytes(device: torch.device) -> int | None:
    """Peak allocated CUDA memory of this process on `device`; None off CUDA."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def latency_seq_len(model: nn.Module, wanted: int) -> int:
    """`wanted`, or fewer tokens if the model has fewer positions (a shorter-context base)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(wanted, limit) if isinstance(limit, int) and limit > 0 else wanted


@torch.inference_mode()
def latency_ms(model: nn.Module, batch_size: int, seq_len: int, repeats: int, seed: int = 0) -> float:
    model.eval()
    vocab = getattr(getattr(model, "config", None), "vocab_size", 1000)
    gen = torch.Generator().manual_seed(seed)
    # Ids from 1000 up skip BERT's special and [unused] tokens (tiny test vocabularies: the upper half).
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch_size, seq_len), generator=gen)
    device = next(model.parameters()).device
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    times = []
    for i in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        synchronize(device)  # CUDA runs asynchronously: wait for the forward to finish
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
