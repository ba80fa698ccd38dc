"""Small pieces the speed benchmarks share: machine description, load, bootstrap intervals,
interleaved timing rounds and the paired-ratio summary."""

from __future__ import annotations

import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

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


def result_header(script: str, argv: list[str] | None, args: object, load_before: list[float]) -> dict[str, object]:
    """The fields every timing result starts with: the command that made it, the machine, the
    load average before and after, and the settings (`args` without its output path)."""
    return {"command": " ".join([".venv/bin/python", f"benchmarks/{script}", *(argv or sys.argv[1:])]),
            "machine": machine_info(), "load_average_before_after": [load_before, load_average()],
            "settings": {k: v for k, v in vars(args).items() if k != "output"}}


def bootstrap_interval(values: list[float], statistic=statistics.median, resamples: int = 2000,
                       level: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of `statistic` over `values`."""
    rng = random.Random(seed)
    stats = sorted(statistic(rng.choices(values, k=len(values))) for _ in range(resamples))
    lo = stats[int((1 - level) / 2 * resamples)]
    hi = stats[int((1 + level) / 2 * resamples) - 1]
    return [lo, hi]


def interleaved_rounds(cases: dict[str, Callable[[dict], object]], batches: list[dict], rounds: int,
                       warmup: int, seed: int = 0, progress: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each case; every round runs every case once, in a shuffled order, on
    the same batch, so load on the machine hits all cases alike (rounds < warmup are dropped).
    `progress`: print the running medians after each timed round."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    order, rng = list(cases), random.Random(seed)
    for round_ in range(warmup + rounds):
        rng.shuffle(order)
        batch = batches[round_ % len(batches)]
        for name in order:
            start = time.perf_counter()
            cases[name](batch)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
        if progress and round_ >= warmup:
            line = ", ".join(f"{n} {statistics.median(t):.3f}s" for n, t in times.items())
            print(f"round {round_ + 1 - warmup}/{rounds}: {line}", flush=True)
    return times


def paired_summary(times: dict[str, list[float]], pairs: dict[str, tuple[str, str]]) -> dict[str, object]:
    """Median seconds per case, and for each `label: (case, reference)` the median of the
    round-by-round ratios with its bootstrap interval (pairing cancels slow drifts in load)."""
    ratios = {label: [a / b for a, b in zip(times[case], times[ref])] for label, (case, ref) in pairs.items()}
    return {"median_seconds": {name: statistics.median(t) for name, t in times.items()},
            "median_paired_ratio": {label: statistics.median(r) for label, r in ratios.items()},
            "ratio_95ci": {label: bootstrap_interval(r) for label, r in ratios.items()}}
