"""Small pieces the speed benchmarks share: machine description, load, bootstrap intervals."""

from __future__ import annotations

import os
import platform
import random
import statistics

import torch


def load_average() -> list[float]:
    """1/5/15-minute load averages: on a shared machine they say how noisy a timing was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, object]:
    import transformers

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def bootstrap_interval(values: list[float], statistic=statistics.median, resamples: int = 2000,
                       level: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of `statistic` over `values`."""
    rng = random.Random(seed)
    stats = sorted(statistic(rng.choices(values, k=len(values))) for _ in range(resamples))
    lo = stats[int((1 - level) / 2 * resamples)]
    hi = stats[int((1 + level) / 2 * resamples) - 1]
    return [lo, hi]
