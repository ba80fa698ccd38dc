"""Scores read from the gradients the backward pass already produced (no extra backward).

    layer importance       I_l   = mean over the elements theta of A_l and B_l of |theta * dL/dtheta|
    component sensitivity  s_l,i = |g_i dL/dg_i| + mean_j |a_ij dL/da_ij| + mean_j |b_ji dL/db_ji|

Both are first-order Taylor estimates of how much the loss would change if the parameters
were removed. They are read after `optimizer.step()` (the parameters have just moved by one
step, the gradients are those of the step), as AdaLoRA does, once per optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dynalora.adapters.layer import LoraAdapter


def layer_importance(adapters: Sequence[LoraAdapter]) -> tuple[torch.Tensor, list[int]] | None:
    """(I for the layers that have gradients, their indices), or None when none has any.

    Layers of rank 0 or without gradients are left out (the caller keeps their last value).
    This runs every optimizer step, so it is a handful of fused kernels for all layers at once
    (foreach multiply, L1 norm, divide by a host-side scalar list) and never reads the device
    or copies host data to it.
    """
    params, grads, present, sizes = [], [], [], []
    for i, adapter in enumerate(adapters):
        A, B = adapter.lora_A, adapter.lora_B
        if A.grad is None or B.grad is None or A.numel() == 0:
            continue
        params += [A, B]
        grads += [A.grad, B.grad]
        present.append(i)
        total = float(A.numel() + B.numel())  # the mean pools A's and B's elements
        sizes += [total, total]
    if not params:
        return None
    with torch.no_grad():
        products = torch._foreach_mul(params, grads)
        # Norms accumulated and returned in float32 even for bf16 / fp16 adapters.
        means = torch._foreach_div(torch._foreach_norm(products, 1, dtype=torch.float32), sizes)
        return torch.stack(means).view(-1, 2).sum(dim=1), present


def component_sensitivity(adapter: LoraAdapter) -> torch.Tensor | None:
    """s_i for each rank-1 component (r,), or None without gradients.

    For input-conditional gates the gate's own term is |c_i dL/dc_i| + mean_j |u_ij dL/du_ij|
    (its bias and weights), the analogue of |g dL/dg|.
    """
    A, B = adapter.lora_A, adapter.lora_B
    if A.grad is None or B.grad is None or A.numel() == 0:
        return None
    with torch.no_grad():
        score = (A * A.grad).abs().mean(dim=1) + (B * B.grad).abs().mean(dim=0)
        gate = adapter.gate
        if gate is not None and gate.grad is not None:
            score = score + (gate * gate.grad).abs()
        proj = adapter.gate_proj
        if proj is not None and proj.weight.grad is not None:
            score = score + (proj.weight * proj.weight.grad).abs().mean(dim=1)
            if proj.bias.grad is not None:
                score = score + (proj.bias * proj.bias.grad).abs()
        return score.float()


def regulariser(adapters: Sequence[LoraAdapter], lambda_a: float, lambda_b: float, lambda_orth: float) -> torch.Tensor:
    """lambda_a sum ||A||^2 + lambda_b sum ||B||^2 + lambda_orth sum(||AA^T - I||^2 + ||B^T B - I||^2)."""
    device = next((a.lora_A.device for a in adapters), None)
    total = torch.zeros((), device=device)
    live = [a for a in adapters if a.r > 0] if lambda_a or lambda_b or lambda_orth else []
    if not live:  # the usual case (all lambdas 0) costs one tiny tensor per micro-batch
        return total
    if lambda_a:
        total = total + lambda_a * sum(a.lora_A.pow(2).sum() for a in live)
    if lambda_b:
        total = total + lambda_b * sum(a.lora_B.pow(2).sum() for a in live)
    if lambda_orth:
        orth = 0.0
        for a in live:
            eye = torch.eye(a.r, device=a.lora_A.device, dtype=a.lora_A.dtype)
            orth = orth + (a.lora_A @ a.lora_A.T - eye).pow(2).sum() + (a.lora_B.T @ a.lora_B - eye).pow(2).sum()
        total = total + lambda_orth * orth
    return total
