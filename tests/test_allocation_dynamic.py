"""Dynamic LoRA through the AllocationController: allocation, budget, equivalences, resume, export."""

import copy
import itertools
import json

import pytest
import torch
from allocation_helpers import (
    TwoLayerToy,
    bert_batches,
    optimizer_matches_model,
    quiet_bert,
    run_steps,
    split,
    trainable,
)

from dynalora import ConfigError, DynaLoraModel, LoraConfig, get_lora_model
from dynalora.allocation import AllocationController, DynamicLoraConfig, resize_adapter


def toy_run(steps=40, gamma=1.0, use_b=True, scale_b=1.0, t_final=None, **overrides):
    config = DynamicLoraConfig(r=4, target_modules=["a", "b"], t_warmup=5, t_final=t_final or steps, delta_t=5,
                               stats_every=1, gamma=gamma, **{"beta": 1.0, **overrides})
    model = get_lora_model(TwoLayerToy(use_b=use_b, scale_b=scale_b), config)
    opt = torch.optim.AdamW(trainable(model), lr=1e-2)
    controller = AllocationController(model, opt)
    toy_steps(model, controller, opt, steps)
    return model, controller, opt


def toy_steps(model, controller, opt, n, seed=0, each=None):
    """n optimizer steps on random inputs; `each(step)` runs after every controller step."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        model(torch.randn(64, 16, generator=gen)).backward()
        opt.step()
        controller.after_optimizer_step()
        opt.zero_grad()
        if each is not None:
            each(controller.step)


def test_paper_literal_forward_weights_scale_the_update_and_follow_importance():
    model, controller, opt = toy_run(use_b=False, weight_mode="forward", importance="magnitude", tau=1.0,
                                     w_min=0.25, w_max=4.0, beta=0.0)
    adapters = model.adapter_modules()
    # weight_mode="forward": w_l sits in the layer (s * w * B A x), as in the paper.
    assert float(adapters["a"].weight) > 1.5 > 0.5 > float(adapters["b"].weight)
    assert float(adapters["a"].weight) == pytest.approx(float(controller.weights[0]))
    assert model.ranks()["a"] > 4 > model.ranks()["b"]
    assert controller.history[-1]["importance"]["b"] == 0.0
    assert abs(float(controller.weights.mean()) - 1.0) < 1e-9
    assert optimizer_matches_model(opt, model)


def test_higher_input_variance_gets_higher_rank_with_gamma_zero():
    model, controller, _ = toy_run(gamma=0.0, use_b=False, scale_b=3.0)
    # Paper-literal rule: the rank follows the input variance even for the useless layer b.
    assert model.ranks()["b"] > model.ranks()["a"]
    variance = controller.history[-1]["variance"]
    assert variance["b"] == pytest.approx(9 * variance["a"], rel=0.05)
    # beta = 0 (the default) gathers no input statistics at all.
    assert toy_run(steps=8, beta=0.0)[1].stats is None


def test_budget_default_is_uniform_lora_and_met_exactly_every_time():
    model, controller, _ = toy_run(use_b=False)
    assert controller.budget == 4 * (32 + 32)
    assert all(h["parameters"] == controller.budget for h in controller.history)
    assert sum(r * 32 for r in model.ranks().values()) == controller.budget
    # A budget the costs cannot meet exactly: never exceeded, within one rank's cost.
    model, controller, _ = toy_run(use_b=False, budget=300, hysteresis=0)
    assert all(300 - 32 < h["parameters"] <= 300 for h in controller.history)


def test_weights_move_every_step_towards_a_target_refreshed_every_weight_every_steps():
    model, controller, opt = toy_run(steps=5, t_final=40, weight_every=4)
    assert controller.weight_target is None and torch.equal(controller.weights, torch.ones(2, dtype=torch.float64))
    weights, targets = [], []
    toy_steps(model, controller, opt, 8, seed=1, each=lambda step: (
        weights.append(controller.weights.clone()), targets.append(controller.weight_target.clone())))
    # Steps 6..13: the target is recomputed at 6 and 10 (t_warmup + 1 + k * weight_every) only,
    assert [torch.equal(a, b) for a, b in itertools.pairwise(targets)] == [True] * 3 + [False] + [True] * 3
    # while the weights take an EMA step towards it every step, keeping mean 1.
    assert not any(torch.equal(a, b) for a, b in itertools.pairwise(weights))
    assert all(abs(float(w.mean()) - 1.0) < 1e-12 for w in weights)
    expected = weights[0].lerp(targets[1], 1 - 0.9)  # weight_beta 0.9
    assert torch.equal(weights[1], expected)
    exact = toy_run(steps=12, t_final=40, weight_every=1)[1]
    assert not torch.equal(exact.weight_target, controller.weight_target)  # 1: recomputed every step


def test_overflowed_gradients_do_not_poison_the_allocation():
    # An fp16 step the loss scaler skipped still reaches after_optimizer_step with inf/nan grads.
    model, controller, opt = toy_run(steps=12, t_final=40, uncertainty=True)
    before = controller.importance.clone()
    adapters = model.adapter_modules()
    model(torch.randn(64, 16)).backward()
    adapters["b"].lora_B.grad.fill_(float("inf"))
    adapters["a"].lora_B.grad[0, 0] = float("nan")
    controller.after_optimizer_step()  # the optimizer skipped this step; the controller must too
    opt.zero_grad()
    assert torch.allclose(controller.importance, before, rtol=1e-6)
    assert bool(torch.isfinite(controller.uncertainty).all() and torch.isfinite(controller.weights).all())
    assert all(torch.isfinite(a.weight) for a in adapters.values())
    toy_steps(model, controller, opt, 8, seed=3)  # training and reallocation go on with valid numbers
    assert controller.history[-1]["step"] == 20 and controller.history[-1]["parameters"] == controller.budget


def test_a_step_between_reallocations_never_reads_the_device():
    # Meta tensors hold no data, so any host read (.item(), bool(), nonzero) raises: steps that
    # complete on "meta" cannot synchronise with an accelerator. Covers importance (with the
    # uncertainty term), the weight update written into the layers, and sampled input statistics.
    config = DynamicLoraConfig(r=4, target_modules=["a", "b"], t_warmup=1, t_final=50, delta_t=40,
                               stats_every=1, uncertainty=True, beta=1.0, weight_mode="forward")
    with torch.device("meta"):
        model = get_lora_model(TwoLayerToy(), config)
    controller = AllocationController(model, total_steps=50)
    for _ in range(3):
        model(torch.randn(8, 16, device="meta")).backward()
        controller.after_optimizer_step()
        model.zero_grad()
    assert controller.step == 3 and controller.weights.device.type == "meta"
    assert all(m.total.device.type == "meta" for m in controller.stats.moments.values())


class Funnel(torch.nn.Module):
    """Adapted layers of different shapes: a is 48 x 16, b is 8 x 48 (out x in)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(16, 48), torch.nn.Linear(48, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.b(torch.tanh(self.a(x))) - x[:, :8]).pow(2).mean()


