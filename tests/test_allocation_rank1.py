"""Rank-1 Sum LoRA: proximal L1 on gates, sensitivity, pruning that removes components."""

import pytest
import torch
from allocation_helpers import (
    RankNeedToy,
    TwoLayerToy,
    bert_batches,
    optimizer_matches_model,
    quiet_bert,
    toy_training,
    trainable,
)

from dynalora import MergeError, get_lora_model
from dynalora.adapters.layer import pooling_mask
from dynalora.allocation import AllocationController, Rank1LoraConfig
from dynalora.allocation.gates import soft_threshold_


def toy(config: Rank1LoraConfig, lr: float = 0.03):
    model = get_lora_model(TwoLayerToy(use_b=False), config)
    opt = torch.optim.AdamW(trainable(model), lr=lr, weight_decay=0.0)
    return model, opt, AllocationController(model, opt)


def steps(model, opt, controller, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(n):
        model(torch.randn(64, 16, generator=gen)).backward()
        opt.step()
        record = controller.after_optimizer_step()
        records += [record] if record else []
        opt.zero_grad()
    return records


def test_l1_drives_useless_gates_to_exactly_zero_and_pruning_removes_them():
    # No budget beyond the zero gates (keep_fraction=1), ranked by gate: the L1 alone prunes.
    config = Rank1LoraConfig(r=4, target_modules=["a", "b"], l1=1.0, prune_start=10, prune_end=40,
                             prune_every=10, keep_fraction=1.0, prune_by="gate")
    model, opt, controller = toy(config)
    adapters = model.adapter_modules()
    steps(model, opt, controller, 35)
    # b's output does not reach the loss: its gates only feel the L1 step, and end exactly 0.
    assert torch.equal(adapters["b"].gate.detach(), torch.zeros(4))
    assert bool((adapters["a"].gate.detach() != 0).all())
    records = steps(model, opt, controller, 5, seed=1)
    assert records[-1]["step"] == 40 and records[-1]["removed"] == {"b": 4}
    assert model.ranks() == {"a": 4, "b": 0}
    b = adapters["b"]
    assert b.lora_A.shape == (0, 16) and b.lora_B.shape == (16, 0) and b.gate.shape == (0,)
    assert optimizer_matches_model(opt, model)
    steps(model, opt, controller, 3, seed=2)  # training goes on after the removal


def test_soft_threshold_is_lr_scaled_and_needs_the_optimizer():
    config = Rank1LoraConfig(r=3, target_modules=["a", "b"], l1=2.0, prune_start=100, prune_end=100,
                             prune_every=1)
    model, opt, controller = toy(config, lr=0.01)
    gate = model.adapter_modules()["b"].gate
    steps(model, opt, controller, 1)
    assert torch.allclose(gate.detach(), torch.full((3,), 1 - 0.01 * 2.0))  # zero gradient: only the prox
    loose = AllocationController(get_lora_model(TwoLayerToy(), config))
    with pytest.raises(RuntimeError, match="learning rate"):
        loose.after_optimizer_step()


def test_sensitivity_pruning_meets_the_component_budget():
    config = Rank1LoraConfig(r=4, target_modules=["a", "b"], l1=0.0, prune_by="sensitivity", budget=3,
                             prune_start=5, prune_end=20, prune_every=5)
    model, opt, controller = toy(config)
    records = steps(model, opt, controller, 20)
    targets = [r["target"] for r in records]
    assert targets == sorted(targets, reverse=True) and targets[-1] == 3
    assert all(r["components"] <= r["target"] for r in records)
    # b is insensitive (no effect on the loss): it goes first; a keeps the budget.
    assert model.ranks() == {"a": 3, "b": 0}
    assert optimizer_matches_model(opt, model)
    assert controller.sensitivity["a"].shape == (3,) and bool((controller.sensitivity["a"] > 0).all())


def test_input_conditional_gates_prune_by_sensitivity_but_never_merge():
    config = Rank1LoraConfig(r=4, target_modules=["a", "b"], gating="input", budget=4,
                             prune_start=4, prune_end=12, prune_every=4)
    model, opt, controller = toy(config)
    steps(model, opt, controller, 12)
    adapters = model.adapter_modules()
    assert sum(model.ranks().values()) == 4 and adapters["b"].gate_proj.weight.shape[0] == model.ranks()["b"]
    assert optimizer_matches_model(opt, model)
    with pytest.raises(MergeError, match="cannot be merged"):
        model.merge()
    assert not any(layer.merged for layer in model.lora_layers().values())


def test_rank1_state_round_trip_resizes_first():
    config = Rank1LoraConfig(r=4, target_modules=["a", "b"], l1=1.0, prune_start=10, prune_end=40,
                             prune_every=10, keep_fraction=1.0)
    model, opt, controller = toy(config)
    steps(model, opt, controller, 40)
    state, weights = controller.state_dict(), model.state_dict()
    fresh, fresh_opt, fresh_controller = toy(config)
    fresh_controller.load_state_dict(state)
    fresh.load_state_dict(weights)
    fresh_opt.load_state_dict(opt.state_dict())
    assert fresh.ranks() == model.ranks() == {"a": 4, "b": 0}
    assert fresh_controller.step == 40 and fresh_controller.history == controller.history
    assert optimizer_matches_model(fresh_opt, fresh)


def test_soft_threshold_matches_softshrink_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    gates = [torch.randn(n, generator=gen) * 0.1 for n in (5, 0, 7, 3)]
    thresholds = [0.05, 0.05, 0.08, 0.0]  # an empty gate and a zero threshold are skipped
    expected = [torch.nn.functional.softshrink(g, t) if t > 0 else g.clone() for g, t in zip(gates, thresholds)]
    soft_threshold_(gates, thresholds)
    assert all(torch.equal(g, e) for g, e in zip(gates, expected))
    assert int((gates[0] == 0).sum()) > 0  # small gates are exactly zero


def test_overflowed_gradients_leave_component_sensitivity_finite():
    config = Rank1LoraConfig(r=4, target_modules=["a", "b"], l1=0.0, prune_by="sensitivity", budget=3,
                             prune_start=20, prune_end=30, prune_every=5)
    model, opt, controller = toy(config)
    steps(model, opt, controller, 4)
    before = {n: s.clone() for n, s in controller.sensitivity.items()}
    model(torch.randn(64, 16)).backward()
    model.adapter_modules()["a"].gate.grad.fill_(float("inf"))  # a skipped fp16 step
    controller.after_optimizer_step()
    opt.zero_grad()
    assert torch.allclose(controller.sensitivity["a"], before["a"], rtol=1e-6)
    assert all(bool(torch.isfinite(s).all()) for s in controller.sensitivity.values())


def test_default_settings_prune_the_useless_half():
    # a reaches the loss, b does not: half of the 8 components are useless.
    model = get_lora_model(TwoLayerToy(use_b=False), Rank1LoraConfig(r=4, target_modules=["a", "b"]))
    opt = torch.optim.AdamW(trainable(model), lr=1e-2)
    controller = AllocationController(model, opt, total_steps=60)
    records = steps(model, opt, controller, 60)
    assert controller.budget == 4 and records[-1]["components"] == 4
    assert model.ranks() == {"a": 4, "b": 0}
    summary = controller.summary()
    assert summary["initial_components"] == 8 and summary["components"] == 4
    assert summary["ranks_by_type"]["b"]["total"] == 0


def test_l1_threshold_ignores_the_learning_rate_schedule():
    config = Rank1LoraConfig(r=3, target_modules=["a", "b"], l1=2.0, prune_start=100, prune_end=100,
                             prune_every=1)
    model, opt, controller = toy(config, lr=0.01)
    # The schedule has scaled the learning rate down 100x: the L1 step still uses the initial lr.
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.01)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    gate = model.adapter_modules()["b"].gate
    steps(model, opt, controller, 1)
    assert torch.allclose(gate.detach(), torch.full((3,), 1 - 0.01 * 2.0))
    scheduler.step()


