"""Input statistics of dynamic LoRA merged across processes, so every process reallocates alike.

Everything else the allocation controller decides from is already identical in every
process once gradients are summed (importance and sensitivity are read from gradients and
weights, gates are parameters). The input statistics are not: each process's forward hooks
see only its shard of the batch. Each process therefore folds a sampled step's token rows
into fresh, empty moments; after the backward, the fresh moments of all processes are
gathered and merged, in rank order, into the running moments that every process holds
identically. Chan's merge is exact, so the result is what one process would have gathered
over the whole global batch, up to float64 rounding, and bit-identical in every process.
"""

from __future__ import annotations

from typing import Any

import torch

from dynalora.allocation.stats import InputStatistics, RunningMoments
from dynalora.distributed.context import current
from dynalora.distributed.sync import gather_objects


def input_statistics_of(hooks: list[Any]) -> list[InputStatistics]:
    """The InputStatistics of the allocation controllers among the loop's step hooks."""
    found = []
    for hook in hooks:
        controller = getattr(hook, "controller", hook)
        stats = getattr(controller, "stats", None)
        if isinstance(stats, InputStatistics):
            found.append(stats)
    return found


class StatisticsReducer:
    """`begin_step()` before a step's first forward, `reduce()` before the controllers decide."""

    def __init__(self, statistics: list[InputStatistics]) -> None:
        self.statistics = statistics
        self._running: list[dict[str, RunningMoments] | None] = [None] * len(statistics)

    def begin_step(self) -> None:
        if not current().distributed:
            return
        for i, stats in enumerate(self.statistics):
            if stats.attached:  # this step's forwards are sampled
                self._running[i] = stats.moments
                stats.moments = {name: RunningMoments(m.mean.numel()) for name, m in stats.moments.items()}

    def reduce(self) -> None:
        for i, stats in enumerate(self.statistics):
            running = self._running[i]
            if running is None:
                continue
            fresh = {name: (m.total.cpu(), m.mean.cpu(), m.m2.cpu()) for name, m in stats.moments.items()}
            for shard in gather_objects(fresh):
                for name, (total, mean, m2) in shard.items():
                    part = RunningMoments(mean.numel())
                    part.total, part.mean, part.m2 = (t.to(torch.float64) for t in (total, mean, m2))
                    running[name].merge(part)
            stats.moments = running
            self._running[i] = None
