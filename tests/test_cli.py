"""The `dynalora` command line in-process (`main([...])`): train, eval, merge, export, inspect,
help texts and one-line errors. Tiny BERT and tiny SST-2-style task (tests/training_helpers.py)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from training_helpers import assert_same_tensors

from dynalora.cli.main import build_parser, main
from dynalora.files import load_tensors
from dynalora.training import load_trained
from dynalora.training.api import read_run

SENTENCES = ["movie good", "the bad", "awful", "really nice film"]


def train_flags(model: Path, data: Path, output: Path) -> list[str]:
    return ["train", "--task", "sst2", "--model", str(model), "--data-dir", str(data), "--output", str(output),
            "--batch-size", "8", "--lr", "0.01", "--head-lr", "0.1", "--head-dropout", "0", "--no-progress", "--max-length", "64"]


def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `dynalora ARGV`, argparse's own exits included."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tiny_glue_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A dynamic-LoRA run made by `dynalora train` (ranks move apart), and what it printed."""
    out = tmp_path_factory.mktemp("cli_run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([*train_flags(tiny_model_dir, tiny_glue_dir, out), "--epochs", "2", "--method", "dynamic",
                     "--method-options", "t_warmup=2", "delta_t=3", "t_final=20", "stats_every=2"])
    assert code == 0
    return out, printed.getvalue()


def tokens(run_dir: Path) -> dict[str, torch.Tensor]:
    _, tokenizer, _ = load_trained(run_dir)
    return dict(tokenizer(SENTENCES, return_tensors="pt", padding=True))


def our_logits(run_dir: Path, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model, _, _ = load_trained(run_dir)
    with torch.no_grad():
        return model(**batch)


def head_logits(folder: Path, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What head.json says to do: masked mean of the encoder's last hidden state, then the Linear."""
    assert json.loads((folder / "head.json").read_text())["pooling"] == "mean"
    head = load_tensors(folder / "head.safetensors")
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1)
    return F.linear(pooled, head["weight"], head["bias"])


# -- train, eval ----------------------------------------------------------------------------------------
def test_train_prints_the_metrics_it_writes(trained) -> None:
    out, printed = trained
    written = json.loads((out / "metrics.json").read_text())
    assert json.loads(printed) == written  # stdout is the JSON alone
    assert written["method"] == "dynamic" and written["steps"] == 24


def test_eval_needs_only_the_run_folder_and_reproduces_metrics_json(trained, capsys, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = trained
    monkeypatch.chdir(tmp_path)  # nothing found relative to where training ran
    code, stdout, _ = run_cli(capsys, "eval", "--adapter", out)
    assert code == 0
    result = json.loads(stdout)
    written = json.loads((out / "metrics.json").read_text())
    assert result["metrics"] == written["metrics"]
    assert (result["task"], result["n_examples"]) == ("sst2", written["n_examples"])


# -- merge, export, inspect -----------------------------------------------------------------------------
def test_merged_folder_is_a_transformers_classifier_giving_the_same_logits(trained, capsys, tmp_path: Path,
                                                                           tiny_model_dir: Path) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    out, _ = trained
    code, stdout, _ = run_cli(capsys, "merge", "--adapter", out, "--output", tmp_path / "merged")
    assert code == 0 and "merged" in stdout
    batch = tokens(out)
    assert AutoTokenizer.from_pretrained(tmp_path / "merged")(SENTENCES, padding=True)["input_ids"] \
        == batch["input_ids"].tolist()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged", trust_remote_code=True)
    base = AutoModel.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, our_logits(out, batch), rtol=0, atol=1e-5)
        hidden = merged.encoder(**batch).last_hidden_state
        unchanged = base(**batch).last_hidden_state
    assert not torch.allclose(hidden, unchanged, atol=1e-3)  # the trained update is in the weights


@pytest.mark.parametrize("fold", [[], ["--fold-scaling"]])
def test_peft_export_loads_onto_the_base_encoder_and_gives_the_same_outputs(fold: list[str], trained, capsys,
                                                                            tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModel

    out, _ = trained
    code, _, _ = run_cli(capsys, "export", "--adapter", out, "--format", "peft", "--output", tmp_path / "peft", *fold)
    assert code == 0
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    base = AutoModel.from_pretrained(document["base_model_name_or_path"])  # the run's base model
    peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    batch = tokens(out)
    model, _, _ = load_trained(out)
    with torch.no_grad():
        theirs = peft_model(**batch).last_hidden_state
        ours = model.base_model.backbone(**batch).last_hidden_state
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    if fold:  # every layer padded to the largest rank, scalings folded into B
        assert document["rank_pattern"] == {} and document["lora_alpha"] == document["r"]
    else:
        assert len(set(document["rank_pattern"].values()) | {document["r"]}) > 1  # per-layer ranks went across
    torch.testing.assert_close(head_logits(tmp_path / "peft", theirs, batch["attention_mask"]),
                               our_logits(out, batch), rtol=1e-4, atol=1e-5)


def test_inspect_prints_each_layer_with_its_rank_weight_and_parameters(trained, capsys) -> None:
    out, _ = trained
    code, stdout, _ = run_cli(capsys, "inspect", "--adapter", out)
    assert code == 0
    layers = json.loads((out / "best" / "dynalora_config.json").read_text())["layers"]
    rows = {line.split()[0]: line.split() for line in stdout.splitlines()[2:] if line and not line.startswith("trained")}
    assert set(layers) < set(rows) and "classifier" in rows
    for name, layer in layers.items():
        _, rank, weight, _, params = rows[name]
        assert int(rank) == layer["r"]
        assert float(weight) == pytest.approx(layer["weight"], abs=1e-4)
        assert int(params) == layer["r"] * (32 + 32)  # A (r x 32) and B (32 x r)
    assert len({layer["r"] for layer in layers.values()}) > 1
    assert rows["classifier"][1:] == ["-", "-", "-", str(32 * 2 + 2)]
    code, stdout, _ = run_cli(capsys, "inspect", "--adapter", out, "--json")
    assert {r["module"]: r["rank"] for r in json.loads(stdout)["layers"]} == {
        **{n: layer["r"] for n, layer in layers.items()}, "classifier": None}


# -- help and errors ---------------------------------------------------------------------------------------
def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(subcommand_parsers()))
def test_help_mentions_every_flag_and_every_flag_has_help(command: str, capsys) -> None:
    parser = subcommand_parsers()[command]
    code, stdout, _ = run_cli(capsys, command, "--help")
    assert code == 0
    for action in parser._actions:
        assert action.help and action.help.strip(), f"{command} {action.option_strings or action.dest}: no help"
        for flag in action.option_strings:
            assert flag in stdout, f"{command} --help does not mention {flag}"


def one_line_error(code: int, stderr: str) -> str:
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr
    return stderr


@pytest.mark.parametrize(("argv", "says"), [
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["--rank", "0"], "rank=0: must be a positive integer"),
    (["--epochs", "abc"], "argument --epochs/--num_train_epochs/--num-train-epochs: invalid float value: 'abc'"),
    (["--lr", "-1"], "lr=-1.0: must be > 0"),
    (["--method", "lorax"], "method='lorax'"),
    (["--method-options", "foo=1"], "['foo'] not option(s) of method 'lora'; its options: exclude_modules, use_rslora"),
    (["--pooling", "max"], "argument --pooling: invalid choice: 'max'"),
])
def test_bad_train_flags_exit_2_with_one_line(argv: list[str], says: str, capsys, tmp_path: Path,
                                              tiny_model_dir: Path, tiny_glue_dir: Path) -> None:
    code, _, stderr = run_cli(capsys, *train_flags(tiny_model_dir, tiny_glue_dir, tmp_path / "run"), *argv)
    assert says in one_line_error(code, stderr)
    assert not (tmp_path / "run").exists()


