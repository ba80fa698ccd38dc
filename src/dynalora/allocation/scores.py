"""Scores read from the gradients the backward pass already produced (no extra backward).

    layer gradient         g_l   = ||dL/dB_l||_F / (s w_l ||A_l||_F)                (default)
    layer sensitivity      s_l   = sum_i |a_i . dL/da_i| / w_l
    layer importance       I_l   = mean over the elements theta of A_l and B_l of |theta * dL/dtheta|
    component sensitivity  s_l,i = |g_i dL/dg_i| + mean_j |a_ij dL/da_ij| + mean_j |b_ji dL/db_ji|

The layer gradient: with h = W x + s w B A x, dL/dB = s w (dL/dW) A^T, so g_l is the norm of
the full weight's gradient seen through the adapter's (normalised) input subspace: the
first-order loss decrease one unit step of the layer's update can still buy. It is free (the
gradients are there), independent of w_l and of the scaling, and not diluted by growth: new
rows of A are random and their columns of dL/dB are live at once, so for random directions
E g^2 = ||dL/dW||^2 / in_features whatever the rank. It measures what a layer still needs,
not what it has learned, and it depends on the random A only through a projection:
identical layers fed identical data got g within 3% of each other on a toy, against 45%
apart for the sensitivity below.

The others are first-order Taylor estimates of how much the loss would change if parameters
were removed. For the layer sensitivity: with h = s w B A x, a_i . dL/da_i = <s w b_i a_i^T, dL/dW>
is the first-order loss change of removing rank-1 component i of the update. Summing the
absolute values over components (not the signed total, where components cancel) gives the
layer's reliance on its update, in units of loss; dividing by w_l removes the layer's own
allocation weight (in the forward it scales every gradient of the layer), and new
components (b_i = 0) add exactly 0, so growing a layer does not dilute it. The element mean
I_l has both faults: it scales with w_l and falls by r_old / r_new when a layer grows. They are read after `optimizer.step()` (the parameters have just moved by one
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


def layer_gradient(adapters: Sequence[LoraAdapter]) -> tuple[torch.Tensor, list[int]] | None:
    """(g for the layers that have gradients, their indices), or None when none has any.

    Two fused foreach norms for all layers; no host synchronisation; float32 results.
    """
    grads, params, scales, present = [], [], [], []
    for i, adapter in enumerate(adapters):
        B = adapter.lora_B
        if B.grad is None or B.numel() == 0:
            continue
        grads.append(B.grad)
        params.append(adapter.lora_A)
        scales.append(adapter.weight.detach().float() * adapter.scaling)
        present.append(i)
    if not grads:
        return None
    with torch.no_grad():
        g = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))
        a = torch.stack(torch._foreach_norm(params, 2, dtype=torch.float32))
        return g / (a * torch.stack(scales)).clamp_min(1e-12), present


def layer_sensitivity(adapters: Sequence[LoraAdapter]) -> tuple[torch.Tensor, list[int]] | None:
    """(s for the layers that have gradients, their indices), or None when none has any.

    A handful of small kernels per layer, no host synchronisation; float32 accumulation.
    """
    params, grads, weights, present = [], [], [], []
    for i, adapter in enumerate(adapters):
        A = adapter.lora_A
        if A.grad is None or A.numel() == 0:
            continue
        params.append(A)
        grads.append(A.grad)
        weights.append(adapter.weight)
        present.append(i)
    if not params:
        return None
    with torch.no_grad():
        products = torch._foreach_mul(params, grads)
        per_layer = [p.float().sum(dim=1).abs().sum() for p in products]
        w = torch.stack([x.detach().float() for x in weights]).clamp_min(1e-12)
        return torch.stack(per_layer) / w, present


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