def test_budget_counts_the_real_sizes_of_A_and_B_in_layers_of_different_shapes():
    config = DynamicLoraConfig(r=4, target_modules=["a", "b"], t_warmup=2, t_final=12, delta_t=2, stats_every=1,
                               beta=1.0, hysteresis=0)
    model = get_lora_model(Funnel(), config)
    opt = torch.optim.AdamW(trainable(model), lr=1e-2)
    controller = AllocationController(model, opt)
    assert controller.budget == 4 * (16 + 48) + 4 * (48 + 8)  # uniform LoRA at r = 4
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        model(torch.randn(32, 16, generator=gen)).backward()
        opt.step()
        controller.after_optimizer_step()
        opt.zero_grad()
    live = sum(a.lora_A.numel() + a.lora_B.numel() for a in model.adapter_modules().values())
    assert live == controller.history[-1]["parameters"] <= controller.budget
    assert len(controller.history) == 5 and model.ranks() != {"a": 4, "b": 4}


def bert_controller(total_steps=24, seed=0, **overrides):
    # Loosened (paper-like bounds, no hysteresis, input variance on) so that a 24-step run on
    # random data moves ranks and weights: these tests check mechanics, not the defaults.
    settings = dict(r=4, modules_to_save=["classifier"], t_warmup=4, t_final=total_steps, delta_t=4,
                    stats_every=2, r_min=0, beta=1.0, hysteresis=0, tau=0.5, w_min=0.25, w_max=4.0)
    settings.update(overrides)
    model = get_lora_model(quiet_bert(seed), DynamicLoraConfig(**settings))
    opt = torch.optim.AdamW(trainable(model), lr=2e-2)
    return model, opt, AllocationController(model, opt, total_steps=total_steps)


