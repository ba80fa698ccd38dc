"""What the training loop optimises and how it judges a model: a small `Objective` object.

The loop (dynalora.training.loop) is the same for every task; an objective says
    loss(model, batch, device)             the training loss of one micro-batch
    evaluate(model, batches, device, dtype)  (metrics with a "main" entry, number of examples)
    score(metrics)                          higher is better (best-model choice, early stopping)
    head                                    the module trained at `head_lr` (None: none)
    name, main_metric                       what progress messages call the task and its metric
`ClassificationObjective` is here; the causal-LM one (SFT) is in dynalora.llm.objective.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from dynalora.data import TaskSpec
from dynalora.training.evaluation import model_inputs, predict_sharded
from dynalora.training.metrics import compute_metrics


class Objective(Protocol):
    name: str
    main_metric: str
    head: nn.Module | None

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, batches: Any, device: torch.device,
                 dtype: torch.dtype | None) -> tuple[dict[str, float], int]: ...

    def score(self, metrics: dict[str, float]) -> float: ...


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(logits.float(), labels)


def score(metrics: dict[str, float]) -> float:
    """The GLUE score (else the main metric) for comparisons: F1 alone rewards the majority
    class. NaN (undefined) counts as the worst value."""
    value = metrics.get("glue", metrics["main"])
    return -math.inf if value is None or math.isnan(value) else value


class ClassificationObjective:
    """Cross-entropy (or MSE for a regression task) on the classifier's logits; the task's
    metrics, its GLUE score higher-is-better."""

    def __init__(self, task: TaskSpec, head: nn.Module | None) -> None:
        self.task, self.head = task, head
        self.name, self.main_metric = task.name, task.main_metric

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        logits = model(**model_inputs(batch, device))
        return task_loss(logits, batch["labels"].to(device), self.task.is_regression)

    def evaluate(self, model: nn.Module, batches: Any, device: torch.device,
                 dtype: torch.dtype | None) -> tuple[dict[str, float], int]:
        logits, labels = predict_sharded(model, batches, device, dtype)
        return compute_metrics(self.task, logits, labels), len(labels)

    def score(self, metrics: dict[str, float]) -> float:
        return score(metrics)
