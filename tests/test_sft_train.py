"""SFT through the shared training loop: tiny LLaMA, char tokenizer, lora / dynamic / rank1."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_chat_tokenizer, tiny_llama

from dynalora.adapters import DynaLoraModel
from dynalora.adapters.config import ConfigError
from dynalora.data import BucketBatcher
from dynalora.data.sft import encode_sft, load_sft_records
from dynalora.files import load_tensors
from dynalora.llm.evaluate import response_loss
from dynalora.llm.sft import SftConfig, train_sft

RECORDS = [{"question": f"{a}+{b}?", "answer": f"{a + b}"} for a in range(1, 5) for b in range(1, 5)]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def config(data, out, **kw) -> SftConfig:
    settings = {"data": str(data), "eval_data": str(data), "output": str(out), "model": "tiny",
                "max_length": 48, "batch_size": 4, "lr": 5e-3, "progress": False, "dropout": 0.0,
                "warmup_ratio": 0.0, "max_new_tokens": 8, **kw}
    return SftConfig(**settings)


def run(cfg: SftConfig, callbacks=None):
    return train_sft(cfg, callbacks, model=tiny_llama(), tokenizer=tiny_chat_tokenizer())


@pytest.mark.parametrize("method", ["lora", "dynamic", "rank1"])
def test_sft_trains_and_writes_the_run_folder(data, tmp_path, method):
    out = tmp_path / method
    options = {"t_warmup": 2, "delta_t": 2, "t_final": 6} if method == "dynamic" else {}
    metrics = run(config(data, out, method=method, epochs=3, method_options=options))
    assert metrics["metrics"]["loss"] < metrics["initial_metrics"]["loss"] - 0.3
    for name in ("best/dynalora_config.json", "best/dynalora_adapter.safetensors", "metrics.json", "log.jsonl",
                 "curves.png", "best/dynalora_sft_run.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "latest.json").is_file()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "data" and records[0]["train"]["kept"] == len(RECORDS)
    assert sum(r["kind"] == "train" for r in records) == metrics["steps"] == 12
    document = json.loads((out / "best" / "dynalora_config.json").read_text())
    assert document["metadata"]["base_model"] == "tiny" and document["config"]["method"] == method
    assert sorted({n.rsplit(".", 1)[1] for n in document["layers"]}) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    if method != "lora":
        assert (out / "allocation.json").is_file()
    # the saved adapter reproduces the best evaluation loss
    reloaded = DynaLoraModel.from_pretrained(tiny_llama(), out)
    assert reloaded.ranks() == {n: v["r"] for n, v in document["layers"].items()}
    tokenizer = tiny_chat_tokenizer()
    features, _ = encode_sft(load_sft_records(data), tokenizer, max_length=48)
    batches = BucketBatcher(features, 8, shuffle=False, pad_token_id=tokenizer.pad_token_id)
    assert response_loss(reloaded, batches)["loss"] == pytest.approx(metrics["metrics"]["loss"], rel=1e-5)


def test_dynamic_sft_reallocates_ranks(data, tmp_path):
    options = {"t_warmup": 2, "delta_t": 2, "t_final": 8, "beta": 2.0}
    metrics = run(config(data, tmp_path / "dyn", method="dynamic", epochs=3, method_options=options))
    assert len(set(metrics["ranks"].values())) > 1  # not all layers kept the base rank


def test_resumed_sft_run_matches_an_uninterrupted_one(data, tmp_path):
    class Crash:
        def on_step_end(self, step):
            if step == 5:
                raise KeyboardInterrupt

    full = run(config(data, tmp_path / "full", epochs=2, checkpoint_every=1))
    with pytest.raises(KeyboardInterrupt):
        run(config(data, tmp_path / "cut", epochs=2, checkpoint_every=1), [Crash()])
    resumed = run(config(data, tmp_path / "cut", epochs=2, checkpoint_every=1, resume=True))
    assert resumed["metrics"] == full["metrics"]
    a = load_tensors(tmp_path / "full" / "best" / "dynalora_adapter.safetensors")
    b = load_tensors(tmp_path / "cut" / "best" / "dynalora_adapter.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 9))
    with pytest.raises(ConfigError, match="resume"):
        run(config(data, tmp_path / "cut", epochs=2, checkpoint_every=1, resume=True, lr=1e-3))


def test_sft_config_rejects_bad_values(data):
    with pytest.raises(ConfigError, match="method"):
        SftConfig(data=str(data), method="full")
    with pytest.raises(ConfigError, match="max_length"):
        SftConfig(data=str(data), max_length=1)
    with pytest.raises(ConfigError, match="data"):
        SftConfig()
