"""Informed directions for grown components (`grow_init="gradient"`; docs/method.md).

A component added when a layer grows starts with b_i = 0, so the adapter's function does not
change; how fast it then learns is set by its row a_i of A: the first gradient of b_i is
s * G a_i, where G = dL/dW is the gradient of the layer's full weight (out x in). A random a_i
catches a random share of G. The top right singular vectors of G, taken outside the span of
the rows A already has, catch the most of what the layer still has to learn and its current
components do not cover (the idea behind gradient-based LoRA initialisations, applied here to
grown components only).

G is gathered over the one training step that ends in a reallocation: a forward hook on each
adapted layer keeps its input x, and a hook on the gradient of its output folds g^T x into
G (padding rows carry zero output gradient, so they add nothing). A layer with more outputs
than SKETCH rows keeps a sketch Omega^T G instead (Omega: out x SKETCH Gaussian, the same in every
process): its top right singular vectors are those of G up to the usual randomized-SVD error,
at a fraction of the memory (a 4096 x 4096 projection keeps 96 x 4096). The new rows keep the
norms of the random rows they replace, so only their directions are informed, and the random
draw still happens (the generator's stream, and so everything drawn after it, is unchanged).
A layer whose output needs no gradient (at rank 0 below anything trainable) gets no G and
grows with random rows; so does every layer after a step with non-finite gradients (an fp16
step the loss scaler skipped).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

SKETCH = 96  # rows kept per layer: enough for any growth up to r_max = 4 r at r <= 16, with margin


class GradientProbe:
    """Full-weight gradients G_l = sum over tokens of g^T x (or sketches Omega_l^T G_l) for a
    set of layers, gathered by hooks that exist only while attached (one training step before
    each reallocation)."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers = dict(layers)
        self.grads: dict[str, torch.Tensor] = {}
        self.sketches: dict[str, torch.Tensor] = {}  # Omega per sketched layer, for this step
        self._handles: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, seed: int = 0) -> None:
        """Hook the layers; `seed` (the step) draws the sketches, alike in every process."""
        if self._handles:
            return
        generator = torch.Generator().manual_seed(seed)
        self.sketches = {}
        for name, module in self.layers.items():
            out = int(getattr(module, "out_features", 0))
            if out > SKETCH:
                self.sketches[name] = torch.randn(out, SKETCH, generator=generator) / SKETCH ** 0.5
        self._handles = [m.register_forward_hook(self._make_hook(n)) for n, m in self.layers.items()]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def take(self) -> dict[str, torch.Tensor]:
        """The gradients gathered so far, and a fresh start."""
        grads, self.grads = self.grads, {}
        return grads

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not (module.training and torch.is_grad_enabled()) or not args:
                return
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            x = args[0].detach()

            def fold(grad: torch.Tensor) -> None:
                # float32 whatever autocast is active around the backward (fp16 sums overflow)
                with torch.no_grad(), torch.autocast(grad.device.type, enabled=False):
                    g = grad.reshape(-1, grad.shape[-1]).float()
                    if name in self.sketches:
                        g = g @ self.sketches[name].to(g.device)
                    part = g.T @ x.reshape(-1, x.shape[-1]).float()
                    self.grads[name] = part if name not in self.grads else self.grads[name] + part

            output.register_hook(fold)
        return hook


def mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over the processes of an initialised torch.distributed group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def as_on_first_process(values: list[int]) -> list[int]:
    """`values` as process 0 of an initialised torch.distributed group has them (a decision
    taken from floating-point work, such as an SVD, that another device may round otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [list(values)]
        dist.broadcast_object_list(box, src=0)
        return [int(v) for v in box[0]]
    return values


def informed_rows(grad: torch.Tensor, A: torch.Tensor, random_rows: torch.Tensor) -> torch.Tensor:
    """`random_rows` (n x in) turned towards the top-n right singular vectors of `grad` (out x in,
    or a sketch of it) outside the row space of `A` (r x in), each keeping its norm; rows beyond
    the rank of what is left of `grad`, or all of them when `grad` is not finite, stay random."""
    n = random_rows.shape[0]
    if n == 0:
        return random_rows
    with torch.no_grad():
        G = grad.to(device=random_rows.device, dtype=torch.float32)
        if not bool(torch.isfinite(G).all()):  # every process sees the same reduced G: all agree
            return random_rows
        if A.shape[0]:
            # Orthonormal basis of A's row space from its SVD, so that dependent or zero rows
            # of A do not remove directions A does not have (QR would).
            _, sa, va = torch.linalg.svd(A.detach().to(G), full_matrices=False)
            q = va[sa > sa.max() * 1e-6].T if sa.numel() and float(sa.max()) > 0 else G.new_zeros(G.shape[1], 0)
            G = G - (G @ q) @ q.T
        _, s, vh = torch.linalg.svd(G, full_matrices=False)
        useful = int((s > s.max() * 1e-6).sum()) if s.numel() and float(s.max()) > 0 else 0
        k = min(n, useful)
        rows = random_rows.clone()
        if k:
            norms = random_rows[:k].float().norm(dim=1, keepdim=True)
            rows[:k] = (vh[:k] * norms).to(rows.dtype)
    return rows
