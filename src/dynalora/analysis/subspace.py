"""Subspace similarity between two adapters (the LoRA paper, section 7.2).

    phi(A1, A2, i, j) = || U1_i^T U2_j ||_F^2 / min(i, j)

where U1_i are the top-i singular directions of adapter 1's layer and U2_j the top-j of
adapter 2's. phi is 1 when one subspace contains the other and 0 when they are orthogonal;
two random subspaces of dimension i and j in k dimensions give max(i, j) / k on average.

Which directions (`source`):
* "A": the right-singular vectors of A (input space), as the LoRA paper does;
* "delta-in": the right-singular vectors of Delta W = s B A (input space, ordered by how
  much the update actually uses them, so B's weighting counts);
* "delta-out": the left-singular vectors of Delta W (output space).
"""

from __future__ import annotations

import numpy as np
import torch

from dynalora.analysis.factors import LayerFactors

SOURCES = ("A", "delta-in", "delta-out")


def singular_directions(layer: LayerFactors, source: str = "A") -> torch.Tensor:
    """Orthonormal columns (dim x r), ordered by singular value, largest first."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "A":
        _, _, vh = torch.linalg.svd(layer.A, full_matrices=False)
        return vh.T
    u, _, vh = torch.linalg.svd(layer.delta, full_matrices=False)
    r = layer.r
    return vh[:r].T if source == "delta-in" else u[:, :r]


def phi_grid(U1: torch.Tensor, U2: torch.Tensor) -> np.ndarray:
    """phi(i, j) for i = 1..r1, j = 1..r2 (entry [i-1, j-1]) from orthonormal columns."""
    if U1.shape[0] != U2.shape[0]:
        raise ValueError(f"directions live in different spaces: {U1.shape[0]} vs {U2.shape[0]} dims")
    overlap = (U1.T @ U2).double().pow(2)
    cumulative = overlap.cumsum(0).cumsum(1).numpy()
    i = np.arange(1, U1.shape[1] + 1)[:, None]
    j = np.arange(1, U2.shape[1] + 1)[None, :]
    return cumulative / np.minimum(i, j)


def phi(U1: torch.Tensor, U2: torch.Tensor, i: int, j: int) -> float:
    """phi for the top-i columns of U1 and top-j of U2 (1-based sizes)."""
    if not (1 <= i <= U1.shape[1] and 1 <= j <= U2.shape[1]):
        raise ValueError(f"need 1 <= i <= {U1.shape[1]} and 1 <= j <= {U2.shape[1]}, got i={i}, j={j}")
    return float(phi_grid(U1[:, :i], U2[:, :j])[-1, -1])


def adapter_similarity(first: dict[str, LayerFactors], second: dict[str, LayerFactors],
                       source: str = "A") -> dict[str, np.ndarray]:
    """phi grids for every layer both adapters touch (layers of rank 0 are left out)."""
    common = [n for n in first if n in second]
    if not common:
        raise ValueError("the two adapters have no adapted layer in common")
    grids = {}
    for name in common:
        if first[name].r == 0 or second[name].r == 0:
            continue
        grids[name] = phi_grid(singular_directions(first[name], source),
                               singular_directions(second[name], source))
    return grids
