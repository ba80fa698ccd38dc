"""Our adapters in Hugging Face PEFT's format, checked against the real `peft` package."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import minilm_path, tiny_bert, tiny_gpt2, tiny_llama
from lora_helpers import logits, lora_layer_names, randomise, token_batch, wide_bert
from safetensors.torch import load_file

from dynalora import AdapterFileError, DynaLoraModel, LoraConfig, get_lora_model

peft = pytest.importorskip("peft")

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODELS = {
    "bert": (tiny_bert, 120, {"modules_to_save": ["classifier"]},
             {"query": 2, "layer.1.attention.self.value": 6}),
    "llama": (tiny_llama, 128, {"target_modules": LLAMA_TARGETS},
              {"layers.0.mlp.down_proj": 2, r"layers\.1\.self_attn\.[kv]_proj": 8}),
}
VARIANTS = {
    "uniform": ({}, False),
    "rank_pattern": ({"pattern": True}, False),
    "weights": ({}, True),
    "gated": ({"gating": "scalar"}, False),
    "rslora_all": ({"use_rslora": True, "gating": "scalar", "pattern": True}, True),
}


def peft_logits(build, folder, ids):
    loaded = peft.PeftModel.from_pretrained(build(), folder).eval()
    return logits(loaded, ids)


def adapted(kind: str, variant: str) -> DynaLoraModel:
    build, _, base_config, pattern = MODELS[kind]
    extra, weights = VARIANTS[variant]
    extra = dict(extra)
    rank_pattern = pattern if extra.pop("pattern", False) else {}
    model = get_lora_model(build(), LoraConfig(r=4, alpha=8, rank_pattern=rank_pattern, **base_config, **extra))
    randomise(model, weights=weights)
    if kind == "bert":  # a trained head, which must travel with the adapter
        with torch.no_grad():
            model.base_model.classifier.weight.add_(0.5)
    return model


@pytest.mark.parametrize("fold", [False, True], ids=["patterns", "folded"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", MODELS)
def test_export_loads_in_peft_with_the_same_logits(tmp_path, kind, variant, fold):
    build, vocab, _, _ = MODELS[kind]
    ids = token_batch(vocab)
    model = adapted(kind, variant)
    expected = logits(model, ids)
    model.export_peft(tmp_path, fold_scaling=fold)
    torch.testing.assert_close(peft_logits(build, tmp_path, ids), expected, atol=1e-5, rtol=1e-5)
    document = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(document) <= {f.name for f in dataclasses.fields(peft.LoraConfig)}  # nothing of ours
    ranks = set(model.ranks().values())
    if fold:  # what servers that ignore the patterns need: one rank, scaling exactly 1
        assert document["r"] == document["lora_alpha"] == max(ranks)
        assert not document["rank_pattern"] and not document["alpha_pattern"]
        assert document["use_rslora"] is False
    else:
        assert len(ranks) == 1 or document["rank_pattern"]
        assert set(document["rank_pattern"].values()) | {document["r"]} == ranks


def test_export_of_gpt2_conv1d(tmp_path):
    ids = token_batch(128)
    model = get_lora_model(tiny_gpt2(), LoraConfig(r=4, target_modules=["c_attn", "c_fc"]))
    randomise(model)
    model.export_peft(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    torch.testing.assert_close(peft_logits(tiny_gpt2, tmp_path, ids), logits(model, ids), atol=1e-5, rtol=1e-5)


def test_rank_zero_layers_are_left_out_of_the_export(tmp_path):
    ids = token_batch()
    model = get_lora_model(tiny_bert(), LoraConfig(r=4, rank_pattern={"layer.0.attention.self.query": 0}))
    randomise(model)
    model.export_peft(tmp_path)
    document = json.loads((tmp_path / "adapter_config.json").read_text())
    assert "bert.encoder.layer.0.attention.self.query" not in document["target_modules"]
    assert len(document["target_modules"]) == 3
    assert not any("layer.0.attention.self.query" in k for k in load_file(tmp_path / "adapter_model.safetensors"))
    torch.testing.assert_close(peft_logits(tiny_bert, tmp_path, ids), logits(model, ids), atol=1e-5, rtol=1e-5)


def test_input_gated_adapters_cannot_be_exported(tmp_path):
    model = get_lora_model(tiny_bert(), LoraConfig(r=4, gating="input"))
    with pytest.raises(ValueError, match=r"input-conditional gates have no equivalent in PEFT"):
        model.export_peft(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def peft_adapter(tmp_path, build, **config):
    """A real PEFT LoRA adapter with random (nonzero) weights, saved; returns its logits too."""
    model = peft.get_peft_model(build(), peft.LoraConfig(**config))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    model.save_pretrained(tmp_path)
    return model.eval()


@pytest.mark.parametrize("rslora", [False, True])
def test_import_of_a_peft_llama_adapter(tmp_path, rslora):
    ids = token_batch(128)
    reference = peft_adapter(
        tmp_path, tiny_llama, r=4, lora_alpha=8, target_modules=LLAMA_TARGETS, use_rslora=rslora,
        rank_pattern={"down_proj": 2, "layers.1.self_attn.q_proj": 8},
        alpha_pattern={"v_proj": 3, r"layers\.0\.mlp\.up_proj": 20},
    )
    ours = DynaLoraModel.from_peft(tiny_llama(), tmp_path)
    assert ours.ranks()["model.layers.1.self_attn.q_proj"] == 8
    assert ours.ranks()["model.layers.0.mlp.down_proj"] == 2
    torch.testing.assert_close(logits(ours, ids), logits(reference, ids), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in ours.parameters())


def test_import_of_a_peft_classifier_adapter_and_back(tmp_path):
    ids = token_batch()
    reference = peft_adapter(tmp_path / "in", tiny_bert, task_type="SEQ_CLS", r=4, lora_alpha=16,
                             target_modules=["query", "value"])
    ours = DynaLoraModel.from_peft(tiny_bert(), tmp_path / "in", is_trainable=True)
    assert ours.modules_to_save == ["classifier"]
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert "base_model.classifier.weight" in trainable
    assert all(".adapters." in n or ".classifier." in n for n in trainable)
    expected = logits(reference, ids)
    torch.testing.assert_close(logits(ours, ids), expected, atol=1e-5, rtol=1e-5)
    ours.export_peft(tmp_path / "out")
    torch.testing.assert_close(peft_logits(tiny_bert, tmp_path / "out", ids), expected, atol=1e-5, rtol=1e-5)


def test_peft_import_errors(tmp_path):
    peft_adapter(tmp_path, tiny_bert, r=2, target_modules=["query"])
    config = tmp_path / "adapter_config.json"
    document = json.loads(config.read_text())
    llama = tiny_llama()
    with pytest.raises(AdapterFileError, match=r"does not have.*attention.self.query"):
        DynaLoraModel.from_peft(llama, tmp_path)
    wider = wide_bert()
    with pytest.raises(AdapterFileError, match=r"shape mismatch.*\(2, 32\).*\(2, 48\)"):
        DynaLoraModel.from_peft(wider, tmp_path)
    assert not lora_layer_names(wider) and all(p.requires_grad for p in wider.parameters())
    config.write_text(json.dumps({**document, "use_dora": True}))
    with pytest.raises(AdapterFileError, match=r"DoRA"):
        DynaLoraModel.from_peft(tiny_bert(), tmp_path)
    config.write_text(json.dumps({**document, "peft_type": "IA3"}))
    with pytest.raises(AdapterFileError, match=r"'IA3' is not supported"):
        DynaLoraModel.from_peft(tiny_bert(), tmp_path)
    get_lora_model(tiny_bert(), LoraConfig(r=2)).save_pretrained(tmp_path / "ours")
    with pytest.raises(AdapterFileError, match=r"holds a dynalora adapter, not a PEFT one.*from_pretrained"):
        DynaLoraModel.from_peft(tiny_bert(), tmp_path / "ours")


@pytest.mark.integration
def test_minilm_export_loads_in_peft(tmp_path):
    from transformers import BertForSequenceClassification

    def build():
        return BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()

    torch.manual_seed(0)
    model = get_lora_model(build(), LoraConfig(
        r=8, target_modules=["query", "value", "intermediate.dense"], gating="scalar",
        rank_pattern={r"layer\.[0-2]\.attention\.self\.query": 2}, modules_to_save=["classifier"]))
    randomise(model, weights=True)
    ids = token_batch(vocab=1000, batch=2, length=16)
    expected = logits(model, ids)
    model.export_peft(tmp_path)
    got = peft_logits(lambda: _reset_head(build(), model), tmp_path, ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _reset_head(fresh, trained):
    """The classifier is new (random) on every load; PEFT must restore ours from the file."""
    with torch.no_grad():
        fresh.classifier.weight.normal_()
    assert not torch.equal(fresh.classifier.weight, trained.base_model.classifier.weight)
    return fresh
