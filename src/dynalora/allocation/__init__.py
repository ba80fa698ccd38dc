"""Dynamic LoRA (arXiv 2501.14859) and Rank-1 Sum LoRA: importance, input statistics, the rank
rule, resizing with a consistent optimizer, gates and pruning, and the controller that runs
them beside a training loop (see shared/docs/METHOD.md sections 2-3)."""

from dynalora.allocation.config import DynamicLoraConfig, Rank1LoraConfig
from dynalora.allocation.controller import AllocationController
from dynalora.allocation.ranks import (
    allocation_shares,
    clamp_to_mean_one,
    project_to_budget,
    rank_scores,
    uniform_budget,
)
from dynalora.allocation.resize import (
    ResizeResult,
    grow_adapter,
    resize_adapter,
    select_components,
    shrink_adapter,
    svd_shrink,
    swap_parameter,
)
from dynalora.allocation.stats import InputStatistics, RunningMoments


def __getattr__(name: str):
    # The Trainer callback imports transformers' Trainer machinery: load it on first use.
    if name == "DynamicLoraCallback":
        from dynalora.allocation.callback import DynamicLoraCallback

        return DynamicLoraCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AllocationController",
    "DynamicLoraCallback",
    "DynamicLoraConfig",
    "InputStatistics",
    "Rank1LoraConfig",
    "ResizeResult",
    "RunningMoments",
    "allocation_shares",
    "clamp_to_mean_one",
    "grow_adapter",
    "project_to_budget",
    "rank_scores",
    "resize_adapter",
    "select_components",
    "shrink_adapter",
    "svd_shrink",
    "swap_parameter",
    "uniform_budget",
]
