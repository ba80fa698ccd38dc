"""Hostile values and YAML types, through the CLI as a user types them.

Every refused case runs against a copy of a finished run's folder and asks to replace it
(`--overwrite`), so the only thing standing between the bad value and that run's results is
the rule "check everything, then touch": the folder must come out byte for byte the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_helpers import (  # noqa: F401  (shared fixtures)
    assert_refused,
    cli,
    digest,
    finished,
    inputs,
    train_argv,
    victim,
)

BAD_TRAIN_VALUES = [
    (["--epochs", "inf"], "epochs=inf"),
    (["--epochs", "nan"], "epochs=nan"),
    (["--epochs", "-1"], "epochs=-1"),
    (["--lr", "nan"], "lr=nan"),
    (["--lr", "0"], "lr=0"),
    (["--batch-size", "0"], "batch_size=0"),
    (["--batch-size", "many"], "--batch-size"),
    (["--rank", "1000000000"], "rank=1000000000"),
    (["--max-train-samples", "0"], "max_train_samples=0"),
    (["--warmup-ratio", "1.5"], "warmup_ratio=1.5"),
    (["--max-skipped-share", "2"], "max_skipped_share=2"),
    (["--pooling", "median"], "median"),
    (["--method", "magic"], "magic"),
    (["--task", "nosuchtask"], "nosuchtask"),
    (["--target-modules", "nosuchlayer"], "nosuchlayer"),
    (["--method-options", "nonsense=1"], "nonsense"),
    (["--eval-every", "0"], "eval_every=0"),
    (["--head-dropout", "1"], "head_dropout=1"),
]


@pytest.mark.parametrize(("flags", "needle"), BAD_TRAIN_VALUES, ids=[" ".join(f) for f, _ in BAD_TRAIN_VALUES])
def test_bad_train_values_are_refused_before_the_folder_changes(inputs, victim: Path, flags, needle) -> None:
    before = digest(victim)
    assert_refused(cli(*train_argv(*inputs, victim, "--overwrite"), *flags), needle)
    assert digest(victim) == before


def test_a_max_length_beyond_the_model_is_cut_with_a_warning(inputs, tmp_path: Path) -> None:
    """The tiny model has 64 positions: --max-length 100000 would crash the first long batch."""
    result = cli(*train_argv(*inputs, tmp_path / "run"), "--max-length", "100000", "--epochs", "1")
    assert result.code == 0, result.err
    warnings = [line for line in result.err_lines if "warning" in line]
    assert len(warnings) == 1 and "max_length=100000" in warnings[0] and "cut at 64" in warnings[0]
    assert json.loads((tmp_path / "run" / "best" / "dynalora_run.json").read_text())["metadata"]["max_length"] == 64


def test_missing_inputs_are_refused_before_the_folder_changes(inputs, victim: Path, tmp_path: Path) -> None:
    model, data = inputs
    before = digest(victim)
    assert_refused(cli(*train_argv(model, tmp_path / "no-data", victim, "--overwrite")), "no-data")
    assert_refused(cli(*train_argv(tmp_path / "no-model", data, victim, "--overwrite")), "no-model")
    assert digest(victim) == before


def test_a_new_run_does_not_replace_another_runs_results(inputs, victim: Path) -> None:
    before = digest(victim)
    assert_refused(cli(*train_argv(*inputs, victim)), str(victim), "another run's results", "--overwrite")
    assert digest(victim) == before


def test_resume_is_refused_without_a_checkpoint_or_with_other_settings(inputs, victim: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    assert_refused(cli(*train_argv(*inputs, fresh, "--resume")), "no checkpoint", "drop --resume")
    assert not fresh.exists()  # nothing created either
    before = digest(victim)
    assert_refused(cli(*train_argv(*inputs, victim, "--resume", "--lr", "0.02")), "lr=0.01 -> 0.02")
    assert digest(victim) == before


def test_output_that_is_a_file(inputs, tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder\n")
    assert_refused(cli(*train_argv(*inputs, blocker)), str(blocker), "file")
    assert_refused(cli(*train_argv(*inputs, blocker / "run")), str(blocker), "file")
    assert blocker.read_text() == "not a folder\n"


BAD_EVAL = [
    (["--max-samples", "0"], "--max-samples"),
    (["--max-samples", "-3"], "--max-samples"),
    (["--split", "nosuchsplit"], "nosuchsplit"),
    (["--task", "stsb"], "stsb"),
]


@pytest.mark.parametrize(("flags", "needle"), BAD_EVAL, ids=[" ".join(f) for f, _ in BAD_EVAL])
def test_bad_eval_values(finished: Path, flags, needle) -> None:
    before = digest(finished)
    assert_refused(cli("eval", "--adapter", finished, *flags), needle)
    assert digest(finished) == before


BAD_GENERATE = [
    (["--max-new-tokens", "-1"], "max_new_tokens=-1"),
    (["--max-new-tokens", "0"], "max_new_tokens=0"),
    (["--temperature", "-1"], "temperature=-1"),
    (["--temperature", "nan"], "temperature=nan"),
    (["--temperature", "1", "--top-p", "5"], "top_p=5"),
    (["--temperature", "1", "--top-p", "0"], "top_p=0"),
    (["--top-p", "0.9"], "needs --temperature"),
]


@pytest.mark.parametrize(("flags", "needle"), BAD_GENERATE, ids=[" ".join(f) for f, _ in BAD_GENERATE])
def test_bad_sampling_values_are_refused_before_loading_a_model(flags, needle, tmp_path: Path) -> None:
    # The model path does not exist: a refusal naming the value shows it was checked first.
    assert_refused(cli("generate", "--no-adapter", "--model", tmp_path / "absent", "--prompt", "hi", *flags), needle)


@pytest.mark.parametrize(("command", "written"), [("merge", "config.json"), ("export", "adapter_config.json")])
def test_merge_and_export_refuse_a_folder_with_other_files(finished: Path, tmp_path: Path, command: str,
                                                           written: str) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / written).write_text('{"mine": true}\n')
    (target / "notes.txt").write_text("unrelated\n")
    before = digest(target)
    assert_refused(cli(command, "--adapter", finished, "--output", target), str(target), "--overwrite")
    assert digest(target) == before
    result = cli(command, "--adapter", finished, "--output", target, "--overwrite")
    assert result.code == 0, result.err
    assert json.loads((target / written).read_text()) != {"mine": True}
    assert (target / "notes.txt").read_text() == "unrelated\n"  # --overwrite replaces, never clears


def test_merge_never_half_writes_around_a_folder_named_like_its_file(finished: Path, tmp_path: Path) -> None:
    target = tmp_path / "merged"
    (target / "model.safetensors").mkdir(parents=True)
    before = digest(target)
    assert_refused(cli("merge", "--adapter", finished, "--output", target, "--overwrite"),
                   str(target / "model.safetensors"), "folder")
    assert digest(target) == before


# -- YAML: numbers as numbers, nothing else as a number, booleans only from booleans -------------
BAD_YAML = [
    ("epochs: two\n", "epochs"),
    ("lr: fast\n", "lr"),
    ("batch_size: true\n", "batch_size"),
    ("resume: 'false'\n", "resume"),
    ("task: [sst2]\n", "task"),
    ("target_modules: 5\n", "target_modules"),
    ("method_options: [1, 2]\n", "method_options"),
    ("epochs: .inf\n", "epochs"),
    ("max_length: 1.0e+12\n", "max_length"),
    ("- epochs: 1\n", "mapping"),
    ("epochs: [unclosed\n", "YAML"),
    ("learnin_rate: 0.1\n", "learnin_rate"),
]


def yaml_argv(inputs: tuple[Path, Path], output: Path, config: Path) -> list[object]:
    """Only what YAML cannot say for these cases: every setting under test comes from the file."""
    model, data = inputs
    return ["train", "--model", model, "--data-dir", data, "--output", output, "--no-progress", "--config", config]


@pytest.mark.parametrize(("text", "needle"), BAD_YAML, ids=[t.strip() for t, _ in BAD_YAML])
def test_bad_yaml_types_are_refused_naming_the_field(inputs, victim: Path, tmp_path: Path, text, needle) -> None:
    config = tmp_path / "run.yaml"
    preamble = "overwrite: true\nmax_length: 64\n" + ("" if text.startswith("task:") else "task: sst2\n")
    config.write_text(text if text.startswith("-") else preamble + text)
    before = digest(victim)
    assert_refused(cli(*yaml_argv(inputs, victim, config)), needle)
    assert digest(victim) == before


def test_yaml_numbers_are_numbers(inputs, tmp_path: Path) -> None:
    """PyYAML reads `1e-2` as a string; the run config takes it as the number it is."""
    config = tmp_path / "run.yaml"
    config.write_text("task: sst2\nlr: 1e-2\nepochs: 1\nbatch_size: 16\nmax_grad_norm: 1\nmax_length: 64\n")
    result = cli(*yaml_argv(inputs, tmp_path / "run", config))
    assert result.code == 0, result.err
    assert json.loads(result.out)["lr"] == 0.01
