"""What a run reports while it trains: log.jsonl's timestamp, gradient norm, throughput and
learning rate; one plain line per --logging-steps when stderr is not a terminal; a TensorBoard
event file read back with TensorBoard's own reader; a missing tracker library as a one-line error."""

from __future__ import annotations

import importlib.util
from datetime import datetime
from pathlib import Path

import pytest
from training_helpers import read_log, tiny_config

from dynalora.errors import MissingDependencyError
from dynalora.training import train


@pytest.fixture(scope="module")
def tensorboard_run(tiny_model_dir: Path, tiny_glue_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("tb_run")
    train(tiny_config(tiny_model_dir, tiny_glue_dir, out, epochs=1.0, report_to="tensorboard", logging_steps=5))
    return out


def test_training_records_carry_time_grad_norm_throughput_and_lr(tensorboard_run: Path) -> None:
    records = [r for r in read_log(tensorboard_run) if r["kind"] == "train"]
    assert len(records) == 12
    for r in records:
        assert datetime.fromisoformat(r["time"]).tzinfo is not None
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and r["lr"] > 0
    times = [datetime.fromisoformat(r["time"]) for r in records]
    assert times == sorted(times)


def test_tensorboard_event_file_holds_the_logged_scalars(tensorboard_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tensorboard_run / "runs").glob("events.out.tfevents.*"))
    assert len(events) == 1
    reader = EventAccumulator(str(events[0]))
    reader.Reload()
    records = read_log(tensorboard_run)
    losses = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    logged = [(e.step, e.value) for e in reader.Scalars("train/loss")]
    assert [s for s, _ in logged] == [s for s, _ in losses]
    assert [v for _, v in logged] == pytest.approx([v for _, v in losses], rel=1e-6)
    accuracy = [r["metrics"]["accuracy"] for r in records if r["kind"] == "eval"]
    assert [e.value for e in reader.Scalars("eval/accuracy")] == pytest.approx(accuracy, rel=1e-6)
    assert {"train/grad_norm", "train/lr", "train/tokens_per_s"} <= set(reader.Tags()["scalars"])


def test_without_a_terminal_progress_is_one_plain_line_per_logging_steps(tiny_model_dir: Path, tiny_glue_dir: Path,
                                                                          tmp_path: Path, capsys) -> None:
    train(tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path, epochs=1.0, progress=True, logging_steps=5))
    err = capsys.readouterr().err  # captured: not a terminal, so no bar even with progress on
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("step ") and "/12" in line]
    assert [line.split()[1] for line in lines] == ["5/12", "10/12", "12/12"]
    assert all(" loss " in line and " grad_norm " in line and " tokens_per_s " in line for line in lines)


def test_a_missing_tracker_library_is_a_one_line_error_naming_the_extra(tiny_model_dir: Path, tiny_glue_dir: Path,
                                                                         tmp_path: Path) -> None:
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(MissingDependencyError, match=r"dynalora\[track\]"):
        train(tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path, epochs=1.0, report_to="wandb"))
