"""Many adapters on one base: per-row batches, switching, weighted mixes, merging, loading."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

from dynalora.adapters import DynaLoraModel, LoraConfig

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def randomize(wrapper: DynaLoraModel, seed: int = 1) -> None:
    """B starts at zero (adapter = no-op); give every adapter a real update to compare."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in wrapper.lora_layers().values():
            for adapter in layer.adapters.values():
                adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator) * 0.3)


def two_adapters(model_fn=tiny_llama, targets=None) -> DynaLoraModel:
    """Adapter "a" (rank 4, attention+MLP) and "b" (rank 2, attention only) on one base."""
    targets = targets or LLAMA_TARGETS
    wrapper = DynaLoraModel(model_fn(), LoraConfig(r=4, alpha=8, target_modules=targets), "a")
    wrapper.add_adapter("b", LoraConfig(r=2, alpha=4, target_modules=targets[:2]))
    randomize(wrapper)
    wrapper.eval()
    return wrapper


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model_fn,targets", [(tiny_llama, None), (tiny_gpt2, ["c_attn", "c_fc", "c_proj"])])
def test_per_row_batch_matches_each_row_alone(model_fn, targets):
    wrapper = two_adapters(model_fn, targets)
    names = ["a", "b", None, "a"]
    with wrapper.per_row_adapters(names):
        batched = logits(wrapper, IDS)
    for i, name in enumerate(names):
        if name is None:
            with wrapper.disable_adapters():
                alone = logits(wrapper, IDS[i : i + 1])
        else:
            wrapper.set_adapter(name)
            alone = logits(wrapper, IDS[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-5)
    # row 1 under adapter "a" differs: the rows really went through different adapters
    wrapper.set_adapter("a")
    assert not torch.allclose(logits(wrapper, IDS[1:2]), batched[1:2], atol=1e-4)


def test_switching_adapters_restores_exactly():
    wrapper = two_adapters()
    wrapper.set_adapter("a")
    first = logits(wrapper, IDS)
    wrapper.set_adapter("b")
    other = logits(wrapper, IDS)
    wrapper.set_adapter("a")
    assert torch.equal(logits(wrapper, IDS), first)
    assert not torch.allclose(first, other, atol=1e-4)
    with wrapper.disable_adapters():
        base = logits(wrapper, IDS)
    assert torch.equal(logits(wrapper, IDS), first)
    assert not torch.allclose(base, first, atol=1e-4)


def test_weighted_mix_with_weights_one_zero_is_the_first_adapter():
    wrapper = two_adapters()
    wrapper.set_adapter("a")
    only_a = logits(wrapper, IDS)
    wrapper.set_adapter(["a", "b"], weights=[1.0, 0.0])
    torch.testing.assert_close(logits(wrapper, IDS), only_a, rtol=0, atol=1e-6)
    wrapper.set_adapter(["a", "b"], weights=[0.0, 1.0])
    wrapper_b = logits(wrapper, IDS)
    wrapper.set_adapter("b")
    torch.testing.assert_close(wrapper_b, logits(wrapper, IDS), rtol=0, atol=1e-6)


def test_weighted_mix_of_different_ranks_is_the_weighted_sum_of_deltas():
    wrapper = two_adapters()
    wa, wb = 0.7, -1.3
    wrapper.set_adapter(["a", "b"], weights=[wa, wb])
    for name, layer in wrapper.lora_layers().items():
        x = torch.randn(3, 5, layer.in_features)
        expected = layer.base(x)
        for adapter_name, w in (("a", wa), ("b", wb)):
            if adapter_name in layer.adapters:
                expected = expected + w * layer.adapters[adapter_name](x)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6, msg=name)
    # the same at the weight level: the model equals a plain copy with W0 + wa dWa + wb dWb
    mixed = logits(wrapper, IDS)
    plain = tiny_llama()
    with torch.no_grad():
        for name, layer in wrapper.lora_layers().items():
            delta = sum(w * layer.adapters[n].delta_weight() for n, w in (("a", wa), ("b", wb))
                        if n in layer.adapters)
            plain.get_submodule(name).weight.add_(delta)
    torch.testing.assert_close(logits(plain, IDS), mixed, rtol=1e-4, atol=1e-5)
    ranks = {n: (layer.adapters["a"].r, layer.adapters["b"].r) for n, layer in wrapper.lora_layers().items()
             if "b" in layer.adapters}
    assert set(ranks.values()) == {(4, 2)}


def test_merged_single_adapter_matches_unmerged_and_unmerge_restores():
    wrapper = two_adapters()
    wrapper.set_adapter("b")
    unmerged = logits(wrapper, IDS)
    base_weights = {n: layer.base.weight.clone() for n, layer in wrapper.lora_layers().items()}
    wrapper.merge()
    torch.testing.assert_close(logits(wrapper, IDS), unmerged, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge"), wrapper.per_row_adapters(["a"] * 4):
        pass
    with pytest.raises(RuntimeError, match="unmerge"):
        wrapper.set_adapter("a")
    wrapper.unmerge()
    for name, layer in wrapper.lora_layers().items():
        torch.testing.assert_close(layer.base.weight, base_weights[name], rtol=0, atol=1e-6)
    wrapper.set_adapter("a")  # switching works again after unmerge


def test_loaded_adapters_serve_side_by_side(tmp_path):
    trained = {}
    for name, r, seed in (("math", 4, 1), ("chat", 2, 2)):
        wrapper = DynaLoraModel(tiny_llama(), LoraConfig(r=r, target_modules=LLAMA_TARGETS[:3],
                                                         rank_pattern={"layers\\.1\\.self_attn\\.q_proj": 1}))
        randomize(wrapper, seed)
        wrapper.save_pretrained(tmp_path / name)
        trained[name] = logits(wrapper.eval(), IDS)
    server = DynaLoraModel.from_pretrained(tiny_llama(), tmp_path / "math", adapter_name="math")
    server.load_adapter(tmp_path / "chat", "chat")
    assert server.active_adapters == ["math"]
    assert server.ranks("chat")["model.layers.1.self_attn.q_proj"] == 1
    assert not any(p.requires_grad for p in server.parameters())
    with server.per_row_adapters(["chat", "math", "chat", "math"]):
        batched = logits(server, IDS)
    torch.testing.assert_close(batched[0::2], trained["chat"][0::2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1::2], trained["math"][1::2], rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="unknown adapter"), server.per_row_adapters(["nope"] * 4):
        pass
    with pytest.raises(ValueError, match="4 adapter names for a batch of 2"), server.per_row_adapters(["chat"] * 4):
        logits(server, IDS[:2])


def test_per_row_generation_matches_generating_alone():
    wrapper = two_adapters()
    prompt = IDS[:, :6]
    names = ["b", "a", None, "b"]
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad(), wrapper.per_row_adapters(names):
        together = wrapper.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    for i, name in enumerate(names):
        row = prompt[i : i + 1]
        with torch.no_grad():
            if name is None:
                with wrapper.disable_adapters():
                    alone = wrapper.generate(input_ids=row, attention_mask=torch.ones_like(row), **kwargs)
            else:
                wrapper.set_adapter(name)
                alone = wrapper.generate(input_ids=row, attention_mask=torch.ones_like(row), **kwargs)
        assert torch.equal(together[i], alone[0]), f"row {i} ({name})"
