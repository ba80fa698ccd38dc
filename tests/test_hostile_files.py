"""Hostile files: data tables, adapter folders and checkpoints that are broken, foreign or
lying, through the CLI as a user runs it. Data cases use a slice of real GLUE SST-2 rows
when the data is present (the tiny task's sentences otherwise)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import GLUE_DIR
from hostile_helpers import (  # noqa: F401  (shared fixtures)
    assert_refused,
    cli,
    digest,
    finished,
    inputs,
    train_argv,
    victim,
)
from safetensors.torch import load_file, save_file
from training_helpers import sentences

from dynalora.training.report import read_records


# -- data files -----------------------------------------------------------------------------------
def glue_slice(n: int = 40) -> list[tuple[str, str]]:
    """The first `n` rows of real SST-2 training data (sentence, label), or the tiny task's."""
    path = GLUE_DIR / "SST-2" / "train.tsv"
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()[1: n + 1]
        return [tuple(line.rsplit("\t", 1)) for line in lines]  # type: ignore[misc]
    return [(s, str(y)) for s, y in sentences(n, seed=7)]


def write_tsv(path: Path, rows: list[tuple[str, str]], header: str = "sentence\tlabel") -> Path:
    path.write_text(header + "\n" + "".join(f"{s}\t{y}\n" for s, y in rows), encoding="utf-8")
    return path


def own_data_argv(model: Path, train: Path, dev: Path, output: Path) -> list[object]:
    return ["train", "--task", "mine", "--model", model, "--train-file", train, "--dev-file", dev,
            "--text-columns", "sentence", "--label-column", "label", "--output", output, "--overwrite",
            "--batch-size", "16", "--epochs", "1", "--max-length", "64", "--no-progress"]


def bad_tables(root: Path) -> list[tuple[str, Path, str]]:
    """(case, train file, what the error must name) for every broken training table."""
    rows = glue_slice()
    cases = []

    def case(name: str, path: Path, needle: str) -> None:
        cases.append((name, path, needle))

    case("missing", root / "absent.tsv", "absent.tsv")
    (root / "table.xlsx").write_bytes(b"PK\x03\x04 not a table")
    case("unsupported type", root / "table.xlsx", ".xlsx")
    (root / "empty.tsv").write_text("")
    case("empty", root / "empty.tsv", "empty")
    case("header only", write_tsv(root / "header.tsv", []), "no valid rows")
    case("no label column", write_tsv(root / "nolabel.tsv", rows, "sentence\tverdict"), "'label'")
    case("one class", write_tsv(root / "oneclass.tsv", [(s, "1") for s, _ in rows]), "at least two")
    mostly_bad = [(s, y if i % 4 == 0 else "") for i, (s, y) in enumerate(rows)]  # 30 of 40 without a label
    case("mostly bad labels", write_tsv(root / "mostlybad.tsv", mostly_bad), "max_skipped_share")
    (root / "latin1.tsv").write_bytes("sentence\tlabel\ncaf\xe9 au lait\t1\n".encode("latin-1"))
    case("not UTF-8", root / "latin1.tsv", "UTF-8")
    (root / "object.json").write_text('{"sentence": "a", "label": 1}')
    case("JSON not a list", root / "object.json", "list of records")
    return cases


def test_bad_data_files_are_refused_before_the_folder_changes(inputs, victim: Path, tmp_path: Path) -> None:
    model, _ = inputs
    dev = write_tsv(tmp_path / "dev.tsv", glue_slice(60)[40:])
    before = digest(victim)
    for name, train, needle in bad_tables(tmp_path):
        line = assert_refused(cli(*own_data_argv(model, train, dev, victim)), needle)
        assert str(train) in line or train.name in line, (name, line)
        assert digest(victim) == before, name


