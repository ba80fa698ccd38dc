"""`dynalora predict` and `dynalora eval --dev-file`: scoring a table of new text with a trained run
(tiny BERT, tiny task: a GLUE-layout run and a run on its own CSV files)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_cli import run_cli
from training_helpers import make_csv_pair, tiny_config

from dynalora.training import train


@pytest.fixture(scope="module")
def csv_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, dev.csv) of a run on its own files (columns text, verdict: pos / neg)."""
    root = tmp_path_factory.mktemp("csv_run")
    train_file, dev_file = make_csv_pair(root / "data")
    train(tiny_config(tiny_model_dir, None, root / "run", train_file=str(train_file), dev_file=str(dev_file),
                      text_columns=["text"], label_column="verdict", epochs=1.0))
    return root / "run", dev_file


def test_predict_on_a_labelled_file_reproduces_eval_and_writes_one_row_per_input(csv_run, capsys,
                                                                                  tmp_path: Path) -> None:
    run, dev = csv_run
    code, stdout, _ = run_cli(capsys, "predict", "--adapter", run, "--file", dev, "--output", tmp_path / "p.csv")
    assert code == 0
    summary = json.loads(stdout)
    written = json.loads((run / "metrics.json").read_text())
    assert summary["labelled"] and summary["metrics"] == written["metrics"]
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == summary["n_examples"] == len(dev.read_text().splitlines()) - 1
    assert set(rows[0]) == {"prediction", "p_neg", "p_pos"}
    for row in rows:
        p_neg, p_pos = float(row["p_neg"]), float(row["p_pos"])
        assert p_neg + p_pos == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] == ("pos" if p_pos > p_neg else "neg")
    code, stdout, _ = run_cli(capsys, "eval", "--adapter", run, "--dev-file", dev)
    assert code == 0 and json.loads(stdout)["metrics"] == written["metrics"]


def test_predict_on_an_unlabelled_jsonl_prints_one_json_line_per_row(csv_run, capsys, tmp_path: Path) -> None:
    run, _ = csv_run
    texts = ["good movie", "awful plot", "the film was nice"]
    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    code, stdout, stderr = run_cli(capsys, "predict", "--adapter", run, "--file", path)
    assert code == 0 and "metrics" not in stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert len(lines) == len(texts)
    assert all(r["prediction"] in ("neg", "pos") and set(r["probabilities"]) == {"neg", "pos"} for r in lines)
    code, _, stderr = run_cli(capsys, "eval", "--adapter", run, "--dev-file", path)
    assert code == 2 and "label column" in stderr and len(stderr.strip().splitlines()) == 1


def test_predict_on_a_glue_file_matches_eval_of_the_glue_run(tiny_model_dir: Path, tiny_glue_dir: Path, capsys,
                                                             tmp_path: Path) -> None:
    train(tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path / "run", epochs=1.0))
    dev = tiny_glue_dir / "SST-2" / "dev.tsv"  # columns sentence, label: the task's own names
    code, stdout, _ = run_cli(capsys, "predict", "--adapter", tmp_path / "run", "--file", dev,
                              "--output", tmp_path / "p.jsonl")
    assert code == 0
    assert json.loads(stdout)["metrics"] == json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    first = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert first["prediction"] in ("negative", "positive")  # label names, not the file's 0/1


def test_predict_refuses_an_unknown_output_type_and_a_missing_column(csv_run, capsys, tmp_path: Path) -> None:
    run, dev = csv_run
    code, _, stderr = run_cli(capsys, "predict", "--adapter", run, "--file", dev, "--output", tmp_path / "p.xlsx")
    assert code == 2 and ".xlsx" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli(capsys, "predict", "--adapter", run, "--file", dev, "--text-columns", "body")
    assert code == 2 and "'body'" in stderr and len(stderr.strip().splitlines()) == 1
