"""Baselines of the paper's tables: Houlsby bottleneck adapters and BitFit."""

from dynalora.baselines.bitfit import mark_only_biases_trainable
from dynalora.baselines.houlsby import BottleneckAdapter, HoulsbyLayer, add_houlsby_adapters

__all__ = ["BottleneckAdapter", "HoulsbyLayer", "add_houlsby_adapters", "mark_only_biases_trainable"]
