"""`dynalora bench`: the paper's Tables 1 and 2 rerun, our methods side by side with PEFT's."""

import sys

from dynalora.bench.profiles import PROFILES, BenchProfile, get_profile
from dynalora.bench.runner import run_bench
from dynalora.training import peft_methods

# Deprecated path: PEFT's methods moved beside the other training methods; the old module
# name still imports (`from dynalora.bench.peft_methods import ...`).
sys.modules[f"{__name__}.peft_methods"] = peft_methods

__all__ = ["PROFILES", "BenchProfile", "get_profile", "run_bench"]
