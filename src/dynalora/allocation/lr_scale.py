"""Allocation weights as per-layer learning-rate multipliers, for any torch optimizer.

Each adapter's update from one `optimizer.step()` is scaled by its layer's weight w_l:

    theta <- theta_before + w_l * (theta_after - theta_before)

so Adam, AdamW (its decoupled weight decay included), SGD or anything else steps each layer
by w_l times what it would have. The alternatives are worse: a weight in the forward
(`s * w * B A x`, the paper's) acts the same way under Adam but also rescales what the layer
has already learned whenever w moves, and scales the layer's gradients, so the largest-w
layers dominate gradient clipping; one optimizer parameter group per layer would break LR
schedulers built before the controller (they hold one base lr per group).

Costs one copy of the adapter parameters per step (LoRA parameters are small) and three fused
foreach kernels; no host synchronisation (the weights stay on the device).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.hooks import RemovableHandle

from dynalora.adapters.layer import LoraAdapter
from dynalora.allocation.resize import unwrap_optimizer


class LearningRateScaler:
    """Scales each adapter's optimizer update by its weight, through optimizer step hooks.

    adapters: the layers in the order of `weights()`; weights(): a 1-D device tensor (one per
    layer) read at every step; active(): whether to scale at all this step (cheap host check).
    """

    def __init__(self, adapters: list[LoraAdapter], weights: Callable[[], torch.Tensor],
                 active: Callable[[], bool]) -> None:
        self.adapters = adapters
        self.weights = weights
        self.active = active
        self._before: list[torch.Tensor] | None = None
        self._params: list[torch.Tensor] = []
        self._index: list[int] = []
        self._handles: list[RemovableHandle] = []

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self.detach()
        inner = unwrap_optimizer(optimizer)
        self._handles = [inner.register_step_pre_hook(self._pre), inner.register_step_post_hook(self._post)]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._before = None

    def _pre(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if not self.active():
            self._before = None
            return
        # Parameters are read at every step: resizing replaces them.
        self._params, self._index = [], []
        for i, adapter in enumerate(self.adapters):
            if adapter.r:
                self._params += [adapter.lora_A, adapter.lora_B]
                self._index += [i, i]
        with torch.no_grad():
            self._before = [p.detach().clone() for p in self._params]

    def _post(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        before, self._before = self._before, None
        if not before:
            return
        w = self.weights()
        scales = [w[i].to(p.dtype) for i, p in zip(self._index, self._params)]
        with torch.no_grad():
            torch._foreach_sub_(self._params, before)  # the step each parameter took
            torch._foreach_mul_(self._params, scales)
            torch._foreach_add_(self._params, before)
