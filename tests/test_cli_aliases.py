"""The names users bring from transformers' Trainer, PEFT and LLaMA-Factory work in YAML and as
flags; `--model` takes a local folder or a Hub id (the packaged models' ids work offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_cli import run_cli

from dynalora.cli.main import build_parser
from dynalora.cli.train import config_from_args
from dynalora.errors import ConfigError
from dynalora.training.classifier import resolve_model
from dynalora.training.config import TrainConfig


def test_a_yaml_with_trainer_style_names_trains(tiny_model_dir: Path, tiny_glue_dir: Path, tmp_path: Path,
                                                capsys) -> None:
    settings = {
        "model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "run"), "task": "sst2",
        "dataset_dir": str(tiny_glue_dir), "learning_rate": 0.01, "num_train_epochs": 1,
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "lora_rank": 4, "lora_alpha": 8,
        "lora_dropout": 0.0, "head_lr": 0.1, "head_dropout": 0.0, "progress": False,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(settings))
    code, stdout, _ = run_cli(capsys, "train", "--config", tmp_path / "run.yaml")
    assert code == 0
    assert json.loads(stdout)["steps"] == 6  # 96 examples / (8 x 2), one epoch
    meta = json.loads((tmp_path / "run" / "best" / "dynalora_run.json").read_text())["metadata"]
    assert (meta["rank"], meta["alpha"], meta["lr"]) == (4, 8.0, 0.01)


def test_flags_take_the_trainer_spellings_too(tmp_path: Path) -> None:
    argv = ["train", "--learning_rate", "3e-4", "--num-train-epochs", "2", "--lora_r", "16",
            "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path), "--max_seq_length", "64"]
    config = config_from_args(build_parser("train").parse_args(argv), TrainConfig)
    assert (config.lr, config.epochs, config.rank, config.batch_size, config.max_length) == (3e-4, 2.0, 16, 4, 64)
    assert config.output == str(tmp_path)


def test_an_alias_contradicting_its_field_is_an_error_naming_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"learning_rate=0\.1 and lr=0\.01"):
        TrainConfig.from_dict({"lr": 0.01, "learning_rate": 0.1})


def test_model_is_a_folder_or_a_hub_id() -> None:
    from dynalora.packaged import minilm_folder

    if minilm_folder() is None:
        pytest.skip("the packaged MiniLM is not installed")
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == str(minilm_folder())  # offline
    assert resolve_model(None) == str(minilm_folder())
    assert resolve_model("some-org/some-encoder") == "some-org/some-encoder"  # left to transformers


def test_an_unreachable_hub_id_is_a_one_line_error(tiny_glue_dir: Path, tmp_path: Path, capsys) -> None:
    code, _, stderr = run_cli(capsys, "train", "--model", "no-such-org/no-such-model", "--data-dir", tiny_glue_dir,
                              "--task", "sst2", "--output", tmp_path / "run", "--no-progress")
    assert code == 2 and "no-such-org/no-such-model" in stderr and len(stderr.strip().splitlines()) == 1


def test_a_repeated_list_flag_adds_to_the_list(tmp_path: Path) -> None:
    from dynalora.llm.sft import SftConfig

    argv = ["sft", "--data", str(tmp_path / "d.jsonl"), "--stop", "A", "B", "--stop", "C",
            "--target-modules", "q_proj", "--target-modules", "v_proj"]
    config = config_from_args(build_parser("sft").parse_args(argv), SftConfig)
    assert config.stop == ["A", "B", "C"] and config.target_modules == ["q_proj", "v_proj"]
    argv = ["train", "--method", "dynamic", "--method-options", "tau=2.0", "--method-options", "w_min=0.4"]
    config = config_from_args(build_parser("train").parse_args(argv), TrainConfig)
    assert config.method_options == {"tau": 2.0, "w_min": 0.4}
