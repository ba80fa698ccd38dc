"""Our adapter files, merged checkpoints, and every way loading or saving can go wrong."""

from __future__ import annotations

import errno
import json
import pathlib

import pytest
import torch
from conftest import tiny_bert, tiny_gpt2, tiny_llama
from lora_helpers import logits, lora_layer_names, randomise, token_batch, wide_bert
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from dynalora import AdapterFileError, DynaLoraModel, LoraConfig, get_lora_model
from dynalora.files import atomic_dir, write_json

WEIGHTS = "dynalora_adapter.safetensors"


def saved_adapter(tmp_path, **config):
    """A tiny-BERT adapter with nonzero updates saved under tmp_path/'a'; returns (model, path)."""
    model = get_lora_model(tiny_bert(), LoraConfig(r=4, modules_to_save=["classifier"], **config))
    randomise(model, weights=True)
    with torch.no_grad():
        model.base_model.classifier.weight.add_(1.0)
    model.save_pretrained(tmp_path / "a", metadata={"step": 7})
    return model, tmp_path / "a"


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("config", [
    {},
    {"gating": "scalar", "rank_pattern": {"layer.0.attention.self.query": 0, "layer.1.attention.self.value": 6}},
    {"gating": "input", "use_rslora": True, "target_modules": "all-linear"},
])
def test_save_and_load_round_trip(tmp_path, config):
    ids = token_batch()
    model, path = saved_adapter(tmp_path, **config)
    loaded = DynaLoraModel.from_pretrained(tiny_bert(), path)
    assert torch.equal(logits(loaded, ids), logits(model, ids))
    assert loaded.ranks() == model.ranks()
    assert loaded.metadata == {"step": 7}
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable = DynaLoraModel.from_pretrained(tiny_bert(), path, is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(p.name for p in path.iterdir()) == ["dynalora_adapter.safetensors", "dynalora_config.json"]


def test_adapter_for_a_different_base_size(tmp_path):
    _, path = saved_adapter(tmp_path)
    wider = wide_bert()
    with pytest.raises(AdapterFileError, match=r"saved for a 32 -> 32 map.*48 -> 48.*another base model"):
        DynaLoraModel.from_pretrained(wider, path)
    assert not lora_layer_names(wider)  # nothing left injected
    assert all(p.requires_grad for p in wider.parameters())


def test_adapter_for_a_different_architecture(tmp_path):
    _, path = saved_adapter(tmp_path)
    llama = tiny_llama()
    with pytest.raises(AdapterFileError, match=r"does not have.*attention.self.*bert"):
        DynaLoraModel.from_pretrained(llama, path)
    assert not lora_layer_names(llama)


def test_truncated_empty_and_garbage_weights(tmp_path):
    _, path = saved_adapter(tmp_path)
    weights = path / WEIGHTS
    data = weights.read_bytes()
    for broken in (data[: len(data) // 2], b"", b"not a tensor file" * 3):
        weights.write_bytes(broken)
        model = tiny_bert()
        with pytest.raises(AdapterFileError, match=f"{WEIGHTS}: not a valid safetensors file.*truncated or corrupt"):
            DynaLoraModel.from_pretrained(model, path)
        assert not lora_layer_names(model)


def test_broken_or_foreign_configs(tmp_path):
    _, path = saved_adapter(tmp_path)
    config = path / "dynalora_config.json"
    document = json.loads(config.read_text())
    config.write_text("{ not json")
    with pytest.raises(AdapterFileError, match=r"not valid JSON"):
        DynaLoraModel.from_pretrained(tiny_bert(), path)
    config.write_text(json.dumps({**document, "version": 99}))
    with pytest.raises(AdapterFileError, match=r"version 99 is newer"):
        DynaLoraModel.from_pretrained(tiny_bert(), path)
    config.write_text(json.dumps({k: v for k, v in document.items() if k != "layers"}))
    with pytest.raises(AdapterFileError, match=r"\['layers'\] are missing"):
        DynaLoraModel.from_pretrained(tiny_bert(), path)
    with pytest.raises(AdapterFileError, match=r"adapter folder not found"):
        DynaLoraModel.from_pretrained(tiny_bert(), tmp_path / "nowhere")
    peft_folder = tmp_path / "peft"
    peft_folder.mkdir()
    (peft_folder / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterFileError, match=r"PEFT adapter.*from_peft"):
        DynaLoraModel.from_pretrained(tiny_bert(), peft_folder)


def test_pickle_is_refused_unless_allowed(tmp_path):
    ids = token_batch()
    model, path = saved_adapter(tmp_path)
    state = load_file(path / WEIGHTS)
    (path / WEIGHTS).unlink()
    torch.save(state, path / "dynalora_adapter.bin")
    target = tiny_bert()
    with pytest.raises(AdapterFileError, match=r"refusing to load a pickle file.*allow_pickle=True"):
        DynaLoraModel.from_pretrained(target, path)
    assert not lora_layer_names(target)
    loaded = DynaLoraModel.from_pretrained(target, path, allow_pickle=True)
    assert torch.equal(logits(loaded, ids), logits(model, ids))


def failing_writer(monkeypatch):
    """Make file writing put half the bytes down, then fail as a full disk does."""
    def write_half_then_fail(self, data):
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "disk full")
    monkeypatch.setattr(pathlib.Path, "write_bytes", write_half_then_fail)


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    model = get_lora_model(tiny_bert(), LoraConfig(r=4))
    failing_writer(monkeypatch)
    with pytest.raises(OSError, match=r"disk full"):
        model.save_pretrained(tmp_path / "new")
    with pytest.raises(OSError, match=r"disk full"):
        model.export_peft(tmp_path / "new-peft")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_an_existing_adapter_unchanged(tmp_path, monkeypatch):
    model, path = saved_adapter(tmp_path)
    (path / "train.log").write_text("kept\n")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    randomise(model, seed=5)
    failing_writer(monkeypatch)
    with pytest.raises(OSError, match=r"disk full"):
        model.save_pretrained(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert leftovers(tmp_path) == [] and leftovers(path) == []


def test_atomic_helpers_publish_whole_files_readable(tmp_path):
    target = tmp_path / "doc.json"
    write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json(target, {"a": object()})  # fails while serialising
    assert json.loads(target.read_text()) == {"a": 1}
    assert target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "run") as tmp:
        (tmp / "x").write_text("partial")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.json"]
    with atomic_dir(tmp_path / "run") as tmp:
        (tmp / "x").write_text("whole")
    assert (tmp_path / "run" / "x").read_text() == "whole"
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(("build", "auto", "vocab"), [
    (tiny_bert, AutoModelForSequenceClassification, 120),
    (tiny_llama, AutoModelForCausalLM, 128),
    (tiny_gpt2, AutoModelForCausalLM, 128),
])
def test_merged_checkpoint_loads_in_plain_transformers(tmp_path, build, auto, vocab):
    ids = token_batch(vocab)
    config = LoraConfig(r=4, target_modules="all-linear", gating="scalar",
                        modules_to_save=["classifier"] if build is tiny_bert else None)
    model = get_lora_model(build(), config)
    randomise(model, weights=True)
    expected = logits(model, ids)
    model.save_merged(tmp_path / "merged")
    build().save_pretrained(tmp_path / "plain")
    keys = set(load_file(tmp_path / "merged" / "model.safetensors"))
    assert keys == set(load_file(tmp_path / "plain" / "model.safetensors"))
    assert not any("lora" in k or "adapters" in k or ".base." in k for k in keys)
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == \
        sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert "dynalora" not in (tmp_path / "merged" / "config.json").read_text()
    reloaded = auto.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(reloaded, ids), expected, atol=1e-5, rtol=0)


def test_load_adapter_beside_another(tmp_path):
    ids = token_batch()
    first, path = saved_adapter(tmp_path)
    second = get_lora_model(tiny_bert(), LoraConfig(r=2, target_modules=["key"]))
    randomise(second, seed=3)
    second.save_pretrained(tmp_path / "b")
    expected_b = logits(second, ids)
    # b has no head of its own: it runs with whatever head the model has (here a's).
    serving = get_lora_model(tiny_bert(), LoraConfig(r=2, target_modules=["key"]))
    serving.load_adapter(tmp_path / "b", "b")
    assert serving.active_adapters == ["default"]
    assert not any(p.requires_grad for n, p in serving.named_parameters() if ".adapters.b." in n)
    assert any(p.requires_grad for n, p in serving.named_parameters() if ".adapters.default." in n)
    serving.set_adapter("b")
    torch.testing.assert_close(logits(serving, ids), expected_b)
    # A second adapter whose classifier differs from the one in use is refused, not mixed in.
    other = with_other_head(tmp_path, path)
    with pytest.raises(AdapterFileError, match=r"classifier.*shared by all adapters"):
        first.load_adapter(other, "other")
    assert sorted(first.configs) == ["default"]
    assert all(set(layer.adapters) == {"default"} for layer in first.lora_layers().values())


def with_other_head(tmp_path, path):
    model = DynaLoraModel.from_pretrained(tiny_bert(), path)
    with torch.no_grad():
        model.base_model.classifier.bias.add_(1.0)
    model.save_pretrained(tmp_path / "other-head")
    return tmp_path / "other-head"