def test_bert_reallocation_keeps_optimizer_exact_and_training_running():
    model, opt, controller = bert_controller()
    records = run_steps(model, controller, opt, bert_batches(24))
    assert len(records) == 5 and any(r["changed"] for r in records)
    assert len(set(model.ranks().values())) > 1
    assert optimizer_matches_model(opt, model)
    assert all(r["parameters"] == controller.budget for r in records)
    # weight_mode="lr" (default): the weights scale learning rates, the forward is unweighted.
    assert all(float(a.weight) == 1.0 for a in model.adapter_modules().values())
    assert float(controller.weights.max()) > 1.2 and float(controller.weights.min()) < 0.8


def test_bf16_adapters_stay_bf16_through_shrinks_and_growths():
    # A shrink hands the SVD's float32 values back; the adapter must stay in the model's dtype
    # or the next forward mixes float32 and bf16 (a crash in the first step after it).
    settings = dict(r=4, modules_to_save=["classifier"], t_warmup=4, t_final=24, delta_t=4, stats_every=2, r_min=0,
                    hysteresis=0, tau=0.5, w_min=0.25, w_max=4.0)
    model = get_lora_model(quiet_bert().to(torch.bfloat16), DynamicLoraConfig(**settings), autocast_adapter_dtype=False)
    opt = torch.optim.AdamW(trainable(model), lr=2e-2)
    controller = AllocationController(model, opt, total_steps=24)
    records = run_steps(model, controller, opt, bert_batches(24))
    moves = [new - old for r in records for old, new, *_ in r["changed"].values()]
    assert min(moves) < 0 < max(moves)
    assert {p.dtype for a in model.adapter_modules().values() for p in a.parameters()} == {torch.bfloat16}
    assert torch.isfinite(model(**bert_batches(1)[0]).loss)


def test_gradient_accumulation_gives_the_same_allocation():
    batches = bert_batches(16, batch=8)
    torch.manual_seed(5)
    model1, opt1, c1 = bert_controller(total_steps=16)
    run_steps(model1, c1, opt1, batches)
    torch.manual_seed(5)
    model2, opt2, c2 = bert_controller(total_steps=16)
    run_steps(model2, c2, opt2, [part for b in batches for part in split(b, 2)], accumulation=2)
    assert model1.ranks() == model2.ranks() and len(set(model1.ranks().values())) > 1
    assert torch.allclose(c1.weights, c2.weights, rtol=1e-4, atol=1e-6)
    assert torch.allclose(c1.importance, c2.importance, rtol=1e-3, atol=1e-9)
    for h1, h2 in zip(c1.history, c2.history):
        assert h1["ranks"] == h2["ranks"]
        assert h1["variance"] == pytest.approx(h2["variance"], rel=1e-6)  # float32 activations


