"""`dynalora bench`: the paper's Tables 1 and 2 rerun, our methods side by side with PEFT's."""

from dynalora.bench.profiles import PROFILES, BenchProfile, get_profile
from dynalora.bench.runner import run_bench

__all__ = ["PROFILES", "BenchProfile", "get_profile", "run_bench"]
