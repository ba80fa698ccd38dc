"""The shared run config: one validation for TrainConfig and SftConfig, YAML values coerced
by each field's type hint, and one-line errors naming the field at the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import tiny_chat_tokenizer, tiny_llama

from dynalora.cli.main import main
from dynalora.errors import ConfigError
from dynalora.llm.sft import SftConfig
from dynalora.training import TrainConfig
from dynalora.training.api import read_run
from dynalora.training.run_config import RunConfig

BOTH = [TrainConfig, lambda **kw: SftConfig(data="d.jsonl", **kw)]


@pytest.mark.parametrize("make", BOTH, ids=["train", "sft"])
@pytest.mark.parametrize(("given", "field", "expected"), [
    ({"lr": "1e-4"}, "lr", 1e-4),
    ({"epochs": 2}, "epochs", 2.0),
    ({"batch_size": "8"}, "batch_size", 8),
    ({"max_grad_norm": None}, "max_grad_norm", None),
    ({"target_modules": "query"}, "target_modules", ["query"]),
    ({"target_modules": ["all-linear"]}, "target_modules", "all-linear"),
    ({"method_options": {"init": "gaussian"}}, "method_options", {"init": "gaussian"}),
])
def test_yaml_style_values_become_the_field_type(make, given, field, expected) -> None:
    value = getattr(make(**given), field)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("make", BOTH, ids=["train", "sft"])
@pytest.mark.parametrize(("given", "message"), [
    ({"batch_size": True}, "batch_size=True: must be an integer"),
    ({"epochs": False}, "epochs=False: must be a number"),
    ({"lr": "fast"}, "lr='fast': must be a number"),
    ({"lr": math.inf}, "lr=inf: must be a finite number"),
    ({"warmup_ratio": "nan"}, "warmup_ratio='nan': must be a finite number"),
    ({"resume": "false"}, "resume='false': must be true or false"),
    ({"progress": 1}, "progress=1: must be true or false"),
    ({"rank": 2.5}, "rank=2.5: must be an integer"),
    ({"target_modules": {"query": 1}}, "target_modules={'query': 1}: must be a list"),
    ({"target_modules": ["query", 3]}, "target_modules[1]=3: must be a string"),
    ({"method_options": ["beta"]}, "method_options=['beta']: must be a mapping"),
    ({"output": 7}, "output=7: must be a string"),
    ({"seed": "x"}, "seed='x': must be an integer"),
    ({"eval_every": 0}, "eval_every=0: must be a positive integer (or unset)"),
    ({"dropout": 1}, "dropout=1: must be in [0, 1)"),
    ({"precision": "fp8"}, "precision='fp8': must be one of"),
])
def test_bad_values_are_one_line_errors_naming_the_field(make, given, message) -> None:
    with pytest.raises(ConfigError) as caught:
        make(**given)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_task_fields_are_checked_by_type_too() -> None:
    with pytest.raises(ConfigError, match=r"^task=\['sst2'\]: must be a string"):
        TrainConfig(task=["sst2"])
    with pytest.raises(ConfigError, match=r"^samples=-1: must be >= 0"):
        SftConfig(data="d.jsonl", samples=-1)
    with pytest.raises(ConfigError, match=r"^max_length=1: must be >= 2"):
        SftConfig(data="d.jsonl", max_length=1)


def test_each_task_config_adds_only_its_own_fields() -> None:
    shared = {f for f in RunConfig.__dataclass_fields__}
    train_only = set(TrainConfig.__dataclass_fields__) - shared
    sft_only = set(SftConfig.__dataclass_fields__) - shared
    assert {"lr", "batch_size", "epochs", "rank", "resume"} <= shared
    assert not train_only & sft_only  # anything both need lives in RunConfig
    assert {"task", "pooling", "head_lr"} <= train_only and {"data", "packing", "samples"} <= sft_only
    assert SftConfig(data="d.jsonl").batch_size == 4 and TrainConfig().batch_size == 32  # own defaults


# -- the CLI: one YAML for both commands -------------------------------------------------------------------
YAML = "lr: 1e-4\nepochs: 2\nbatch_size: 8\n"


def run(capsys, argv: list[object]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def sft_inputs(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(model)
    tiny_chat_tokenizer().save_pretrained(model)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"double {n}", "output": str(2 * n)}) + "\n" for n in range(20)))
    return model, data


def test_one_yaml_config_works_for_train_and_sft(capsys, tmp_path: Path, tiny_model_dir: Path, tiny_glue_dir: Path,
                                                 sft_inputs) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(YAML)
    code, stdout, stderr = run(capsys, ["train", "--config", config, "--task", "sst2", "--model", tiny_model_dir,
                                        "--data-dir", tiny_glue_dir, "--output", tmp_path / "train", "--no-progress"])
    assert code == 0, stderr
    metrics = json.loads(stdout)
    assert metrics["lr"] == 1e-4 and metrics["total_steps"] == 2 * 12  # 96 examples / 8, two epochs
    assert read_run(tmp_path / "train")["metadata"]["lr"] == 1e-4

    model, data = sft_inputs
    code, stdout, stderr = run(capsys, ["sft", "--config", config, "--data", data, "--model", model, "--output",
                                        tmp_path / "sft", "--max-length", "32", "--samples", "0", "--no-progress"])
    assert code == 0, stderr
    metrics = json.loads(stdout)
    assert metrics["lr"] == 1e-4 and metrics["total_steps"] == 2 * 3  # 19 training records / 8, two epochs


@pytest.mark.parametrize("command", ["train", "sft"])
def test_a_boolean_batch_size_is_a_one_line_cli_error(command: str, capsys, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("batch_size: true\n")
    extra = ["--data", tmp_path / "d.jsonl"] if command == "sft" else []
    code, _, stderr = run(capsys, [command, "--config", config, "--output", tmp_path / "run", *extra])
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert f"dynalora {command}: error: batch_size=True: must be an integer" in stderr
    assert not (tmp_path / "run").exists()
