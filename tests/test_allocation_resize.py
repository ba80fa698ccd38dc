"""Growing and shrinking adapters in place, with the optimizer kept consistent."""

import pytest
import torch
from allocation_helpers import TwoLayerToy, optimizer_matches_model, trainable
from torch import nn

from dynalora import LoraConfig, get_lora_model
from dynalora.adapters.layer import LoraAdapter
from dynalora.allocation import (
    grow_adapter,
    resize_adapter,
    select_components,
    shrink_adapter,
    svd_shrink,
)


def trained_adapter(r=6, d_in=12, d_out=10, gating="none", seed=0) -> LoraAdapter:
    torch.manual_seed(seed)
    adapter = LoraAdapter(d_in, d_out, r, scaling=2.0, gating=gating)
    with torch.no_grad():
        adapter.lora_B.normal_()
        if adapter.gate is not None:
            adapter.gate.uniform_(0.5, 1.5)
    return adapter


def adam_over(adapter: LoraAdapter, steps: int = 3) -> torch.optim.Optimizer:
    """AdamW with real state: a few steps on a random regression."""
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(5, adapter.in_features, generator=gen)
        adapter(x).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return opt


def test_grow_leaves_output_unchanged_and_seeds_new_second_moments():
    adapter = trained_adapter()
    opt = adam_over(adapter)
    x = torch.randn(4, 12)
    before = adapter(x).detach()
    old_A, old_state = adapter.lora_A.detach().clone(), {k: v.clone() for k, v in opt.state[adapter.lora_A].items()}
    old_B_state = opt.state[adapter.lora_B]["exp_avg"].clone()
    result = grow_adapter(adapter, 3, opt)
    assert (result.old_r, result.new_r, adapter.r) == (6, 9, 9)
    assert adapter.lora_A.shape == (9, 12) and adapter.lora_B.shape == (10, 9)
    # Mathematically identical; BLAS may sum the extra zero terms in another order.
    assert torch.allclose(adapter(x).detach(), before, rtol=1e-6, atol=1e-7)
    assert torch.equal(adapter.lora_A[:6], old_A) and adapter.lora_A[6:].abs().sum() > 0
    state = opt.state[adapter.lora_A]
    assert torch.equal(state["exp_avg"][:6], old_state["exp_avg"]) and not state["exp_avg"][6:].any()
    assert torch.equal(state["exp_avg_sq"][:6], old_state["exp_avg_sq"])
    # New components' second moments: the mean over the existing components of the same tensor.
    seeded = old_state["exp_avg_sq"].mean(dim=0, keepdim=True).expand(3, -1)
    assert torch.allclose(state["exp_avg_sq"][6:], seeded)
    B_sq = opt.state[adapter.lora_B]["exp_avg_sq"]
    assert torch.allclose(B_sq[:, 6:], B_sq[:, :6].mean(dim=1, keepdim=True).expand(-1, 3))
    assert torch.equal(state["step"], old_state["step"])
    assert torch.equal(opt.state[adapter.lora_B]["exp_avg"][:, :6], old_B_state)
    assert not opt.state[adapter.lora_B]["exp_avg"][:, 6:].any()
    assert optimizer_matches_model(opt, adapter)
    # seed=False: the old behaviour, all-zero state for new components.
    grow_adapter(adapter, 1, opt, seed=False)
    assert not opt.state[adapter.lora_A]["exp_avg_sq"][9:].any()


def first_updates_after_growth(seed: bool) -> tuple[float, float]:
    """Mean |update| of B's existing and of its grown columns in the first step after growing
    an adapter that trained for 200 steps (Adam's bias correction long gone)."""
    adapter = trained_adapter(r=4, seed=3)
    opt = adam_over(adapter, steps=200)
    grow_adapter(adapter, 4, opt, seed=seed)
    before = adapter.lora_B.detach().clone()
    x = torch.randn(5, adapter.in_features, generator=torch.Generator().manual_seed(9))
    adapter(x).pow(2).sum().backward()
    opt.step()
    step = (adapter.lora_B.detach() - before).abs()
    return float(step[:, :4].mean()), float(step[:, 4:].mean())


def test_grown_components_first_adam_updates_are_no_larger_than_existing_ones():
    existing, grown = first_updates_after_growth(seed=True)
    assert grown <= existing
    # With zeroed second moments (Adam's shared step counter, no warm-up) they are several times larger.
    existing, grown = first_updates_after_growth(seed=False)
    assert grown > 2 * existing


def test_svd_shrink_error_is_exactly_the_dropped_tail():
    adapter = trained_adapter(r=6)
    delta = (adapter.lora_B @ adapter.lora_A).detach()
    s = torch.linalg.svdvals(delta)
    opt = adam_over(adapter, steps=0)
    result = svd_shrink(adapter, 2, opt)
    after = (adapter.lora_B @ adapter.lora_A).detach()
    tail = float(s[2:].norm())
    assert adapter.r == 2 and adapter.lora_A.shape == (2, 12) and adapter.lora_B.shape == (10, 2)
    assert result.dropped == pytest.approx(tail, rel=1e-4)
    assert float((delta - after).norm()) == pytest.approx(tail, rel=1e-3, abs=1e-5)
    assert float((delta - after).norm()) <= tail * (1 + 1e-3) + 1e-5
    # Shrinking to the full rank keeps the update; the rows of A keep their scale.
    adapter = trained_adapter(r=6, seed=3)
    delta = (adapter.lora_B @ adapter.lora_A).detach()
    old_scale = float(adapter.lora_A.detach().norm())
    svd_shrink(adapter, 6)
    assert torch.allclose(adapter.lora_B @ adapter.lora_A, delta, atol=1e-5)
    assert float(adapter.lora_A.detach().norm()) == pytest.approx(old_scale, rel=1e-4)


