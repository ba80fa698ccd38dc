"""Table 2's timing (`dynalora bench timing`): interleaved rounds, medians, resume, and the
settings every round is measured under."""

from __future__ import annotations

import json
import socket
import statistics
from pathlib import Path

import pytest
from training_helpers import make_sst_dir, make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("timing")
    return str(make_tiny_model(root / "model")), str(make_sst_dir(root / "glue", n_train=120))


def test_timing_interleaves_rounds_and_tables_the_median(tiny, tmp_path):
    from dynalora.bench.timing import measure_arm, run_timing

    model, data = tiny
    order = []

    def in_process(spec, threads):
        order.append(spec["arm"])
        return measure_arm(spec)

    text = run_timing(["lora", "bitfit"], "sst2", repeats=2, steps=2, threads=1, data_dir=data, model=model,
                      output=tmp_path, runner=in_process)
    assert order == ["lora", "bitfit", "bitfit", "lora"]  # round 2 starts with the other arm
    rounds = [json.loads(line) for line in (tmp_path / "timing.jsonl").read_text().splitlines()]
    lora = sorted(r["s_per_step"] for r in rounds if r["arm"] == "lora")
    row = next(r for r in csv_rows(tmp_path / "table2.csv") if r["arm"] == "lora")
    assert float(row["s_per_step"]) == pytest.approx(statistics.median(lora), rel=1e-3)
    assert row["merged"] == "yes" and "Table 2" in text


def test_a_stopped_timing_resumes_with_the_rounds_it_measured(tiny, tmp_path):
    """Killed in round 2, the timing keeps round 1 in timing.jsonl; the rerun measures only
    what is missing, and --fresh measures everything again."""
    from dynalora.bench.timing import measure_arm, run_timing

    model, data = tiny
    calls = []

    def runner(spec, threads):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append((spec["arm"], spec["round"]))
        return measure_arm(spec)

    settings = dict(task="sst2", repeats=2, steps=1, threads=1, data_dir=data, model=model, output=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_timing(["lora", "bitfit"], runner=runner, **settings)
    assert len((tmp_path / "timing.jsonl").read_text().splitlines()) == 3
    calls.clear()
    run_timing(["lora", "bitfit"], runner=lambda spec, threads: calls.append((spec["arm"], spec["round"]))
               or measure_arm(spec), **settings)
    assert calls == [("lora", 1)]  # round 2 runs bitfit first, which was measured before the stop
    assert len((tmp_path / "timing.jsonl").read_text().splitlines()) == 4
    assert all(row["rounds"] == "2" for row in csv_rows(tmp_path / "table2.csv"))
    calls.clear()
    run_timing(["lora"], runner=lambda spec, threads: calls.append(spec["arm"]) or measure_arm(spec),
               fresh=True, **{**settings, "repeats": 1})
    assert calls == ["lora"] and len((tmp_path / "timing.jsonl").read_text().splitlines()) == 1


def test_timing_refuses_rounds_measured_under_other_settings(tiny, tmp_path, monkeypatch, capsys):
    """A round keeps what it measured (its own `steps`) apart from the settings it was measured
    under; a rerun with other steps, threads, model, arms or host is refused before anything
    runs and leaves the file as it was; the same folder spelled otherwise is the same setting;
    a round written twice counts once; a torn last line is measured again; --fresh starts over
    and keeps the old rounds in timing.jsonl.bak."""
    from dynalora.bench.timing import measure_arm, run_timing
    from dynalora.errors import ConfigError

    model, data = tiny
    settings = dict(task="sst2", repeats=1, steps=1, threads=1, data_dir=data, model=model, output=tmp_path)
    run_timing(["lora"], runner=lambda spec, threads: {**measure_arm(spec), "steps": 7}, **settings)
    log = tmp_path / "timing.jsonl"
    (line,) = [json.loads(text) for text in log.read_text().splitlines()]
    assert line["steps"] == 7 and line["context"]["steps"] == 1  # the measurement is not overwritten
    before = log.read_text()

    def never(spec, threads):
        raise AssertionError("nothing may run")

    for change, field in [({"steps": 2}, "steps"), ({"threads": 2}, "threads"),
                          ({"model": str(tmp_path)}, "model")]:
        with pytest.raises(ConfigError, match=f"line 1 was measured under other settings \\({field} "):
            run_timing(["lora"], runner=never, **{**settings, **change})
    with pytest.raises(ConfigError, match="arms"):
        run_timing(["lora", "bitfit"], runner=never, **settings)
    with pytest.raises(ConfigError, match="host"):
        monkeypatch.setattr(socket, "gethostname", lambda: "another-machine")
        run_timing(["lora"], runner=never, **settings)
    monkeypatch.undo()
    assert log.read_text() == before
    monkeypatch.chdir(Path(data).parent)  # the data folder spelled relative to here: the same setting
    run_timing(["lora"], runner=never, **{**settings, "data_dir": Path(data).name})
    log.write_text(before + before)  # the same round twice (say, two copies of the file merged)
    run_timing(["lora"], runner=never, **settings)
    assert csv_rows(tmp_path / "table2.csv")[0]["rounds"] == "1"
    calls = []
    log.write_text(before + before[: len(before) // 2])  # round 2 killed inside its write
    run_timing(["lora"], runner=lambda spec, threads: calls.append(spec["round"]) or measure_arm(spec),
               **{**settings, "repeats": 2})
    assert calls == [1] and "skipped 1 unreadable line" in capsys.readouterr().err
    log.write_text(before + json.dumps({"arm": "lora", "round": 1, "s_per_step": 1.0}) + "\n")
    with pytest.raises(ConfigError, match="older format"):
        run_timing(["lora"], runner=never, **settings)
    run_timing(["lora"], runner=lambda spec, threads: measure_arm(spec), fresh=True, **{**settings, "steps": 2})
    assert [json.loads(text)["context"]["steps"] for text in log.read_text().splitlines()] == [2]
    assert (tmp_path / "timing.jsonl.bak").read_text().startswith(before)  # --fresh deletes nothing
    run_timing(["lora"], runner=lambda spec, threads: measure_arm(spec), fresh=True, **{**settings, "steps": 3})
    assert (tmp_path / "timing.jsonl.bak").read_text().startswith(before)  # nor does a second --fresh
    assert json.loads((tmp_path / "timing.jsonl.bak.1").read_text())["context"]["steps"] == 2


def csv_rows(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_arm_is_timed_with_the_settings_its_protocol_runs_train_with(tmp_path):
    from dynalora.bench.protocol import job_settings, paper_protocol
    from dynalora.bench.timing import arm_spec

    protocol = paper_protocol()
    tier_of = {name: tier for tier in protocol.tiers for name in tier.arms}
    for name, tier in tier_of.items():
        train = arm_spec(name, "mrpc", 20, None, None, tmp_path)["train"]
        runs_with = job_settings(protocol, protocol.arm(name), tier)
        for key in ("rank", "alpha", "batch_size", "max_length"):
            assert train[key] == runs_with[key], (name, key)
    assert arm_spec("rank1", "mrpc", 20, None, None, tmp_path)["train"]["rank"] == 16
