"""How much an adapter amplifies directions of W0 (the LoRA paper, section 7.3).

With U (out x r), V (in x r) the top-r left/right singular vectors of Delta W, the LoRA
paper projects the frozen weight onto that subspace, U^T W0 V, and compares its size with
the update's: amplification = ||Delta W||_F / ||U^T W0 V||_F. A large factor means the
adapter boosts directions W0 barely uses. References: the same projection onto W0's own
top-r singular directions (large: they are W0's strongest) and onto random orthonormal
directions (what "no relation to W0" looks like).
"""

from __future__ import annotations

import torch


def random_orthonormal(dim: int, r: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, r, generator=generator, dtype=torch.float64))
    return q


def projected_norm(w0: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(U.T @ w0 @ V))


def amplification(delta: torch.Tensor, w0: torch.Tensor, r: int | None = None,
                  seed: int = 0, random_draws: int = 10) -> dict[str, float]:
    """Norms and amplification factors of one layer (delta and w0 both out x in).

    r defaults to the numerical rank of delta (at most min(out, in)).
    """
    if delta.shape != w0.shape:
        raise ValueError(f"Delta W is {tuple(delta.shape)} but W0 is {tuple(w0.shape)}")
    delta, w0 = delta.double(), w0.double()
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    if r is None:
        r = int((s > s[0] * 1e-9).sum()) if s.numel() and s[0] > 0 else 0
    if r <= 0:
        raise ValueError("Delta W is zero: an untrained or rank-0 adapter has nothing to analyse")
    delta_norm = float(torch.linalg.matrix_norm(delta))
    along_delta = projected_norm(w0, u[:, :r], vh[:r].T)
    wu, _, wvh = torch.linalg.svd(w0, full_matrices=False)
    along_w0 = projected_norm(w0, wu[:, :r], wvh[:r].T)
    gen = torch.Generator().manual_seed(seed)
    along_random = sum(
        projected_norm(w0, random_orthonormal(w0.shape[0], r, gen), random_orthonormal(w0.shape[1], r, gen))
        for _ in range(random_draws)
    ) / random_draws
    return {
        "r": r,
        "delta_norm": delta_norm,
        "w0_norm": float(torch.linalg.matrix_norm(w0)),
        "w0_along_delta": along_delta,
        "w0_along_w0_top": along_w0,
        "w0_along_random": along_random,
        "amplification": delta_norm / along_delta if along_delta > 0 else float("inf"),
        "amplification_random": delta_norm / along_random if along_random > 0 else float("inf"),
    }