def input_gated_bert():
    model = get_lora_model(quiet_bert(), Rank1LoraConfig(r=4, gating="input", modules_to_save=["classifier"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for adapter in model.adapter_modules().values():
            adapter.lora_B.normal_(generator=gen)
            adapter.gate_proj.weight.normal_(generator=gen)  # gates that depend on the input
            adapter.gate_proj.bias.zero_()
    return model.eval()


def test_input_gated_output_does_not_depend_on_padding():
    model = input_gated_bert()
    batch = bert_batches(1, batch=3, seq=10)[0]
    batch["attention_mask"][1, 7:] = 0  # one example already padded
    padded = {k: torch.cat([v, torch.zeros(3, 20, dtype=v.dtype)], dim=1)
              for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    # Each gate pools over real tokens only: bit for bit the same with or without padding.
    adapter = model.adapter_modules()["bert.encoder.layer.0.attention.self.query"]
    x = torch.randn(3, 10, 32)
    x_padded = torch.cat([x, torch.randn(3, 20, 32)], dim=1)
    with pooling_mask([adapter], batch["attention_mask"]):
        short = adapter(x)
    with pooling_mask([adapter], padded["attention_mask"]):
        long = adapter(x_padded)
    assert torch.equal(short, long[:, :10]) and adapter.pool_mask is None
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        theirs = model(**padded).logits
        # The base model alone (no mask handed to the gates) pools over padding: visibly different.
        unmasked = model.base_model(**padded).logits
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)
    assert (unmasked - ours).abs().max() > 1e-4
    assert all(a.pool_mask is None for a in model.adapter_modules().values())  # cleared after the call


def test_prune_plan_in_parameters_drops_the_lowest_score_per_parameter_until_under_the_target():
    from dynalora.adapters.layer import LoraAdapter
    from dynalora.allocation.gates import prune_plan

    adapters = {"narrow": LoraAdapter(16, 16, r=2, scaling=1.0), "wide": LoraAdapter(16, 128, r=2, scaling=1.0)}
    scores = {"narrow": torch.tensor([1.0, 0.5]), "wide": torch.tensor([3.0, 2.0])}
    costs = {"narrow": 32, "wide": 144}
    # per parameter: narrow 0.031, 0.016; wide 0.021, 0.014 -> the wide 2.0 goes first, then narrow 0.5
    plan = prune_plan(adapters, scores, target=2 * 32 + 144 + 10, costs=costs)
    assert plan["narrow"].tolist() == [0, 1] and plan["wide"].tolist() == [0]
    plan = prune_plan(adapters, scores, target=32 + 144, costs=costs)
    assert plan["narrow"].tolist() == [0] and plan["wide"].tolist() == [0]
    # in components, raw scores decide: the narrow 0.5 goes first
    assert prune_plan(adapters, scores, target=3)["narrow"].tolist() == [0]


def test_a_parameter_budget_ends_at_uniform_loras_parameters_over_layers_of_two_widths():
    """Every second layer 128 wide: a component costs 144 parameters there, 32 elsewhere. Starting
    at r = 8 with keep_fraction 0.5, budget_in="parameters" ends within one component under
    uniform LoRA's parameters at r = 4; counting components it ends wherever the pruned
    components happened to sit (here 11% under)."""
    needs, outs = [1, 8, 1, 8, 2, 4], [16, 128, 16, 128, 16, 128]
    names = [f"layers.{i}" for i in range(len(needs))]
    uniform = 4 * sum(16 + out for out in outs)
    ends = {}
    for unit in ("components", "parameters"):
        _, controller, opt = toy_training(RankNeedToy(needs, outs=outs),
                                          Rank1LoraConfig(r=8, target_modules=names, budget_in=unit), 200)
        ends[unit] = controller.summary()
        assert optimizer_matches_model(opt, controller.model)
    assert ends["components"]["components"] == 4 * len(needs)
    assert uniform - 144 < ends["parameters"]["parameters"] <= uniform == ends["parameters"]["budget"]