@pytest.mark.parametrize("grow_init", ["random", "gradient", "target"])
def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(grow_init):
    """Also when the checkpoint falls just before a reallocation step, whose gradient the
    resumed run must probe (grow_init="gradient", without the input statistic) as the
    uninterrupted one did; and with rank_rule="target" ("target" here), whose secant needs
    the previous probe's gradient and update from the checkpoint."""
    options = {"grow_init": grow_init, **({"beta": 0.0} if grow_init == "gradient" else {})}
    if grow_init == "target":
        options = {"rank_rule": "target", "beta": 0.0}
    batches = bert_batches(24)
    torch.manual_seed(7)
    model, opt, controller = bert_controller(**options)
    run_steps(model, controller, opt, batches)
    split = controller.history[1]["step"] - 1 if grow_init == "gradient" else 10
    if grow_init == "target":  # inside the probe window of the first reallocation after ranks moved
        history = controller.history
        split = next(h["step"] for h, before in zip(history[1:], history) if len(set(before["ranks"].values())) > 1) - 1
    assert any(res for h in controller.history for res in h["changed"].values() if res[1] > res[0])  # something grew

    torch.manual_seed(7)
    model_a, opt_a, c_a = bert_controller(**options)
    run_steps(model_a, c_a, opt_a, batches[:split])
    saved = json.loads(json.dumps(c_a.state_dict()))  # plain data
    model_state = copy.deepcopy(model_a.state_dict())
    opt_state = copy.deepcopy(opt_a.state_dict())
    rng = torch.get_rng_state()
    assert len(set(c_a.ranks().values())) > 1  # the checkpoint has non-uniform ranks

    # The same pretrained base (a model's state_dict() holds the adapters and the modules to
    # save, not the frozen base weights), every trained tensor elsewhere: they must all come back.
    model_b, opt_b, c_b = bert_controller(**options)
    with torch.no_grad():
        for p in trainable(model_b):
            p.normal_()
    c_b.load_state_dict(saved)  # first: resizes to the saved ranks
    model_b.load_state_dict(model_state)
    opt_b.load_state_dict(opt_state)
    torch.set_rng_state(rng)
    run_steps(model_b, c_b, opt_b, batches[split:])
    assert model_b.ranks() == model.ranks()
    assert torch.equal(c_b.weights, controller.weights)
    assert c_b.history == controller.history
    for (name, p), q in zip(model.named_parameters(), model_b.parameters()):
        assert torch.equal(p, q), name


def test_resuming_under_other_method_settings_is_refused_naming_them():
    """A default that changed between a run and its resume (hysteresis became 0 below r = 4)
    would silently change the run: the controller says which setting, and how to keep it."""
    _, _, started = bert_controller(hysteresis=1)
    saved = json.loads(json.dumps(started.state_dict()))
    _, _, resumed = bert_controller()  # hysteresis=0
    with pytest.raises(ConfigError, match=r"hysteresis=1 \(now 0\).*--method-options hysteresis=1"):
        resumed.load_state_dict(saved)
    _, _, same = bert_controller(hysteresis=1)
    same.load_state_dict(saved)  # the same settings resume


