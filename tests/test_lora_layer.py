"""The LoRA layer and the model wrapper: forward, merge, gates, dropout, init, several adapters."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_bert, tiny_gpt2, tiny_llama
from lora_helpers import logits, lora_layer_names, randomise, token_batch, train_steps
from torch import nn
from transformers.pytorch_utils import Conv1D

from dynalora import LoraAdapter, LoraConfig, LoraLayer, MergeError, get_lora_model

MODELS = {"bert": (tiny_bert, 120), "llama": (tiny_llama, 128), "gpt2": (tiny_gpt2, 128)}


def base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: layer.base.weight.detach().clone() for n, layer in model.lora_layers().items()}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("targets", [None, "all-linear"])
def test_zero_B_gives_exactly_the_base_outputs(kind, targets):
    build, vocab = MODELS[kind]
    ids = token_batch(vocab)
    base = build()
    expected = logits(base, ids)
    model = get_lora_model(base, LoraConfig(r=4, target_modules=targets))
    assert lora_layer_names(model)
    assert torch.equal(logits(model, ids), expected)


def test_conv1d_layer_computes_the_lora_formula():
    torch.manual_seed(0)
    conv = Conv1D(12, 8)  # GPT-2 style: 8 in, 12 out, weight stored 8 x 12
    layer = LoraLayer(conv)
    adapter = LoraAdapter(8, 12, r=3, scaling=2.0)
    nn.init.normal_(adapter.lora_B)
    layer.add_adapter("a", adapter)
    x = torch.randn(2, 5, 8)
    expected = x @ conv.weight + conv.bias + 2.0 * x @ adapter.lora_A.T @ adapter.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    assert layer.weight is conv.weight and layer.bias is conv.bias


@pytest.mark.parametrize("kind", MODELS)
def test_merge_after_training_matches_unmerged_and_unmerge_restores(kind):
    build, vocab = MODELS[kind]
    ids = token_batch(vocab)
    model = get_lora_model(build(), LoraConfig(r=4, target_modules="all-linear", gating="scalar"))
    train_steps(model, ids)
    assert all(a.lora_B.abs().sum() > 0 for a in model.adapter_modules().values())
    before = base_weights(model)
    unmerged = logits(model, ids)
    model.merge()
    assert any(not torch.equal(before[n], layer.base.weight) for n, layer in model.lora_layers().items())
    torch.testing.assert_close(logits(model, ids), unmerged, atol=1e-5, rtol=0)
    model.unmerge()
    for name, layer in model.lora_layers().items():
        torch.testing.assert_close(layer.base.weight, before[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model, ids), unmerged, atol=1e-6, rtol=0)


def test_merged_state_dict_leaves_the_model_untouched():
    model = get_lora_model(tiny_bert(), LoraConfig(r=4))
    randomise(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = model.merged_state_dict()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    name = "bert.encoder.layer.0.attention.self.query"
    layer = model.lora_layers()[name]
    torch.testing.assert_close(state[f"{name}.weight"], layer.base.weight + layer.adapter().delta_weight())


def test_merge_and_unload_returns_a_plain_model_with_the_same_outputs():
    ids = token_batch(128)
    model = get_lora_model(tiny_llama(), LoraConfig(r=4, target_modules="all-linear"))
    randomise(model)
    expected = logits(model, ids)
    plain = model.merge_and_unload()
    assert not lora_layer_names(plain)
    assert isinstance(plain.model.layers[0].self_attn.q_proj, nn.Linear)
    torch.testing.assert_close(logits(plain, ids), expected, atol=1e-5, rtol=0)


def test_scalar_gates_scale_each_component():
    adapter = LoraAdapter(6, 5, r=3, scaling=0.5, gating="scalar")
    nn.init.normal_(adapter.lora_B)
    with torch.no_grad():
        adapter.gate.copy_(torch.tensor([1.0, 0.0, 2.0]))
    x = torch.randn(4, 6)
    B, A, g = adapter.lora_B, adapter.lora_A, adapter.gate
    torch.testing.assert_close(adapter(x), 0.5 * x @ A.T @ torch.diag(g) @ B.T)
    torch.testing.assert_close(adapter.delta_weight(), 0.5 * B @ torch.diag(g) @ A)


def test_input_gated_adapter_runs_but_refuses_to_merge():
    ids = token_batch()
    model = get_lora_model(tiny_bert(), LoraConfig(r=4, gating="input"))
    with model.disable_adapters():
        plain = logits(model, ids)
    randomise(model)
    with torch.no_grad():
        for adapter in model.adapter_modules().values():
            nn.init.normal_(adapter.gate_proj.weight)
    gated = logits(model, ids)
    assert not torch.allclose(gated, plain)
    # The gate depends on the input, so the update is not linear in it.
    adapter = next(iter(model.adapter_modules().values()))
    x = torch.randn(1, 5, 32)
    assert not torch.allclose(adapter(3 * x), 3 * adapter(x), atol=1e-4)
    before = base_weights(model)
    with pytest.raises(MergeError, match=r"input-conditional.*cannot be merged"):
        model.merge()
    with pytest.raises(MergeError, match=r"cannot be merged"):
        model.merge_and_unload()
    with pytest.raises(MergeError, match=r"cannot be merged"):
        model.merged_state_dict()
    assert all(not layer.merged for layer in model.lora_layers().values())
    assert all(torch.equal(before[n], layer.base.weight) for n, layer in model.lora_layers().items())
    assert lora_layer_names(model.base_model)
    assert torch.equal(logits(model, ids), gated)


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    layer = LoraLayer(nn.Linear(16, 8))
    adapter = LoraAdapter(16, 8, r=4, scaling=1.0, dropout=0.5)
    nn.init.normal_(adapter.lora_B)
    layer.add_adapter("a", adapter)
    x = torch.randn(3, 16)
    exact = layer.base(x) + x @ adapter.lora_A.T @ adapter.lora_B.T
    layer.eval()
    torch.testing.assert_close(layer(x), exact)
    layer.train()
    first, second = layer(x), layer(x)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, exact)


def test_kaiming_and_gaussian_init():
    torch.manual_seed(0)
    kaiming = LoraAdapter(256, 8, r=16, scaling=1.0, init="kaiming")
    gaussian = LoraAdapter(256, 8, r=16, scaling=1.0, init="gaussian")
    bound = 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)) on a (r x in) matrix: U(-1/sqrt(in), ..)
    assert kaiming.lora_A.abs().max() <= bound
    assert kaiming.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert gaussian.lora_A.std().item() == pytest.approx(1 / 16, rel=0.05)
    assert gaussian.lora_A.abs().max() > bound
    for adapter in (kaiming, gaussian):
        assert torch.equal(adapter.lora_B, torch.zeros(8, 16))
    # Growing to rank 64: ask for 64 rows (std 1/64) and keep the new ones.
    assert gaussian.new_A_rows(64)[16:].std().item() == pytest.approx(1 / 64, rel=0.05)


def test_rank_zero_layers_add_nothing_and_keep_a_usable_scaling():
    ids = token_batch()
    base = tiny_bert()
    expected = logits(base, ids)
    config = LoraConfig(r=4, alpha=8, rank_pattern={"layer.0.attention.self.query": 0})
    model = get_lora_model(base, config)
    zero = model.adapter_modules()["bert.encoder.layer.0.attention.self.query"]
    assert zero.r == 0 and zero.lora_A.shape == (0, 32) and zero.lora_B.shape == (32, 0)
    assert zero.scaling == 2.0  # alpha / global r: growing it later must count
    randomise(model)
    with torch.no_grad():
        for adapter in model.adapter_modules().values():
            if adapter.r:
                adapter.lora_B.zero_()
    assert torch.equal(logits(model, ids), expected)
    model.merge()
    torch.testing.assert_close(logits(model, ids), expected, atol=1e-6, rtol=0)


def two_adapter_model():
    model = get_lora_model(tiny_bert(), LoraConfig(r=4), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=2, target_modules=["query", "key"]))
    randomise(model, "a", seed=1)
    randomise(model, "b", seed=2)
    return model


def test_several_adapters_switch_mix_and_disable():
    ids = token_batch()
    model = two_adapter_model()
    with model.disable_adapters():
        base_out = logits(model, ids)
    model.set_adapter("a")
    only_a = logits(model, ids)
    model.set_adapter("b")
    only_b = logits(model, ids)
    assert not torch.allclose(only_a, only_b)
    assert not torch.allclose(only_a, base_out)
    model.set_adapter(["a", "b"], weights=[1.0, 0.0])
    assert model.active_adapters == ["a", "b"]
    torch.testing.assert_close(logits(model, ids), only_a)
    model.set_adapter(["a", "b"], weights=[0.0, 1.0])
    torch.testing.assert_close(logits(model, ids), only_b)
    with model.disable_adapters():
        assert torch.equal(logits(model, ids), base_out)
    # Both at weight 1 in one linear layer: the two updates add.
    layer = model.lora_layers()["bert.encoder.layer.0.attention.self.query"]
    x = torch.randn(2, 3, 32)
    model.set_adapter(["a", "b"])
    torch.testing.assert_close(layer(x), layer.base(x) + layer.adapters["a"](x) + layer.adapters["b"](x))
    with pytest.raises(KeyError, match=r"unknown adapter"):
        model.set_adapter("c")


def test_per_row_adapters_match_running_each_row_alone():
    ids = token_batch(batch=4)
    model = two_adapter_model()
    names = ["a", "b", None, "a"]
    with model.per_row_adapters(names):
        mixed = logits(model, ids)
    for i, name in enumerate(names):
        if name is None:
            with model.disable_adapters():
                alone = logits(model, ids[i:i + 1])
        else:
            model.set_adapter(name)
            alone = logits(model, ids[i:i + 1])
        torch.testing.assert_close(mixed[i:i + 1], alone, atol=1e-5, rtol=0)
    with pytest.raises(KeyError, match=r"unknown adapter"), model.per_row_adapters(["a", "zzz", None, None]):
        pass


def test_delete_adapter_and_trainable_follows_the_new_adapter():
    model = two_adapter_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.b." in n for n in trainable)
    model.set_adapter("a")
    model.set_trainable("a")
    assert all(".adapters.a." in n for n, p in model.named_parameters() if p.requires_grad)
    model.delete_adapter("b")
    assert all("b" not in layer.adapters for layer in model.lora_layers().values())
    assert model.active_adapters == ["a"]


def test_requires_grad_and_parameter_counts():
    base = tiny_bert()
    base_total = sum(p.numel() for p in base.parameters())
    model = get_lora_model(base, LoraConfig(r=4, modules_to_save=["classifier"]))
    for name, p in model.named_parameters():
        assert p.requires_grad == (".adapters." in name or ".classifier." in name), name
    # 2 layers x (query, value) x (A: 4 x 32 + B: 32 x 4), plus the 32 -> 2 classifier.
    lora = 2 * 2 * (4 * 32 + 32 * 4)
    head = 32 * 2 + 2
    assert model.parameter_counts() == (lora + head, base_total + lora)


def test_a_merged_model_refuses_changes_that_need_the_unmerged_path():
    ids = token_batch()
    model = two_adapter_model()
    model.set_adapter("a")
    model.merge()
    merged = logits(model, ids)
    for action in (lambda: model.set_adapter("b"), lambda: model.delete_adapter("b"),
                   lambda: model.add_adapter("c", LoraConfig(r=2)),
                   lambda: model.disable_adapters().__enter__(),
                   lambda: model.per_row_adapters(["a", "b", None]).__enter__()):
        with pytest.raises(RuntimeError, match="unmerge"):
            action()
    assert sorted(model.configs) == ["a", "b"] and model.active_adapters == ["a"]
    assert all(layer.row_adapters is None and not layer.disabled for layer in model.lora_layers().values())
    assert torch.equal(logits(model, ids), merged)
