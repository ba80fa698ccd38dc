"""Figures the speed benchmarks derive from their timings (benchmarks/bench_compile.py)."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_compile import break_even_steps


def summary(ratio, interval, eager_s=2.0):
    return {"median_seconds": {"eager": eager_s}, "median_paired_ratio": {"compiled / eager": ratio},
            "ratio_95ci": {"compiled / eager": interval}}


def test_compiling_pays_back_only_for_a_measured_saving():
    """A 10% faster step saves 0.2 s of a 2 s step: 100 s of compiling pay back after 500
    steps. A ratio whose interval holds 1 measured no saving: no break-even (the first version
    returned 649 steps for compile.json's 0.99 with interval 0.90-1.06); slower never pays."""
    assert break_even_steps(100.0, summary(0.9, [0.85, 0.95])) == pytest.approx(500.0)
    assert break_even_steps(100.0, summary(0.99, [0.90, 1.06])) is None
    assert break_even_steps(100.0, summary(1.1, [1.05, 1.15])) is None


@pytest.mark.parametrize("before", [None, "/users/own/cache"])
def test_compile_is_timed_with_a_fresh_inductor_cache_unless_asked_for_the_warm_one(monkeypatch, before):
    """Cold by default: inductor sees an empty folder of its own while the benchmark measures,
    and the user's setting is back (or absent again) afterwards; --warm-cache leaves it alone."""
    import os

    import bench_compile

    if before is None:
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", before)
    seen = []

    def measure(args, argv):
        folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        seen.append((folder, folder is not None and os.path.isdir(folder) and not os.listdir(folder)))
        return {}

    monkeypatch.setattr(bench_compile, "measure", measure)
    bench_compile.main(["--rounds", "1"])
    assert seen[0][0] not in (None, before) and seen[0][1]  # a fresh, empty folder
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == before
    bench_compile.main(["--rounds", "1", "--warm-cache"])
    assert seen[1][0] == before