def test_export_of_a_dynamic_adapter_loads_in_peft_with_the_same_logits(tmp_path):
    peft = pytest.importorskip("peft")
    model, opt, controller = bert_controller(weight_mode="forward")  # weights in the layers, exported too
    run_steps(model, controller, opt, bert_batches(24))
    adapters = model.adapter_modules()
    first = next(iter(adapters))
    resize_adapter(adapters[first], 0, optimizer=opt)  # one layer switched off entirely
    ranks = model.ranks()
    assert ranks[first] == 0 and len({r for r in ranks.values() if r}) > 1
    assert len({round(float(a.weight), 4) for a in adapters.values()}) > 1
    model.eval()
    x = bert_batches(1, batch=3)[0]
    ours = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).logits
    model.export_peft(tmp_path / "peft")
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert document["rank_pattern"] and first not in document["target_modules"]
    loaded = peft.PeftModel.from_pretrained(quiet_bert().eval(), tmp_path / "peft")
    for name, module in loaded.named_modules():
        if name.endswith(("query", "value")) and hasattr(module, "lora_A") and "default" in module.lora_A:
            assert module.lora_A["default"].weight.shape[0] == ranks[name.removeprefix("base_model.model.")]
    theirs = loaded(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    # Our own format keeps the ranks (rank 0 included), weights and config class too.
    model.save_pretrained(tmp_path / "ours")
    back = DynaLoraModel.from_pretrained(quiet_bert().eval(), tmp_path / "ours")
    assert back.ranks() == ranks and isinstance(back.configs["default"], DynamicLoraConfig)
    again = back(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).logits
    assert torch.allclose(ours, again, atol=1e-6)


def test_regulariser_terms():
    model, _, controller = bert_controller()
    assert controller.loss_terms().shape == () and float(controller.loss_terms()) == 0.0
    model, _, controller = bert_controller(lambda_a=0.1, lambda_b=0.2, lambda_orth=0.3)
    for adapter in model.adapter_modules().values():
        torch.nn.init.normal_(adapter.lora_B)
    adapters = list(model.adapter_modules().values())
    expected = sum(0.1 * a.lora_A.pow(2).sum() + 0.2 * a.lora_B.pow(2).sum()
                   + 0.3 * ((a.lora_A @ a.lora_A.T - torch.eye(4)).pow(2).sum()
                            + (a.lora_B.T @ a.lora_B - torch.eye(4)).pow(2).sum()) for a in adapters)
    term = controller.loss_terms()
    assert torch.allclose(term, expected)
    term.backward()
    assert all(a.lora_A.grad is not None and a.lora_A.grad.abs().sum() > 0 for a in adapters)


def test_controller_misuse_is_reported_clearly():
    plain = get_lora_model(quiet_bert(), LoraConfig(r=2))
    with pytest.raises(TypeError, match="DynamicLoraConfig or Rank1LoraConfig"):
        AllocationController(plain)
    model = get_lora_model(quiet_bert(), DynamicLoraConfig(r=2))
    controller = AllocationController(model)
    with pytest.raises(ConfigError, match="total_steps"):
        controller.after_optimizer_step()
    with pytest.raises(ValueError, match="does not hold the adapter parameters"):
        controller.attach_optimizer(torch.optim.SGD(model.base_model.classifier.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="budget"):
        AllocationController(get_lora_model(quiet_bert(), DynamicLoraConfig(r=2, r_min=1, budget=10)))
    other = AllocationController(get_lora_model(quiet_bert(), DynamicLoraConfig(r=2)), total_steps=10)
    with pytest.raises(ValueError, match="method"):
        other.load_state_dict({"method": "rank1"})


def test_plot_writes_a_png(tmp_path):
    model, opt, controller = bert_controller()
    run_steps(model, controller, opt, bert_batches(12))
    controller.plot(tmp_path / "ranks.png")
    assert (tmp_path / "ranks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reduce_hook_sees_the_local_statistics_and_growth_ignores_the_global_rng():
    # `reduce` is where a multi-process run plugs an all-reduce mean: decisions use its output.
    seen = []

    def fake_all_reduce(tensor):
        seen.append(tensor.clone())
        return torch.tensor([1.0, 9.0], dtype=tensor.dtype, device=tensor.device)

    def run(rng_seed, reduce=None):
        config = DynamicLoraConfig(r=4, target_modules=["a", "b"], t_warmup=5, t_final=10, delta_t=5, stats_every=1,
                                   beta=1.0, gamma=0.0, hysteresis=0)
        model = get_lora_model(TwoLayerToy(), config)
        opt = torch.optim.AdamW(trainable(model), lr=1e-2)
        controller = AllocationController(model, opt, reduce=reduce)
        torch.manual_seed(rng_seed)  # another process's RNG stream
        toy_steps(model, controller, opt, 10)
        return model, controller

    model, controller = run(0, fake_all_reduce)
    assert len(seen) == 1 and seen[0].shape == (2,)  # at the reallocation (step 10): the local variances
    assert controller.history[-1]["variance"] == {"a": 1.0, "b": 9.0}
    assert model.ranks()["b"] > model.ranks()["a"]  # gamma = 0: ranks follow the reduced variance
    # Fresh components come from a generator seeded by the step, not from the global RNG.
    other, _ = run(123, fake_all_reduce)
    for mine, theirs in zip(model.adapter_modules().values(), other.adapter_modules().values()):
        assert mine.r == theirs.r
        assert torch.equal(mine.lora_A[4:], theirs.lora_A[4:])
