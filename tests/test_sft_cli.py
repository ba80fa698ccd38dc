"""`dynalora sft` and `dynalora generate` end to end on a tiny LLaMA saved to a folder."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_chat_tokenizer, tiny_llama

from dynalora.cli.main import main
from dynalora.llm.generate import generate
from dynalora.llm.models import ModelLoadError, load_causal_lm, load_with_adapters, resolve_source


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(folder)
    tiny_chat_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"instruction": f"double {n}", "input": "", "output": str(2 * n)} for n in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft(model_dir, data, out, *extra) -> dict:
    code = main(["sft", "--data", str(data), "--model", str(model_dir), "--output", str(out), "--max-length", "40",
                 "--epochs", "2", "--lr", "0.01", "--no-progress", "--max-new-tokens", "8", *extra])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def test_sft_then_generate_from_the_adapter_alone(model_dir, data, tmp_path, capsys):
    metrics = sft(model_dir, data, tmp_path / "a", "--method", "dynamic", "--seed", "1",
                  "--method-options", "t_warmup=1", "delta_t=1", "t_final=4")
    assert metrics["method"] == "dynamic" and metrics["metrics"]["loss"] < metrics["initial_metrics"]["loss"]
    assert metrics["n_examples"] == 1  # no --eval-data: 5 percent of 12 records held out (at least one)
    samples = (tmp_path / "a" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 1 and (tmp_path / "a" / "report.md").is_file()  # --samples 3, but 1 held out
    capsys.readouterr()
    assert main(["generate", "--adapter", str(tmp_path / "a"), "--prompt", "double 3", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    model, tokenizer = load_with_adapters([tmp_path / "a"])
    assert printed == generate(model, tokenizer, "double 3", max_new_tokens=6, stream=False) + "\n"
    # the run's other readers: inspect shows its (resized) ranks, merge writes a plain causal LM,
    # eval (classification only) says what the folder is instead of "not a run"
    assert main(["inspect", "--adapter", str(tmp_path / "a"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "dynamic" and info["task"] == "instruction tuning"
    assert {row["module"].removeprefix("base_model."): row["rank"] for row in info["layers"] if row["rank"] is not None} \
        == model.ranks()
    assert main(["merge", "--adapter", str(tmp_path / "a"), "--output", str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert main(["eval", "--adapter", str(tmp_path / "a")]) == 2
    assert "an instruction-tuning run (`dynalora sft`)" in capsys.readouterr().err


def test_generate_mixes_adapters_and_runs_the_base_alone(model_dir, data, tmp_path, capsys):
    sft(model_dir, data, tmp_path / "a", "--seed", "1")
    sft(model_dir, data, tmp_path / "b", "--seed", "2", "--rank", "2")
    mixed, tokenizer = load_with_adapters([tmp_path / "a", tmp_path / "b"], [0.5, 0.5])
    single, _ = load_with_adapters([tmp_path / "a"])
    base, _ = load_causal_lm(model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        la, lm, lb = single(input_ids=ids).logits, mixed(input_ids=ids).logits, base(input_ids=ids).logits
        mixed.set_adapter(["0", "1"], [1.0, 0.0])
        torch.testing.assert_close(mixed(input_ids=ids).logits, la, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(lm, la, atol=1e-4) and not torch.allclose(lm, lb, atol=1e-4)
    capsys.readouterr()
    assert main(["generate", "--adapter", str(tmp_path / "a"), "--adapter", str(tmp_path / "b"),
                 "--weights", "0.5", "0.5", "--prompt", "double 3", "--max-new-tokens", "5", "--no-stream"]) == 0
    mixed.set_adapter(["0", "1"], [0.5, 0.5])
    assert capsys.readouterr().out == generate(mixed, tokenizer, "double 3", 5, stream=False) + "\n"
    assert main(["generate", "--no-adapter", "--model", str(model_dir), "--prompt", "double 3",
                 "--max-new-tokens", "5", "--no-stream"]) == 0
    assert capsys.readouterr().out == generate(base, tokenizer, "double 3", 5, stream=False) + "\n"


def test_cli_errors_are_one_line(model_dir, data, tmp_path, capsys):
    assert main(["generate", "--prompt", "x"]) == 2
    assert "--adapter DIR" in capsys.readouterr().err
    assert main(["generate", "--adapter", str(tmp_path), "--weights", "1", "2", "--prompt", "x"]) == 2
    assert "2 weight(s) for 1 adapter(s)" in capsys.readouterr().err
    assert main(["sft", "--data", str(data), "--method", "full", "--output", str(tmp_path / "x")]) == 2
    assert "method" in capsys.readouterr().err
    assert main(["generate", "--no-adapter", "--model", str(tmp_path / "nothing.gguf"), "--prompt", "x"]) == 2
    assert "GGUF file not found" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_source(tmp_path / "missing.gguf")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_source(tmp_path)