def test_a_dev_file_with_none_of_the_training_labels(inputs, victim: Path, tmp_path: Path) -> None:
    model, _ = inputs
    train = write_tsv(tmp_path / "train.tsv", glue_slice())
    dev = write_tsv(tmp_path / "dev.tsv", [(s, "positive") for s, _ in glue_slice(10)])
    before = digest(victim)
    assert_refused(cli(*own_data_argv(model, train, dev, victim)), "dev.tsv", "unknown label")
    assert digest(victim) == before


def test_a_mostly_broken_glue_file_stops_the_run(inputs, victim: Path, tmp_path: Path) -> None:
    model, _ = inputs
    data = tmp_path / "glue"
    (data / "SST-2").mkdir(parents=True)
    write_tsv(data / "SST-2" / "train.tsv", [(s, "x") for s, _ in glue_slice()[:30]] + glue_slice()[30:])
    write_tsv(data / "SST-2" / "dev.tsv", glue_slice(50)[40:])
    before = digest(victim)
    assert_refused(cli(*train_argv(model, data, victim, "--overwrite")), "30 of 40 rows", "max_skipped_share")
    assert digest(victim) == before


def test_a_few_bad_rows_are_a_one_line_warning(inputs, tmp_path: Path) -> None:
    model, _ = inputs
    rows = glue_slice()
    rows[3], rows[17] = (rows[3][0] + "\textra column", rows[3][1]), (rows[17][0], "")
    train = write_tsv(tmp_path / "train.tsv", rows)
    dev = write_tsv(tmp_path / "dev.tsv", glue_slice(60)[40:])
    result = cli(*own_data_argv(model, train, dev, tmp_path / "run"))
    assert result.code == 0, result.err
    warning = [line for line in result.err_lines if "warning" in line]
    assert len(warning) == 1 and "skipped 2 malformed row(s), kept 38" in warning[0] and "line 5" in warning[0]


def test_a_text_column_read_as_labels_is_named_in_a_warning(inputs, tmp_path: Path) -> None:
    model, _ = inputs
    rows = glue_slice()
    train = write_tsv(tmp_path / "train.tsv", [(y, s) for s, y in rows])  # columns swapped
    result = cli("train", "--task", "mine", "--model", model, "--train-file", train, "--dev-file", train,
                 "--text-columns", "sentence", "--label-column", "label", "--output", tmp_path / "run",
                 "--batch-size", "16", "--epochs", "1", "--max-length", "64", "--no-progress")
    assert result.code == 0, result.err
    assert any("warning" in line and "distinct values in 40 rows" in line and "'label'" in line
               for line in result.err_lines), result.err


# -- adapter files --------------------------------------------------------------------------------
def edit_layers(run: Path, **changes: object) -> None:
    path = run / "best" / "dynalora_config.json"
    document = json.loads(path.read_text())
    first = next(iter(document["layers"]))
    document["layers"][first].update(changes)
    path.write_text(json.dumps(document).replace("Infinity", "Infinity"))


def edit_tensors(run: Path, change) -> None:
    path = run / "best" / "dynalora_adapter.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, str(path))


def nan_in_lora_b(tensors: dict) -> None:
    key = next(k for k in tensors if k.endswith("lora_B"))
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = float("nan")


