"""BitFit (Ben Zaken et al., 2022), a baseline: only the bias terms of the backbone train."""

from __future__ import annotations

from torch import nn


def mark_only_biases_trainable(model: nn.Module, keep: list[nn.Module] | None = None) -> int:
    """Freeze every weight except biases (and all of the modules in `keep`, e.g. the head).

    Returns the number of trainable parameters. A model without biases is an error: BitFit
    would train nothing in it.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    if not biases:
        raise ValueError(f"{type(model).__name__} has no bias parameters; BitFit cannot train it")
    for p in biases:
        p.requires_grad_(True)
    for module in keep or []:
        for p in module.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
