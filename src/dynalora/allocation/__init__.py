"""Dynamic LoRA (arXiv 2501.14859) and Rank-1 Sum LoRA: importance, allocation weights, input
statistics, the rank rule, resizing with a consistent optimizer, gates and pruning, and the
controllers that run them beside a training loop (the method: docs/method.md; the code:
docs/DESIGN.md, "Allocation")."""

from typing import TYPE_CHECKING

# The configs load now (plain Python; importing them registers "dynamic" and "rank1" with
# adapters.config); everything else, which needs torch or transformers' Trainer, on first use.
from dynalora.allocation.config import DynamicLoraConfig, Rank1LoraConfig
from dynalora.lazy import lazy_exports

_EXPORTS = {
    **{name: "dynalora.allocation.controller" for name in (
        "AllocationController", "DynamicLoraController", "Rank1LoraController")},
    "DynamicLoraCallback": "dynalora.allocation.callback",
    **{name: "dynalora.allocation.ranks" for name in (
        "allocation_shares", "clamp_to_mean_one", "project_to_budget", "rank_scores", "settle_ranks",
        "uniform_budget")},
    **{name: "dynalora.allocation.resize" for name in (
        "ResizeResult", "grow_adapter", "resize_adapter", "select_components", "shrink_adapter", "svd_shrink",
        "swap_parameter")},
    "InputStatistics": "dynalora.allocation.stats",
    "RunningMoments": "dynalora.allocation.stats",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and editors see
    from dynalora.allocation.callback import DynamicLoraCallback
    from dynalora.allocation.controller import (
        AllocationController,
        DynamicLoraController,
        Rank1LoraController,
    )
    from dynalora.allocation.ranks import (
        allocation_shares,
        clamp_to_mean_one,
        project_to_budget,
        rank_scores,
        settle_ranks,
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

__all__ = [
    "AllocationController",
    "DynamicLoraCallback",
    "DynamicLoraConfig",
    "DynamicLoraController",
    "InputStatistics",
    "Rank1LoraConfig",
    "Rank1LoraController",
    "ResizeResult",
    "RunningMoments",
    "allocation_shares",
    "clamp_to_mean_one",
    "grow_adapter",
    "project_to_budget",
    "rank_scores",
    "resize_adapter",
    "select_components",
    "settle_ranks",
    "shrink_adapter",
    "svd_shrink",
    "swap_parameter",
    "uniform_budget",
]
