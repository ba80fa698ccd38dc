"""Changing an adapter's rank in place, and keeping the optimizer consistent (docs/method.md, "Budgeted reallocation with resizing").

Every resize is one linear change of the rank-1 components:

    A_new = [M A ; fresh rows]        B_new = [B N , 0]        (gates: [M g ; 1])

with M (r_kept x r_old) and N (r_old x r_kept). Growing is M = N = I plus fresh rows of A
and zero columns of B, so the adapter's function is unchanged. Keeping a subset of the
components is M = selection rows, N = M^T. The SVD shrink keeps the best rank-r approximation
U_r S_r V_r^T of B A, written as A = c V_r^T, B = U_r S_r / c, where c is the old RMS row norm
of A: A keeps the scale it was initialised at and B carries the magnitude, as in plain LoRA
(a balanced sqrt(S) split would leave A tiny early in training and slow it down). For this
shrink M = c V_r^T pinv(A_old) and N = A_old V_r / c, both well conditioned even when B is
near zero.

Optimizer state moves through the same maps: first-moment-like tensors (exp_avg, momentum)
linearly, second-moment tensors (any state key containing "sq") through the squared maps,
which is exact for selections and treats components as independent otherwise; scalar entries
(Adam's `step`) are kept. New components get zero first moments; their second moments are
zero too (`seed=False`) or, by default, the mean over the existing components of the same
tensor: Adam's step counter is shared by the whole tensor, so with zeros its bias correction
no longer damps the first updates, and a grown component would move by 1-3 learning rates
while the trained ones move by a fraction of one. The new `nn.Parameter`s take the
old ones' places in `optimizer.param_groups`, so the optimizer holds exactly the live
parameters. Parameters are replaced (not resized in place) because optimizers, autograd and
`torch.compile` all assume a parameter's shape never changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dynalora.adapters.layer import LoraAdapter

GATE_PROJ_BIAS_INIT = 4.0  # fresh input-conditional gates start open, as in LoraAdapter


@dataclass
class ResizeResult:
    old_r: int
    new_r: int
    dropped: float = 0.0  # Frobenius norm of the dropped part of B A (SVD shrink), else 0


def unwrap_optimizer(optimizer: torch.optim.Optimizer | None) -> torch.optim.Optimizer | None:
    """The innermost torch optimizer (accelerate wraps the Trainer's in AcceleratedOptimizer)."""
    while optimizer is not None and isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def swap_parameter(optimizer: torch.optim.Optimizer | None, old: torch.Tensor, new: torch.Tensor,
                   transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> None:
    """Put `new` where `old` sits in the optimizer's param groups and carry its state over.

    transform(key, tensor) maps each state tensor shaped like `old` to one shaped like `new`;
    other entries (e.g. Adam's scalar `step`) are kept as they are. Without a transform the
    state of `old` is dropped.
    """
    optimizer = unwrap_optimizer(optimizer)
    if optimizer is None:
        return
    found = False
    for group in optimizer.param_groups:
        params = group["params"]
        for i, p in enumerate(params):
            if p is old:
                params[i] = new
                found = True
    if not found:
        raise ValueError(
            f"parameter of shape {tuple(old.shape)} is not in the optimizer; create the optimizer "
            "over the model's trainable parameters (adapters included)"
        )
    state = optimizer.state.pop(old, None)
    if state and transform is not None:
        optimizer.state[new] = {
            key: transform(key, value) if isinstance(value, torch.Tensor) and value.shape == old.shape else value
            for key, value in state.items()
        }


def _selection(M: torch.Tensor) -> torch.Tensor | None:
    """The kept indices when M is a selection (one 1 per row, zeros elsewhere), else None."""
    if M.numel() and bool(((M == 0) | (M == 1)).all()) and bool((M.sum(dim=1) == 1).all()):
        return M.argmax(dim=1)
    return None if M.numel() else M.new_zeros(0, dtype=torch.long)


def _rows(tensor: torch.Tensor, M: torch.Tensor, grow: int, fill: float | None = 0.0) -> torch.Tensor:
    """[M @ tensor ; `grow` rows of `fill`] for a tensor whose first dim indexes components.

    fill=None: the new rows are the mean of the kept rows (zeros when none is kept).
    Selections are indexed rather than multiplied, so kept values stay bit-exact whatever
    the matmul precision (TF32, bf16).
    """
    flat = tensor.reshape(tensor.shape[0], math.prod(tensor.shape[1:]))
    keep = _selection(M)
    if keep is not None:
        kept = flat.index_select(0, keep.to(flat.device))
    else:
        dtype = torch.promote_types(tensor.dtype, torch.float32)
        kept = (M.to(dtype) @ flat.to(dtype)).to(tensor.dtype)
    if fill is None:
        mean = kept.mean(dim=0, keepdim=True) if kept.shape[0] else flat.new_zeros(1, flat.shape[1])
        new = mean.expand(grow, -1)
    else:
        new = torch.full((grow, flat.shape[1]), fill, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([kept, new]).reshape(-1, *tensor.shape[1:])


def _cols(tensor: torch.Tensor, N: torch.Tensor, grow: int, fill: float | None = 0.0) -> torch.Tensor:
    """[tensor @ N , `grow` columns of `fill`] for B (out x r); fill=None as in `_rows`."""
    return _rows(tensor.T, N.T, grow, fill).T.contiguous()


def _is_second_moment(key: str) -> bool:
    return "sq" in key


def _replace(owner: nn.Module, attr: str, value: torch.Tensor,
             optimizer: torch.optim.Optimizer | None,
             transform: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    old = getattr(owner, attr)
    new = nn.Parameter(value.detach().contiguous(), requires_grad=old.requires_grad)
    setattr(owner, attr, new)
    swap_parameter(optimizer, old, new, transform)


def apply_component_map(adapter: LoraAdapter, M: torch.Tensor, N: torch.Tensor | None = None,
                        grow: int = 0, optimizer: torch.optim.Optimizer | None = None,
                        values: tuple[torch.Tensor, torch.Tensor] | None = None, seed: bool = True,
                        generator: torch.Generator | None = None,
                        direct: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """A <- [M A; fresh], B <- [B N, 0], gates <- [M g; open], optimizer state alike.

    seed: second moments of new components start at the kept components' mean (else 0).
    generator: where fresh A rows are drawn from (None: torch's global RNG).
    direct: maps the fresh random rows to the rows used (e.g. `grow_init.informed_rows`).
    `values` = (A_kept, B_kept) replaces M A and B N for the parameters themselves when the
    caller has them more accurately (the SVD shrink); the maps still move optimizer state.
    """
    r_old = adapter.r
    M = M.to(device=adapter.lora_A.device, dtype=torch.float32)
    N = M.T if N is None else N.to(device=adapter.lora_A.device, dtype=torch.float32)
    if M.shape[1] != r_old or N.shape[0] != r_old or M.shape[0] != N.shape[1]:
        raise ValueError(f"component maps {tuple(M.shape)} / {tuple(N.shape)} do not fit rank {r_old}")
    r_new = M.shape[0] + grow
    M2, N2 = M.pow(2), N.pow(2)
    seeded = None if seed else 0.0

    def row_map(key: str, t: torch.Tensor) -> torch.Tensor:
        if _is_second_moment(key):
            return _rows(t, M2, grow, seeded)
        return _rows(t, M, grow)

    def col_map(key: str, t: torch.Tensor) -> torch.Tensor:
        if _is_second_moment(key):
            return _cols(t, N2, grow, seeded)
        return _cols(t, N, grow)

    with torch.no_grad():
        A_kept, B_kept = values if values is not None else (
            _rows(adapter.lora_A, M, 0), _cols(adapter.lora_B, N, 0))
        # Fresh rows drawn as if the adapter were created at the new rank (the Gaussian init's
        # std depends on the rank), then the last `grow` of them taken.
        fresh = adapter.new_A_rows(r_new, like=adapter.lora_A, generator=generator)[r_new - grow:] if grow else A_kept[:0]
        if direct is not None and grow:
            fresh = direct(fresh)
        # Both parts in the adapter's dtype: an SVD shrink hands float32 values in, and cat
        # would promote a bf16 adapter to float32 (its next forward then mixes dtypes).
        A = torch.cat([A_kept.to(adapter.lora_A.dtype), fresh.to(adapter.lora_A.dtype)])
        B = torch.cat([B_kept.to(adapter.lora_B.dtype), adapter.lora_B.new_zeros(adapter.out_features, grow)], dim=1)
        _replace(adapter, "lora_A", A, optimizer, row_map)
        _replace(adapter, "lora_B", B, optimizer, col_map)
        if adapter.gate is not None:
            _replace(adapter, "gate", _rows(adapter.gate, M, grow, 1.0), optimizer, row_map)
        if adapter.gate_proj is not None:
            proj = adapter.gate_proj
            _replace(proj, "weight", _rows(proj.weight, M, grow, 0.0), optimizer, row_map)
            _replace(proj, "bias", _rows(proj.bias, M, grow, GATE_PROJ_BIAS_INIT), optimizer, row_map)
            proj.out_features = r_new


def grow_adapter(adapter: LoraAdapter, n: int, optimizer: torch.optim.Optimizer | None = None,
                 seed: bool = True, generator: torch.Generator | None = None,
                 direct: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ResizeResult:
    """Append `n` components (A rows random, or as `direct` maps them; B columns zero): the
    output does not change.

    seed: Adam second moments of the new components start at the existing ones' mean."""
    if n < 0:
        raise ValueError(f"cannot grow by {n}")
    r = adapter.r
    if n == 0:
        return ResizeResult(r, r)
    eye = torch.eye(r, device=adapter.lora_A.device)
    apply_component_map(adapter, eye, eye, grow=n, optimizer=optimizer, seed=seed, generator=generator, direct=direct)
    return ResizeResult(r, r + n)


def select_components(adapter: LoraAdapter, keep: Sequence[int] | torch.Tensor,
                      optimizer: torch.optim.Optimizer | None = None) -> ResizeResult:
    """Keep the listed components (in that order), dropping the rest; state moves along."""
    r = adapter.r
    keep = torch.as_tensor(keep, dtype=torch.long).reshape(-1).cpu()
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= r or keep.unique().numel() != keep.numel()):
        raise ValueError(f"component indices {keep.tolist()} are not distinct indices below rank {r}")
    M = torch.zeros(keep.numel(), r)
    M[torch.arange(keep.numel()), keep] = 1.0
    dropped = torch.ones(r, dtype=torch.bool)
    dropped[keep] = False
    tail = float(_component_norms(adapter)[dropped].norm()) if r else 0.0
    apply_component_map(adapter, M, optimizer=optimizer)
    return ResizeResult(r, keep.numel(), tail)


def _component_norms(adapter: LoraAdapter) -> torch.Tensor:
    """||g_i b_i|| * ||a_i||: the Frobenius norm of each rank-1 component of the update."""
    b = adapter.lora_B.detach().float().norm(dim=0)
    if adapter.gate is not None:
        b = b * adapter.gate.detach().float().abs()
    return (b * adapter.lora_A.detach().float().norm(dim=1)).cpu()


def svd_shrink(adapter: LoraAdapter, r: int, optimizer: torch.optim.Optimizer | None = None) -> ResizeResult:
    """Keep the best rank-`r` approximation of B A (Eckart-Young); returns the dropped norm."""
    r_old = adapter.r
    if not 0 <= r <= r_old:
        raise ValueError(f"cannot shrink rank {r_old} to {r}")
    if adapter.gate is not None or adapter.gate_proj is not None:
        raise ValueError("the SVD shrink needs an ungated adapter; prune gated ones with select_components")
    with torch.no_grad():
        A = adapter.lora_A.detach().float()
        B = adapter.lora_B.detach().float()
        # SVD of B A through QR of the thin factors: O((d + k) r^2), never d x k.
        qb, rb = torch.linalg.qr(B)
        qa, ra = torch.linalg.qr(A.T)
        u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
        if r > s.numel():  # rank above min(d, k): B A has no more directions to choose from
            return shrink_adapter(adapter, r, "importance", optimizer)
        U = qb @ u[:, :r]
        V = qa @ vh[:r].T
        c = float(A.norm() / max(r_old, 1) ** 0.5) or 1.0
        A_new = c * V.T
        B_new = U * (s[:r] / c)
        M = c * V.T @ torch.linalg.pinv(A)
        N = A @ V / c
        dropped = float(s[r:].norm())
    apply_component_map(adapter, M, N, optimizer=optimizer, values=(A_new, B_new))
    return ResizeResult(r_old, r, dropped)


def shrink_adapter(adapter: LoraAdapter, r: int, method: str = "svd",
                   optimizer: torch.optim.Optimizer | None = None) -> ResizeResult:
    """Shrink to rank `r` by "svd" or by keeping the components of largest norm ("importance")."""
    if method == "svd":
        return svd_shrink(adapter, r, optimizer)
    if method == "importance":
        order = torch.argsort(_component_norms(adapter), descending=True, stable=True)
        return select_components(adapter, order[:r].sort().values, optimizer)
    raise ValueError(f"shrink method must be 'svd' or 'importance', got {method!r}")


def resize_adapter(adapter: LoraAdapter, r: int, method: str = "svd",
                   optimizer: torch.optim.Optimizer | None = None, seed: bool = True,
                   generator: torch.Generator | None = None,
                   direct: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ResizeResult:
    """Grow or shrink to rank `r` (0 allowed), keeping the optimizer consistent."""
    if r < 0:
        raise ValueError(f"rank must be >= 0, got {r}")
    if r >= adapter.r:
        return grow_adapter(adapter, r - adapter.r, optimizer, seed, generator, direct)
    return shrink_adapter(adapter, r, method, optimizer)