def test_svd_shrink_carries_optimizer_state_through_the_component_map():
    adapter = trained_adapter(r=5)
    opt = adam_over(adapter, steps=4)
    m_A = opt.state[adapter.lora_A]["exp_avg"].clone()
    A_old = adapter.lora_A.detach().clone()
    svd_shrink(adapter, 3, opt)
    state = opt.state[adapter.lora_A]
    assert state["exp_avg"].shape == (3, 12) and state["exp_avg_sq"].shape == (3, 12)
    assert bool((state["exp_avg_sq"] >= 0).all())
    # The first moment moves with the same map as A: A_new = M A_old, m_new = M m_old, and the
    # new A rows lie in the old row space, so M = A_new pinv(A_old).
    M = adapter.lora_A.detach() @ torch.linalg.pinv(A_old)
    assert torch.allclose(state["exp_avg"], M @ m_A, atol=1e-5)
    assert optimizer_matches_model(opt, adapter)


def test_importance_shrink_keeps_the_largest_components_bit_exactly():
    adapter = trained_adapter(r=5)
    with torch.no_grad():
        adapter.lora_B[:, 1] *= 100
        adapter.lora_B[:, 3] *= 50
    opt = adam_over(adapter, steps=2)
    A, B = adapter.lora_A.detach().clone(), adapter.lora_B.detach().clone()
    m = opt.state[adapter.lora_B]["exp_avg"].clone()
    shrink_adapter(adapter, 2, "importance", opt)
    assert torch.equal(adapter.lora_A, A[[1, 3]]) and torch.equal(adapter.lora_B, B[:, [1, 3]])
    assert torch.equal(opt.state[adapter.lora_B]["exp_avg"], m[:, [1, 3]])


def test_rank_zero_and_back():
    adapter = trained_adapter(r=3)
    opt = adam_over(adapter)
    x = torch.randn(2, 12)
    resize_adapter(adapter, 0, optimizer=opt)
    assert adapter.r == 0 and adapter.lora_A.shape == (0, 12) and adapter.lora_B.shape == (10, 0)
    assert not adapter(x).any()
    resize_adapter(adapter, 2, optimizer=opt)
    assert adapter.r == 2 and not adapter(x).any()  # fresh components start with B = 0
    assert optimizer_matches_model(opt, adapter)


def test_gated_components_move_with_their_gates():
    adapter = trained_adapter(r=4, gating="scalar")
    opt = adam_over(adapter)
    gate = adapter.gate.detach().clone()
    x = torch.randn(3, 12)
    select_components(adapter, [2, 0], opt)
    assert torch.equal(adapter.gate, gate[[2, 0]])
    assert opt.state[adapter.gate]["exp_avg"].shape == (2,)
    with pytest.raises(ValueError, match="ungated"):
        svd_shrink(adapter, 1)
    before = adapter(x).detach()
    grow_adapter(adapter, 2, opt)
    assert torch.equal(adapter.gate[2:], torch.ones(2)) and torch.allclose(adapter(x), before)
    with pytest.raises(ValueError, match="distinct indices"):
        select_components(adapter, [0, 0])


def test_input_gates_are_pruned_row_by_row():
    adapter = trained_adapter(r=4, gating="input")
    opt = adam_over(adapter)
    w = adapter.gate_proj.weight.detach().clone()
    select_components(adapter, [1, 3], opt)
    assert adapter.gate_proj.weight.shape == (2, 12) and adapter.gate_proj.out_features == 2
    assert torch.equal(adapter.gate_proj.weight, w[[1, 3]])
    adapter(torch.randn(2, 5, 12)).sum().backward()  # shapes agree in the forward
    assert optimizer_matches_model(opt, adapter)


def test_training_continues_after_resizes_in_a_model():
    model = get_lora_model(TwoLayerToy(), LoraConfig(r=4, target_modules=["a", "b"]))
    opt = torch.optim.AdamW(trainable(model), lr=1e-2)
    adapters = model.adapter_modules()
    x = torch.randn(32, 16)
    for step in range(12):
        model(x).backward()
        opt.step()
        opt.zero_grad()
        if step == 3:
            resize_adapter(adapters["a"], 7, optimizer=opt)
            resize_adapter(adapters["b"], 1, optimizer=opt)
        if step == 7:
            resize_adapter(adapters["a"], 2, "importance", opt)
            resize_adapter(adapters["b"], 0, optimizer=opt)
        assert optimizer_matches_model(opt, model)
    assert model.ranks() == {"a": 2, "b": 0}
    assert len(trainable(model)) == 4 and all(isinstance(p, nn.Parameter) for p in trainable(model))
    assert torch.isfinite(model(x))


def test_a_parameter_outside_the_optimizer_is_an_error():
    adapter = trained_adapter(r=3)
    opt = torch.optim.SGD([adapter.lora_B], lr=0.1)
    with pytest.raises(ValueError, match="not in the optimizer"):
        grow_adapter(adapter, 1, opt)