def test_missing_data_dir_exits_2_with_one_line(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    missing = tmp_path / "no-such-glue"
    code, _, stderr = run_cli(capsys, *train_flags(tiny_model_dir, missing, tmp_path / "run"))
    assert str(missing) in one_line_error(code, stderr)


@pytest.mark.parametrize("command", ["eval", "merge", "export", "inspect"])
def test_missing_run_folder_exits_2_with_one_line(command: str, capsys, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-run"
    extra = ["--output", tmp_path / "out"] if command in ("merge", "export") else []
    code, _, stderr = run_cli(capsys, command, "--adapter", missing, *extra)
    assert str(missing) in one_line_error(code, stderr)
    code, _, stderr = run_cli(capsys, command, *extra)  # no --adapter at all
    assert "--adapter" in one_line_error(code, stderr)


# -- a YAML config under the flags -------------------------------------------------------------------------
def test_config_file_values_are_used_and_flags_override_them(capsys, tmp_path: Path, tiny_model_dir: Path,
                                                             tiny_glue_dir: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 1\nbatch-size: 16\nrank: 4\nalpha: 8\n"
                      "method_options:\n  use_rslora: true\n  init: gaussian\n")
    flags = train_flags(tiny_model_dir, tiny_glue_dir, tmp_path / "run")
    flags.remove("--batch-size")
    flags.remove("8")
    code, stdout, _ = run_cli(capsys, *flags, "--config", config, "--rank", "2", "--method-options", "init=kaiming")
    assert code == 0, stdout
    metrics = json.loads(stdout)
    assert metrics["steps"] == 6  # 96 examples / batch 16 (YAML), 1 epoch (YAML)
    metadata = read_run(tmp_path / "run")["metadata"]
    assert (metadata["rank"], metadata["alpha"], metadata["lr"]) == (2, 8.0, 0.01)  # rank: the flag wins
    assert metadata["method_options"] == {"use_rslora": True, "init": "kaiming"}  # merged key by key
    adapter = json.loads((tmp_path / "run" / "best" / "dynalora_config.json").read_text())
    assert {layer["r"] for layer in adapter["layers"].values()} == {2}
    assert all(layer["scaling"] == pytest.approx(8 / 2**0.5) for layer in adapter["layers"].values())  # rsLoRA
    config.write_text("epochs: 1\nlearning_rte: 0.1\n")
    code, _, stderr = run_cli(capsys, *flags, "--config", config)
    assert "unknown field(s) ['learning_rte']" in one_line_error(code, stderr)


def test_resumed_cli_run_keeps_its_tensors(capsys, tmp_path: Path, tiny_model_dir: Path, tiny_glue_dir: Path) -> None:
    """`--resume` on a finished run's folder: the checkpoint is at the last step, nothing more trains."""
    flags = [*train_flags(tiny_model_dir, tiny_glue_dir, tmp_path / "run"), "--epochs", "1"]
    assert run_cli(capsys, *flags)[0] == 0
    before = load_tensors(tmp_path / "run" / "best" / "dynalora_adapter.safetensors")
    code, stdout, _ = run_cli(capsys, *flags, "--resume")
    assert code == 0 and json.loads(stdout)["steps"] == 12
    assert_same_tensors(load_tensors(tmp_path / "run" / "best" / "dynalora_adapter.safetensors"), before)