BAD_ADAPTERS = {
    "NaN scaling": (lambda run: edit_layers(run, scaling=float("nan")), "scaling"),
    "huge rank": (lambda run: edit_layers(run, r=1_000_000_000), "r=1000000000"),
    "rank as text": (lambda run: edit_layers(run, r="8"), "r='8'"),
    "other layer size": (lambda run: edit_layers(run, **{"in": 48}), "48 -> 32"),
    "NaN weights": (lambda run: edit_tensors(run, nan_in_lora_b), "NaN"),
    "config not JSON": (lambda run: (run / "best" / "dynalora_config.json").write_text("{ nope"), "not valid JSON"),
    "truncated weights": (lambda run: (run / "best" / "dynalora_adapter.safetensors").write_bytes(b"\x10\x00"),
                          "truncated or corrupt"),
    "run file missing": (lambda run: (run / "best" / "dynalora_run.json").unlink(), "dynalora_run.json"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapter_files_are_refused_naming_the_file(victim: Path, case: str) -> None:
    damage, needle = BAD_ADAPTERS[case]
    damage(victim)
    before = digest(victim)
    line = assert_refused(cli("eval", "--adapter", victim), needle)
    assert str(victim) in line
    assert digest(victim) == before


def test_a_pickle_adapter_is_refused(victim: Path) -> None:
    weights = victim / "best" / "dynalora_adapter.safetensors"
    torch.save(load_file(weights), victim / "best" / "dynalora_adapter.bin")
    weights.unlink()
    assert_refused(cli("eval", "--adapter", victim), "refusing to load a pickle")


def test_a_folder_where_the_weights_file_belongs(victim: Path) -> None:
    weights = victim / "best" / "dynalora_adapter.safetensors"
    weights.unlink()
    weights.mkdir()
    assert_refused(cli("eval", "--adapter", victim), "dynalora_adapter.safetensors")


def test_integer_tensors_load_with_a_warning(victim: Path, finished: Path) -> None:
    edit_tensors(victim, lambda t: t.update({k: t[k].round().to(torch.int64) for k in t if k.endswith("lora_B")}))
    result = cli("eval", "--adapter", victim)
    assert result.code == 0, result.err
    assert [line for line in result.err_lines if "warning" in line and "int64" in line and "cast" in line]


# -- checkpoints ----------------------------------------------------------------------------------
def step_folder(run: Path) -> Path:
    return run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["folder"]


class RunsCode:
    """A pickle that would run code when unpickled (torch's weights_only loader must refuse it)."""

    def __reduce__(self):
        return (print, ("this ran",))


BAD_CHECKPOINTS = {
    "pointer outside": (lambda run: (run / "checkpoints" / "latest.json").write_text(
        json.dumps({"folder": "../../../etc", "step": 12})), "latest.json"),
    "pointer to nothing": (lambda run: (run / "checkpoints" / "latest.json").write_text(
        json.dumps({"folder": "step-00000099", "step": 99})), "step-00000099"),
    "pointer not JSON": (lambda run: (run / "checkpoints" / "latest.json").write_text("step 12"), "not valid JSON"),
    "trainer state garbage": (lambda run: (step_folder(run) / "trainer.pt").write_bytes(b"garbage"), "trainer.pt"),
    "trainer state runs code": (lambda run: (step_folder(run) / "trainer.pt").write_bytes(pickle.dumps(RunsCode())),
                                "trainer.pt"),
    "progress incomplete": (lambda run: (step_folder(run) / "progress.json").write_text('{"step": 12}'),
                            "progress.json"),
    "model state truncated": (lambda run: (step_folder(run) / "model.safetensors").write_bytes(b"\x00" * 9),
                              "model.safetensors"),
    "log broken in the middle": (lambda run: (run / "log.jsonl").write_text(
        '{"kind": "train", "step": 1}\n{broken\n{"kind": "train", "step": 2}\n'), "log.jsonl, line 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoints_are_refused_on_resume(inputs, victim: Path, case: str) -> None:
    damage, needle = BAD_CHECKPOINTS[case]
    damage(victim)
    before = digest(victim)
    result = cli(*train_argv(*inputs, victim, "--resume"))
    assert_refused(result, needle)
    assert "this ran" not in result.out + result.err
    assert digest(victim) == before


def test_a_torn_last_log_line_is_dropped_on_resume(inputs, victim: Path) -> None:
    log = victim / "log.jsonl"
    whole = log.read_text()
    log.write_text(whole + '{"kind": "train", "step": 13, "lo')  # killed while writing
    result = cli(*train_argv(*inputs, victim, "--resume"))
    assert result.code == 0, result.err
    assert log.read_text() == whole
    assert read_records(log)[-1]["step"] == 12
