"""The SFT objective for the shared training loop: next-token cross-entropy on response tokens,
judged by the held-out response loss (and perplexity), lower is better; or, with a
`GenerationJudge` (dynalora.llm.selection), also by what the model generates at each
evaluation, one of whose metrics may then choose the best model and drive early stopping.

In a data-parallel run each process evaluates every W-th held-out batch and the loss sums and
token counts are gathered and added in rank order, so every process gets the same numbers
(those of one process, up to the order of the float additions) for a W-th of the work."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dynalora.distributed import current, gather_objects
from dynalora.llm.evaluate import loss_summary, response_loss_sum, token_loss
from dynalora.llm.selection import GenerationJudge
from dynalora.training.evaluation import model_inputs
from dynalora.training.optim import autocast


class LanguageModelObjective:
    """A causal LM's response loss; no separate head (every trainable tensor uses `lr`).

    `main_metric` (default "loss") is what `score` ranks evaluations by, higher-is-better when
    `greater_is_better`; `judge` adds generation metrics to every evaluation.
    """

    head: nn.Module | None = None

    def __init__(self, name: str, judge: GenerationJudge | None = None, main_metric: str = "loss",
                 greater_is_better: bool = False) -> None:
        self.name, self.judge = name, judge
        self.main_metric, self.greater_is_better = main_metric, greater_is_better

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        logits = model(**model_inputs(batch, device)).logits
        return token_loss(logits, batch["labels"].to(device))[0]

    def evaluate(self, model: nn.Module, batches: Any, device: torch.device,
                 dtype: torch.dtype | None) -> tuple[dict[str, float], int]:
        process = current()
        mine = (b for i, b in enumerate(batches) if i % process.world_size == process.rank)
        with autocast(device, dtype):
            part = response_loss_sum(model, mine)
        shares = gather_objects(part)
        result = loss_summary(sum(total for total, _ in shares), sum(count for _, count in shares))
        if self.judge is not None:
            result.update(self.judge(model))
        return {"main": result[self.main_metric], **result}, len(batches.features)

    def score(self, metrics: dict[str, float]) -> float:
        value = metrics[self.main_metric]
        return value if self.greater_is_better else -value
