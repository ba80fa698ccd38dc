"""Keeping the processes of a data-parallel run identical: gradients, parameters, statistics.

Why not `DistributedDataParallel`: DDP registers the parameters (and their gradient buckets)
when it is built, and dynamic LoRA replaces adapter parameters by new, differently shaped
ones at every reallocation; the wrapper would have to be torn down and rebuilt each time,
and layers pruned to rank 0 leave parameters without gradients (DDP's "unused parameter"
errors). Instead every process runs the plain model and, once per optimizer step, the
gradients of whatever the optimizer holds *now* are summed in one flattened all-reduce,
so synchronisation follows resizes with nothing to rebuild. Under gradient accumulation
this is one collective per step, as DDP's `no_sync()` would give.

The all-reduce is a SUM: each process scales its loss by its share of the global batch's
loss units (rows, or label tokens), so the summed gradient is the gradient of the mean loss
over the whole global batch, exactly what one process computes on that batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from dynalora.distributed.context import current


def all_reduce_gradients(params: Sequence[torch.Tensor], extra: Sequence[float] = ()) -> list[float]:
    """Sum the gradients of `params` over all processes in place; returns `extra` summed too.

    A parameter that got no gradient in any process keeps `grad is None` (the optimizer skips
    it, as alone); one that got a gradient somewhere gets the sum, with zeros for the others.
    `extra`: scalars (e.g. this process's share of the loss) that ride along in the same call.
    """
    if not current().distributed:
        return list(extra)
    params = list(params)
    if not params:
        summed = torch.tensor(list(extra), dtype=torch.float64)
        dist.all_reduce(summed)
        return summed.tolist()
    device = params[0].device
    # One buffer in float32 (adapter and head parameters are float32 even under autocast);
    # gradient presence and the extra scalars travel as the first entries.
    presence = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    scalars = torch.tensor(list(extra), dtype=torch.float32, device=device)
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
    flat = torch.cat([presence, scalars, *grads])
    dist.all_reduce(flat)
    n, k = len(params), len(scalars)
    present = flat[:n] > 0
    summed = flat[n:n + k].tolist()
    chunks = torch.split(flat[n + k:], [p.numel() for p in params])
    for p, chunk, has in zip(params, chunks, present.tolist()):
        p.grad = chunk.view_as(p).to(p.dtype).clone() if has else None
    return summed


def broadcast_parameters(params: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite `params` everywhere with process `src`'s values (one flattened broadcast).

    Used after a reallocation, as a safeguard: every process computes the same resized
    adapters (fresh rows come from a generator seeded by the step), but a decomposition (the
    SVD shrink) may round differently on different devices.
    """
    if not current().distributed:
        return
    params = [p for p in params if p.numel()]
    if not params:
        return
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).float() for p in params])
        dist.broadcast(flat, src)
        for p, chunk in zip(params, torch.split(flat, [p.numel() for p in params])):
            p.copy_(chunk.view_as(p))


def gather_objects(value: Any) -> list[Any]:
    """Every process's `value` (picklable), in rank order; [value] alone."""
    info = current()
    if not info.distributed:
        return [value]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Process `src`'s `value`, everywhere."""
    if not current().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src)
    return box[0]


def rank_digest(ranks: dict[str, int]) -> str:
    """A short fingerprint of a per-layer rank pattern (equal patterns, equal digests)."""
    text = json.dumps(sorted(ranks.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A fingerprint of named tensors' exact bytes (to show that processes hold the same ones)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
