"""The SFT objective for the shared training loop: next-token cross-entropy on response tokens,
judged by the held-out response loss (and perplexity), lower is better."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dynalora.llm.evaluate import response_loss, token_loss
from dynalora.training.evaluation import model_inputs
from dynalora.training.optim import autocast


class LanguageModelObjective:
    """A causal LM's response loss; no separate head (every trainable tensor uses `lr`)."""

    main_metric = "loss"
    head: nn.Module | None = None

    def __init__(self, name: str) -> None:
        self.name = name

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        logits = model(**model_inputs(batch, device)).logits
        return token_loss(logits, batch["labels"].to(device))[0]

    def evaluate(self, model: nn.Module, batches: Any, device: torch.device,
                 dtype: torch.dtype | None) -> tuple[dict[str, float], int]:
        with autocast(device, dtype):
            result = response_loss(model, batches)
        return {"main": result["loss"], **result}, len(batches.features)

    def score(self, metrics: dict[str, float]) -> float:
        return -metrics["loss"]
