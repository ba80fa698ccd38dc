"""The LoRA paper's analyses on constructed cases with known answers, and `analyze` end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_bert

from dynalora.adapters import LoraConfig, get_lora_model
from dynalora.analysis import (
    LayerFactors,
    adapter_similarity,
    amplification,
    analyze,
    phi,
    phi_grid,
    spectrum,
)
from dynalora.analysis.subspace import singular_directions
from dynalora.files import AdapterFileError


def factors(A: torch.Tensor, B: torch.Tensor | None = None, name: str = "l") -> LayerFactors:
    B = torch.randn(5, A.shape[0], dtype=torch.float64) if B is None else B
    return LayerFactors(name, A.double(), B.double(), 1.0)


def test_phi_of_a_subspace_with_itself_is_one_everywhere_nested():
    torch.manual_seed(0)
    layer = factors(torch.randn(6, 20), torch.randn(9, 6))
    for source in ("A", "delta-in", "delta-out"):
        U = singular_directions(layer, source)
        grid = phi_grid(U, U)
        # The smaller of two nested subspaces lies inside the larger: phi(i, j) = 1 for all i, j.
        assert grid == pytest.approx(torch.ones(6, 6).numpy(), abs=1e-9), source


def test_phi_of_orthogonal_subspaces_is_zero_and_partial_overlap_is_the_cosine_squared():
    eye = torch.eye(10, dtype=torch.float64)
    first, second = factors(eye[:4]), factors(eye[4:8])
    grid = phi_grid(singular_directions(first), singular_directions(second))
    assert abs(grid).max() < 1e-12
    u1 = eye[:, :1]
    u2 = ((eye[:, 0] + eye[:, 1]) / 2 ** 0.5)[:, None]
    assert phi(u1, u2, 1, 1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="i <= 1"):
        phi(u1, u2, 2, 1)


def test_adapter_similarity_skips_rank_zero_layers_and_needs_common_layers():
    torch.manual_seed(0)
    a = {"x": factors(torch.randn(3, 8), name="x"), "y": factors(torch.zeros(0, 8), torch.zeros(5, 0), "y")}
    grids = adapter_similarity(a, a)
    assert list(grids) == ["x"] and grids["x"].shape == (3, 3)
    with pytest.raises(ValueError, match="no adapted layer in common"):
        adapter_similarity(a, {"z": a["x"]})


def test_amplification_of_an_update_along_a_weak_direction_of_w0():
    w0 = torch.diag(torch.tensor([10.0, 5.0, 2.0, 0.1, 1.0, 3.0], dtype=torch.float64))
    e = torch.eye(6, dtype=torch.float64)
    delta = 3.0 * torch.outer(e[3], e[3])  # boosts the direction W0 scales by only 0.1
    out = amplification(delta, w0, seed=1)
    assert out["r"] == 1
    assert out["delta_norm"] == pytest.approx(3.0)
    assert out["w0_along_delta"] == pytest.approx(0.1)
    assert out["amplification"] == pytest.approx(30.0)
    assert out["w0_along_w0_top"] == pytest.approx(10.0)
    assert out["w0_along_delta"] < out["w0_along_random"] < out["w0_along_w0_top"]
    assert out["amplification_random"] < out["amplification"]
    with pytest.raises(ValueError, match="zero"):
        amplification(torch.zeros(6, 6), w0)
    with pytest.raises(ValueError, match="W0 is"):
        amplification(delta, w0[:5])


def trained_adapter(tmp_path, name: str, r: int, seed: int):
    model = tiny_bert(seed=0)
    base_dir = tmp_path / "base"
    if not base_dir.exists():
        model.save_pretrained(base_dir)
    lora = get_lora_model(model, LoraConfig(r=r, alpha=2 * r))
    torch.manual_seed(seed)
    for adapter in lora.adapter_modules().values():
        torch.nn.init.normal_(adapter.lora_B)  # B = 0 would make Delta W zero
    lora.save_pretrained(tmp_path / name)
    return tmp_path / name, lora


def test_analyze_writes_tables_and_plots_for_two_adapters(tmp_path, capsys):
    first, lora = trained_adapter(tmp_path, "r4", 4, seed=1)
    second, _ = trained_adapter(tmp_path, "r2", 2, seed=2)
    result = analyze([first, first], tmp_path / "same", base=tmp_path / "base")
    assert all(row["phi_top_top"] == pytest.approx(1.0) for row in result["subspace"])
    result = analyze([first, second], tmp_path / "out", base=tmp_path / "base", source="delta-in")
    n_layers = len(lora.lora_layers())
    assert len(result["amplification_1"]) == len(result["amplification_2"]) == len(result["subspace"]) == n_layers
    assert {row["r1"] for row in result["subspace"]} == {4} and {row["r2"] for row in result["subspace"]} == {2}
    # Delta W of layer 0 recomputed from the live model matches the norm the analysis reports.
    name, adapter = next(iter(lora.adapter_modules().items()))
    row = next(r for r in result["amplification_1"] if r["layer"] == name)
    assert row["delta_norm"] == pytest.approx(float(adapter.delta_weight().detach().norm()), rel=1e-5)
    assert {row["r"] for row in result["spectrum_1"]} == {4} and {row["r"] for row in result["spectrum_2"]} == {2}
    assert all(1.0 <= row["effective_rank"] <= 4.0 for row in result["spectrum_1"])
    for file in ("spectrum_1.csv", "spectrum_2.md", "amplification_1.csv", "amplification_1.md", "amplification_1.png", "amplification_2.png",
                 "subspace.csv", "subspace.md", "subspace.png", "analysis.json"):
        assert (tmp_path / "out" / file).stat().st_size > 0, file
    assert json.loads((tmp_path / "out" / "analysis.json").read_text())["source"] == "delta-in"
    assert "Subspace similarity" in capsys.readouterr().out


def test_analyze_errors_name_the_problem(tmp_path):
    first, _ = trained_adapter(tmp_path, "r4", 4, seed=1)
    with pytest.raises(AdapterFileError, match="--base"):
        analyze([first], tmp_path / "out")  # the tiny model has no local base folder recorded
    other = tmp_path / "other"
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=10)).save_pretrained(other)
    with pytest.raises(AdapterFileError, match="adapter's base model"):
        analyze([first], tmp_path / "out", base=other)
    with pytest.raises(ValueError, match="one or two"):
        analyze([first] * 3, tmp_path / "out", base=tmp_path / "base")


def test_spectrum_of_an_update_with_known_singular_values():
    """Singular values 4 and 3 (energy 16 : 9) in a rank-3 slot: effective rank
    exp(-(.64 ln .64 + .36 ln .36)) = 1.92, top-1 energy 0.64, 90% needs both directions;
    a zero update uses nothing."""
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    delta = 4.0 * torch.outer(q[:, 0], q[:, 1]) + 3.0 * torch.outer(q[:, 2], q[:, 3])
    result = spectrum(delta, 3)
    assert result["effective_rank"] == pytest.approx(math.exp(-(0.64 * math.log(0.64) + 0.36 * math.log(0.36))))
    assert result["top1_energy"] == pytest.approx(0.64) and result["top2_energy"] == pytest.approx(1.0)
    assert result["rank_for_90"] == 2
    assert spectrum(torch.outer(q[:, 0], q[:, 1]), 1)["rank_for_90"] == 1
    assert spectrum(torch.zeros(6, 6), 3)["effective_rank"] == 0.0
