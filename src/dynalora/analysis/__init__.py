"""The LoRA paper's analyses: subspace similarity, amplification, rank use, and plots."""

from dynalora.analysis.amplification import amplification
from dynalora.analysis.factors import LayerFactors, load_base_weights, load_factors
from dynalora.analysis.report import analyze
from dynalora.analysis.spectrum import spectrum
from dynalora.analysis.subspace import adapter_similarity, phi, phi_grid, singular_directions

__all__ = [
    "LayerFactors",
    "adapter_similarity",
    "amplification",
    "analyze",
    "load_base_weights",
    "load_factors",
    "phi",
    "phi_grid",
    "singular_directions",
    "spectrum",
]
