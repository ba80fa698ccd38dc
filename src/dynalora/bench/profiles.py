"""Bench profiles: which tasks, methods and seeds, and how much data each run sees.

`quick` (MRPC and SST-2, two seeds) is sized for a 2-core CPU in about an hour: every run trains on a random subset of
at most `max_train_samples` examples for `epochs` epochs at batch 32 with dynamic padding
(short GLUE sentences: well under a second per step for MiniLM here), and evaluates on at
most `max_eval_samples` dev examples. `full` uses the whole train and dev sets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynalora.adapters.config import ConfigError

# Methods compared at one adapter parameter budget: uniform LoRA at `rank` on the same modules.
EQUAL_BUDGET_METHODS = ("lora", "dynamic", "rank1", "peft-lora", "peft-adalora")
ALL_METHODS = ("full", "head", "adapter", "bitfit", "lora", "dynamic", "rank1", "peft-lora", "peft-adalora")


@dataclass
class BenchProfile:
    name: str
    tasks: tuple[str, ...]
    methods: tuple[str, ...] = ALL_METHODS
    seeds: tuple[int, ...] = (0,)
    epochs: float = 3.0
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    batch_size: int = 32
    rank: int = 8
    alpha: float = 16.0
    max_length: int = 128
    # Per-method TrainConfig overrides, e.g. {"full": {"lr": 3e-5}}.
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency_repeats: int = 10  # timed forwards per batch size (median reported)

    def train_settings(self) -> dict[str, Any]:
        """What every run of this profile shares (a cached result is reused only when equal)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("name", "tasks", "methods", "seeds", "latency_repeats")}

    def replace(self, **changes: Any) -> BenchProfile:
        return dataclasses.replace(self, **changes)


PROFILES: dict[str, BenchProfile] = {
    "quick": BenchProfile("quick", tasks=("mrpc", "sst2"), seeds=(0, 1), epochs=2.0,
                          max_train_samples=1000, max_eval_samples=500),
    "full": BenchProfile("full", tasks=("mrpc", "sst2", "rte", "cola", "stsb"), seeds=(0, 1, 2), epochs=3.0),
}


def get_profile(name: str) -> BenchProfile:
    if name not in PROFILES:
        raise ConfigError(f"unknown bench profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]


def run_dir(output: Path, task: str, method: str, seed: int) -> Path:
    """Where one run of a bench lives (its training folder and result.json)."""
    return Path(output) / "runs" / task / method / f"seed{seed}"
