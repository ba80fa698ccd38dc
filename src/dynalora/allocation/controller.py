"""The public entry point: `AllocationController(model, optimizer=..., total_steps=...)` builds
the controller of the adapter's method (see controller_base.py for the protocol).

    DynamicLoraConfig -> DynamicLoraController   (allocation/dynamic.py)
    Rank1LoraConfig   -> Rank1LoraController     (allocation/rank1.py)
"""

from dynalora.allocation.controller_base import AllocationController, Reduce, no_reduce
from dynalora.allocation.dynamic import DynamicLoraController
from dynalora.allocation.rank1 import Rank1LoraController

__all__ = ["AllocationController", "DynamicLoraController", "Rank1LoraController", "Reduce", "no_reduce"]
