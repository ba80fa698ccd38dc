"""The comparison protocol: runs.jsonl records (atomic lines, torn last line), resuming and
skipping recorded runs, the lr grid and its choice, paired statistics checked against scipy
by hand, and the report rebuilt from hand-made records alone."""

from __future__ import annotations

import json
import math
import statistics
import sys

import pytest
from scipy import stats
from training_helpers import make_sst_dir, make_tiny_model

from dynalora.adapters.config import ConfigError
from dynalora.bench import protocol_runner, protocol_worker
from dynalora.bench.protocol import (
    MAIN_TASKS,
    Arm,
    Job,
    Protocol,
    Tier,
    choose_lrs,
    expected_grids,
    job_settings,
    paper_protocol,
    seed_jobs,
)
from dynalora.bench.records import append_record, read_records, run_key
from dynalora.bench.report import write_report
from dynalora.bench.stats import paired
from dynalora.cli.main import main

SHARED = {"epochs": 2.0, "min_epochs": 1.0, "early_stopping_patience": 1, "selection": "split", "batch_size": 8,
          "rank": 4, "alpha": 8.0, "max_length": 16, "max_train_samples": None, "max_eval_samples": None,
          "head_lr": 0.1, "head_dropout": 0.0}
TINY = Protocol("tiny", {"lora": Arm("lora", "lora"), "bitfit": Arm("bitfit", "bitfit", None)},
                (Tier("0", ("lora",), grid_tasks=("sst2",)), Tier("1", ("lora", "bitfit"), tasks=("sst2",), seeds=(0, 1))),
                SHARED, extend_edges=False)  # a fixed 3-run grid: the edge step has its own test


class Finished:
    """What `Pool.launch` returns, for a worker that already ran in this process."""

    returncode = 0

    def poll(self) -> int:
        return 0

    def terminate(self) -> None: ...

    def wait(self) -> int:
        return 0


@pytest.fixture
def in_process(monkeypatch):
    launched = []

    def launch(self, folder):
        job = json.loads((folder / "job.json").read_text())["record"]
        launched.append((job["arm"], job["lr"], job["seed"]))
        protocol_worker.main(str(folder))
        return Finished()

    monkeypatch.setattr(protocol_runner.Pool, "launch", launch)
    monkeypatch.setattr(protocol_runner, "POLL_S", 0.0)
    return launched


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    return str(make_tiny_model(root / "model")), str(make_sst_dir(root / "glue", n_train=120))


def run(tiny, records, workdir, tiers, arms=None):
    model, data = tiny
    return protocol_runner.run_protocol(TINY, tiers, records, workdir, arms=arms, data_dir=data, model=model)


def test_grid_then_seeds_resume_from_a_partial_records_file(tiny, tmp_path, in_process, capsys):
    records = tmp_path / "runs.jsonl"
    assert run(tiny, records, tmp_path / "w", ["0"], arms=["lora"]) == []
    assert sorted(lr for _, lr, _ in in_process) == [0.0003, 0.001, 0.003]
    first = read_records(records)
    assert len(first) == 3 and {r["stage"] for r in first} == {"grid"}
    record = first[0]
    for field in ("task", "method", "targets", "seed", "lr", "method_options", "selection_score", "dev",
                  "trainable_params", "wall_s", "epochs_run", "best_step", "command", "machine", "curve"):
        assert field in record, field
    assert record["resumed"] is False and record["allocation"] is None  # LoRA allocates nothing
    assert record["method_config"]["r"] == 4 and "rank_pattern" not in record["method_config"]  # defaults included
    assert record["command"].startswith("dynalora train --task sst2 --method lora --seed 0 --lr ")
    # every grid run saw the same rows; the three parts differ from each other
    assert len({json.dumps(r["data_digest"], sort_keys=True) for r in first}) == 1
    assert len(set(record["data_digest"].values())) == 3
    assert record["machine"]["libraries"]["transformers"]
    use = record["rank_use"]  # the chosen adapter's rank use per module type, at rank 4
    assert use and all(u["r"] == 4 and 1.0 <= u["effective_rank"] <= 4.0 for u in use.values())
    assert "--selection split" in record["command"] and set(record["dev"]) >= {"glue", "accuracy"}
    chosen = json.loads((tmp_path / "lr_choice.json").read_text())["lora"]
    best = max(first, key=lambda r: (r["selection_score"], -r["lr"]))
    assert chosen["lr"] == best["lr"]

    with open(records, "a") as handle:  # a run killed while its line was being written
        handle.write('{"task": "sst2", "method": "lo')
    in_process.clear()
    with pytest.warns(UserWarning, match="unreadable"):
        run(tiny, records, tmp_path / "w", ["0", "1"])
    # tier 0 was done; tier 1 reuses the grid run at the chosen lr for lora seed 0, and bitfit,
    # whose lr grid never ran, waits instead of running at an untuned lr
    assert in_process == [("lora", chosen["lr"], 1)]
    assert "no lr chosen yet for bitfit" in capsys.readouterr().out
    with pytest.warns(UserWarning):
        final = read_records(records)
    assert len(final) == 4 and len({run_key(r) for r in final}) == 4
    in_process.clear()
    with pytest.warns(UserWarning):
        run(tiny, records, tmp_path / "w", ["0", "1"])
    assert in_process == []  # everything recorded: nothing runs
    assert "2 runs left" in capsys.readouterr().out  # bitfit's two, still waiting


class Running(Finished):
    """A worker that ran in this process but reports itself finished only after a few polls."""

    def __init__(self, polls: int) -> None:
        self.polls = polls

    def poll(self) -> int | None:
        self.polls -= 1
        return 0 if self.polls < 0 else None


def test_a_free_worker_starts_a_later_tier_instead_of_waiting_for_a_grid_to_end(tmp_path, monkeypatch):
    """Two workers, lora's 3-run grid: when the first two finish, the third is still in flight and
    lora's seed runs wait for it; the free worker starts a later tier's grid run meanwhile.
    (Only the order is under test: each "run" writes its record without training.)"""
    launched = []

    def launch(self, folder):
        job = json.loads((folder / "job.json").read_text())["record"]
        launched.append((job["tier"], job["arm"], job["lr"], job["seed"]))
        (folder / "record.json").write_text(json.dumps(
            {**job, "selection_score": 0.5 + job["lr"], "dev": {"glue": 0.5}, "epochs_run": 1, "run_wall_s": 1.0}))
        return Running(polls=2)

    monkeypatch.setattr(protocol_runner.Pool, "launch", launch)
    monkeypatch.setattr(protocol_runner, "POLL_S", 0.0)
    staged = Protocol("staged", TINY.arms, (
        Tier("0", ("lora",), grid_tasks=("sst2",)), Tier("1", ("lora",), tasks=("sst2",), seeds=(0, 1)),
        Tier("2", ("bitfit",), grid_tasks=("sst2",))), SHARED, extend_edges=False)
    records = tmp_path / "runs.jsonl"
    protocol_runner.run_protocol(staged, ["0", "1", "2"], records, tmp_path / "w", workers=2)
    lora_lrs = [lr for tier, _, lr, _ in launched if tier == "0"]
    chosen = json.loads((tmp_path / "lr_choice.json").read_text())["lora"]["lr"]
    assert launched[:3] == [("0", "lora", lr, 0) for lr in lora_lrs] and len(lora_lrs) == 3
    assert launched[3][:2] == ("2", "bitfit")  # beside lora's last grid run, not after tier 1
    assert launched.index(("1", "lora", chosen, 1)) > 3
    assert len(launched) == 7 and len(read_records(records)) == 7  # every run once, seed 0 reused


@pytest.mark.parametrize(("scores", "grid", "chosen"), [
    ({3e-4: 0.6, 1e-3: 0.7, 3e-3: 0.8, 1e-2: 0.75}, [3e-4, 1e-3, 3e-3, 1e-2], 3e-3),  # best at the top: one step up
    ({3e-4: 0.6, 1e-3: 0.7, 3e-3: 0.8, 1e-2: 0.9, 3e-2: 1.0}, [3e-4, 1e-3, 3e-3, 1e-2], 1e-2),  # not chased further
    ({1e-4: 0.9, 3e-4: 0.8, 1e-3: 0.7, 3e-3: 0.6}, [3e-4, 1e-3, 3e-3, 1e-4], 1e-4),  # best at the bottom: one down
    ({3e-4: 0.7, 1e-3: 0.8, 3e-3: 0.7}, [3e-4, 1e-3, 3e-3], 1e-3),  # best inside: the grid stays as it is
    ({3e-4: 0.8, 1e-3: 0.8, 3e-3: 0.7}, [3e-4, 1e-3, 3e-3], 1e-3),  # an end tied with the middle: the middle, no step
    ({3e-4: 0.7, 1e-3: 0.8, 3e-3: 0.8}, [3e-4, 1e-3, 3e-3], 1e-3),
    ({3e-4: 0.8, 1e-3: 0.7, 3e-3: 0.8, 1e-4: 0.6}, [3e-4, 1e-3, 3e-3, 1e-4], 3e-4),  # both ends tied: the lower, and past it
])
def test_a_grid_best_at_its_end_runs_one_step_past_it_before_anything_is_decided(tmp_path, monkeypatch, scores,
                                                                                 grid, chosen):
    """The edge step runs after the base grid and before any seed run of the arm; the choice
    is made over every lr run, and a grid end that wins again is reported, not chased."""
    launched = []

    def launch(self, folder):
        job = json.loads((folder / "job.json").read_text())["record"]
        launched.append((job["stage"], job["lr"], job["seed"]))
        (folder / "record.json").write_text(json.dumps(
            {**job, "selection_score": scores[job["lr"]], "dev": {"glue": 0.5}, "epochs_run": 1, "run_wall_s": 1.0}))
        return Finished()

    monkeypatch.setattr(protocol_runner.Pool, "launch", launch)
    monkeypatch.setattr(protocol_runner, "POLL_S", 0.0)
    edge = Protocol("edge", TINY.arms, (Tier("0", ("lora",), grid_tasks=("sst2",)),
                                        Tier("1", ("lora",), tasks=("sst2",), seeds=(0, 1))), SHARED)
    protocol_runner.run_protocol(edge, ["0", "1"], tmp_path / "runs.jsonl", tmp_path / "w")
    assert launched == [("grid", lr, 0) for lr in grid] + [("seeds", chosen, 1)]
    choice = json.loads((tmp_path / "lr_choice.json").read_text())["lora"]
    assert choice["lr"] == chosen and sorted(map(float, choice["grid"])) == sorted(grid)
    assert choice["at_grid_end"] == (chosen in (min(grid), max(grid)))


def test_an_unrecorded_run_reruns_over_the_leftovers_of_an_earlier_attempt(tiny, tmp_path, in_process):
    """A run folder whose record never reached runs.jsonl (killed worker, lost records file)
    is the job's scratch space: the rerun replaces what is there instead of refusing it."""
    records = tmp_path / "runs.jsonl"
    run(tiny, records, tmp_path / "w", ["0"], arms=["lora"])
    first = read_records(records)
    records.unlink()  # the folders keep log.jsonl, metrics.json and best/ of the first attempt
    in_process.clear()
    run(tiny, records, tmp_path / "w", ["0"], arms=["lora"])
    again = read_records(records)
    assert len(in_process) == 3 and len(again) == 3
    assert [r["dev"] for r in again] == [r["dev"] for r in first]  # same job, same result


def test_records_append_whole_lines_after_a_torn_one(tmp_path):
    path = tmp_path / "runs.jsonl"
    base = {"task": "mrpc", "method": "lora", "targets": "all-linear", "lr": 1e-3, "method_options": {},
            "settings": {}}
    append_record(path, {**base, "seed": 0})
    path.write_text(path.read_text() + '{"task": "mrpc", "se')  # torn
    append_record(path, {**base, "seed": 1})
    with pytest.warns(UserWarning, match="1 unreadable"):
        assert [r["seed"] for r in read_records(path)] == [0, 1]
    assert run_key({**base, "seed": 1, "lr": 0.001}) == run_key({**base, "seed": 1, "lr": 1e-3})


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl")
def test_an_append_waits_for_another_writers_lock(tmp_path):
    """Benches for different tiers append to one runs.jsonl: a record is written only while no
    other process holds the file's lock, so lines never interleave."""
    import fcntl
    import threading

    path = tmp_path / "runs.jsonl"
    path.write_text('{"seed": 0}\n')
    with open(path, "ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)  # another bench in the middle of its write
        writer = threading.Thread(target=append_record, args=(path, {"seed": 1}))
        writer.start()
        writer.join(timeout=0.5)
        assert writer.is_alive() and path.read_text() == '{"seed": 0}\n'  # it waits
        other.write(b'{"seed": 2}\n')
        other.flush()
    writer.join(timeout=10)
    assert not writer.is_alive()
    assert [json.loads(line)["seed"] for line in path.read_text().splitlines()] == [0, 2, 1]


def test_paired_statistics_match_scipy_by_hand():
    d = [0.010, 0.025, -0.005, 0.030, 0.015, 0.020]
    n, mean, sd = len(d), sum(d) / len(d), statistics.stdev(d)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    result = paired(d)
    assert result.n == 6 and result.mean == pytest.approx(0.0158333, abs=1e-6)
    assert (result.low, result.high) == pytest.approx((mean - half, mean + half))
    # Wilcoxon by hand: ranks of |d| are 2,5,1,6,3,4; the one negative has rank 1 -> W = 1;
    # exact two-sided p = 2 * P(W <= 1) = 2 * 2 / 2^6
    assert result.wilcoxon_p == pytest.approx(4 / 64)
    assert paired(d[:4]).p_text() == "n too small" and paired(d[:2]).interval_text() == "n too small"


def test_a_zero_difference_is_named_beside_the_wilcoxon_p():
    """A tie carries no sign: the exact test runs on the four other seeds, all positive, so
    p = 2 / 2^4 = 0.125 (not the 0.0625 of five positive seeds), and the text says so."""
    result = paired([0.01, 0.0, 0.02, 0.03, 0.015])
    assert result.n == 5 and result.nonzero == 4
    assert result.wilcoxon_p == pytest.approx(2 / 16)
    assert result.p_text() == "0.125 (1 zero, tested on 4)"


def hand_record(task, arm, seed, dev, lr=1e-3, stage="seeds", selection=0.8):
    return {"task": task, "arm": arm, "method": arm, "targets": "all-linear", "seed": seed, "lr": lr,
            "method_options": {}, "settings": {}, "stage": stage, "tier": "1", "selection_score": selection,
            "dev": {"glue": dev}, "majority_dev": 0.5, "trainable_params": 100, "adapter_params": 90,
            "budget_vs_lora": 1.0, "run_wall_s": 10.0, "epochs_run": 4.0, "best_epoch": 3.0,
            "stopped_early": True, "curve": [[1.0, 0.7], [4.0, 0.8]]}


def test_report_is_rebuilt_from_the_records_alone(tmp_path):
    recs = [hand_record("mrpc", arm, 0, 0.7, lr=lr, stage="grid", selection=sel)
            for arm, lr, sel in (("lora", 1e-3, 0.81), ("lora", 3e-3, 0.80), ("dora", 1e-3, 0.70), ("dora", 3e-3, 0.75),
                                 ("lora", 3e-4, 0.79))]  # lora is a paper arm: its whole grid is 3e-4, 1e-3, 3e-3
    recs[0]["dev"]["glue"], recs[3]["dev"]["glue"] = 0.80, 0.78  # the chosen grid runs are seed 0
    lora = [0.80, 0.82, 0.79, 0.81, 0.83]
    dora = [0.78, 0.83, 0.80, 0.84, 0.85]
    recs += [hand_record("mrpc", "lora", s, v) for s, v in enumerate(lora) if s]
    recs += [hand_record("mrpc", "dora", s, v, lr=3e-3) for s, v in enumerate(dora) if s]
    recs.append(hand_record("mrpc", "lora", 1, 0.10, lr=3e-3))  # not at the chosen lr: left out
    path = tmp_path / "runs.jsonl"
    for r in recs:
        append_record(path, r)
    assert {a: c["lr"] for a, c in choose_lrs(recs).items()} == {"lora": 1e-3, "dora": 3e-3}
    text = write_report(path, tmp_path / "report")
    table = (tmp_path / "report" / "table1.csv").read_text()
    assert f"{100 * statistics.fmean(lora):.2f} ± {100 * statistics.stdev(lora):.2f} (n=5)" in table
    diffs = [b - a for a, b in zip(lora, dora)]
    expected = paired(diffs)
    row = (tmp_path / "report" / "paired.csv").read_text().splitlines()[1]
    assert row.startswith(f"dora,mrpc,5,{100 * expected.mean:+.2f},") and f"{expected.wilcoxon_p:.3f}" in row
    later = (tmp_path / "report" / "paired_without_grid_seed.csv").read_text().splitlines()[1]
    assert later.startswith(f"dora,mrpc,4,{100 * paired(diffs[1:]).mean:+.2f},")  # seed 0 chose the lrs
    assert "| lora | 0.003 |  | 80.00 | 80.00 |" in text
    for figure in ("dots.png", "paired.png"):
        assert (tmp_path / "report" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paper_protocol_plan_and_cli(tmp_path, capsys):
    protocol = paper_protocol()
    assert [t.name for t in protocol.tiers] == ["0", "1", "2", "ablation", "ablation-extra", "3", "sst2",
                                                   "low-rank", "low-rank-wide", "lora-lr-wide"]
    # dynamic LoRA at LoRA's lr on tier 1's tasks and seeds, paired with LoRA in the main table
    wide = protocol.tier("lora-lr-wide")
    assert (wide.arms, wide.tasks, wide.seeds) == (("dynamic:lora-lr",), MAIN_TASKS, protocol.tier("1").seeds)
    assert protocol.arm("dynamic:lora-lr").lr_from == "lora"
    # the three mechanisms (weights, input statistic, reallocation) come first
    assert protocol.tier("ablation").arms == ("dynamic", "dynamic:lora-lr", "dynamic:no-lr-weights",
                                              "dynamic:no-reallocation", "dynamic:input-statistic")
    assert protocol.tier("ablation-extra").arms == ("dynamic", "dynamic:lora-lr", "dynamic:forward-weights",
                                                    "dynamic:grow-gradient")
    tier1 = protocol.tier("1")
    assert len(tier1.arms) * len(tier1.tasks) * len(tier1.seeds) == 60
    # the low-rank arms both train at LoRA's chosen lr, at r=2 with LoRA's scale alpha / r = 2
    low = seed_jobs(protocol, protocol.tier("low-rank"), {"lora": 3e-4, "dynamic": 1e-3})
    assert {(j.lr, j.settings["rank"], j.settings["alpha"]) for j in low} == {(3e-4, 2, 4.0)}
    assert {j.arm.method for j in low} == {"lora", "dynamic"} and len(low) == 18
    assert {j.arm.name: j.arm.paired_with for j in low} == {"lora-r2": None, "dynamic-r2": "lora-r2",
                                                            "dynamic-r2-target-pooled": "lora-r2"}
    assert protocol.arm("dynamic-r2-target").paired_with == "lora-r2"  # no longer run, still reported
    # Rank-1 Sum starts at 2 x LoRA's rank and prunes to LoRA's budget in parameters; its records
    # compare its size with LoRA's at r = 8, not at the rank it starts from
    rank1 = [j for j in seed_jobs(protocol, protocol.tier("2"), {"rank1": 1e-3, "lora-qv": 3e-4})
             if j.arm.name == "rank1"]
    assert {(j.settings["rank"], j.settings["alpha"], j.arm.method_options["budget_in"]) for j in rank1} == {
        (16, 32.0, "parameters")}
    assert protocol_runner.job_document(rank1[0], None, None)["record"]["budget_rank"] == 8
    assert protocol_runner.job_document(low[0], None, None)["record"]["budget_rank"] == 2
    # the wide tier plans the low-rank tier's finished runs again (same keys: skipped) and 28 more
    wide = seed_jobs(protocol, protocol.tier("low-rank-wide"), {"lora": 3e-4, "dynamic": 1e-3})
    low_keys = {run_key(j.key_record()) for j in low}
    assert len(wide) == 40 and sum(run_key(j.key_record()) not in low_keys for j in wide) == 28
    assert [j.seed for j in wide] == sorted(j.seed for j in wide)  # seeds outermost: 0-2 come first
    assert main(["bench", "--profile", "paper", "--plan", "--tier", "0", "--methods", "lora", "peft-adalora",
                 "--records", str(tmp_path / "runs.jsonl")]) == 0
    assert "6 runs left" in capsys.readouterr().out  # 2 arms x 3 lrs on the one grid task
    assert main(["bench", "--profile", "paper", "--tasks", "mrpc", "--records", str(tmp_path / "r.jsonl")]) == 2
    assert "--tasks: not used by --profile paper" in capsys.readouterr().err
    assert main(["bench", "report", "--records", str(tmp_path / "missing.jsonl")]) == 2
    assert "records file not found" in capsys.readouterr().err


def test_report_decides_nothing_from_a_partial_grid(tmp_path):
    """A paper arm with 2 of its 3 grid runs has no lr yet: the grid table says so and none of
    its runs is counted (the runner would not have started its seed runs either)."""
    path = tmp_path / "runs.jsonl"
    for lr, sel in ((1e-3, 0.81), (3e-3, 0.80)):
        append_record(path, hand_record("mrpc", "lora", 0, 0.8, lr=lr, stage="grid", selection=sel))
    text = write_report(path, tmp_path / "report")
    assert "(2 records, 0 counted)" in text
    grid = (tmp_path / "report" / "lr_grid.csv").read_text()
    assert grid.count("pending (2 of 3 runs)") == 2 and "yes" not in grid
    assert not (tmp_path / "report" / "dots.png").exists()


def test_report_waits_for_the_edge_step_of_a_grid_best_at_its_end(tmp_path):
    """lora's base grid is best at 3e-3, its top: until 1e-2 is recorded the report chooses
    nothing; then it chooses over all four lrs, as the bench does."""
    path = tmp_path / "runs.jsonl"
    for lr, sel in ((3e-4, 0.70), (1e-3, 0.75), (3e-3, 0.80)):
        append_record(path, hand_record("mrpc", "lora", 0, 0.8, lr=lr, stage="grid", selection=sel))
    grid = (tmp_path / "report" / "lr_grid.csv")
    assert "(3 records, 0 counted)" in write_report(path, tmp_path / "report")
    assert grid.read_text().count("pending (3 of 4 runs)") == 3
    append_record(path, hand_record("mrpc", "lora", 0, 0.8, lr=1e-2, stage="grid", selection=0.78))
    text = write_report(path, tmp_path / "report")
    assert "| lora | 0.003 | yes | 80.00 | 80.00 |" in text and "(4 records, 1 counted)" in text


def test_a_grid_end_that_wins_its_edge_step_is_marked_in_the_report(tmp_path):
    """The edge step wins too: the report chooses it and marks it "yes (grid end)", so a reader
    sees that the arm's lr may still be limited by the grid."""
    path = tmp_path / "runs.jsonl"
    for lr, sel in ((3e-4, 0.70), (1e-3, 0.75), (3e-3, 0.80), (1e-2, 0.85)):
        append_record(path, hand_record("mrpc", "lora", 0, 0.8, lr=lr, stage="grid", selection=sel))
    text = write_report(path, tmp_path / "report")
    assert "| lora | 0.01 | yes (grid end) | 85.00 | 85.00 |" in text
    assert "| lora | 0.003 |  | 80.00 | 80.00 |" in text


@pytest.mark.parametrize(("means", "best"), [
    ({1e-4: 0.8, 3e-4: 0.8, 1e-3: 0.8, 3e-3: 0.8}, 3e-4),  # even grid, all tied: the lower of the middle two
    ({1e-4: 0.8, 3e-4: 0.7, 1e-3: 0.7, 3e-3: 0.8}, 1e-4),  # the two ends tied: the lower
    ({1e-4: 0.7, 3e-4: 0.8, 1e-3: 0.8, 3e-3: 0.9}, 3e-3),  # a strictly better end wins
])
def test_a_tie_on_the_lr_grid_goes_to_its_middle_exactly(means, best):
    from dynalora.bench.protocol import best_lr

    assert best_lr(means) == best


def test_the_lr_is_chosen_by_the_mean_over_every_grid_task():
    """Two grid tasks that disagree: the choice follows the mean, not the first task; a grid
    missing one (lr, task) run decides nothing."""
    scores = {(1e-3, "mrpc"): 0.80, (1e-3, "rte"): 0.60, (3e-3, "mrpc"): 0.78, (3e-3, "rte"): 0.66,
              (3e-4, "mrpc"): 0.79, (3e-4, "rte"): 0.55}
    recs = [hand_record(task, "lora", 0, 0.5, lr=lr, stage="grid", selection=s) for (lr, task), s in scores.items()]
    expected = {"lora": ([3e-4, 1e-3, 3e-3], ("mrpc", "rte"))}
    choice = choose_lrs(recs, expected)["lora"]
    assert choice["lr"] == 3e-3 and choice["mean_selection_score"] == pytest.approx(0.72)
    assert choice["grid"]["0.001"]["tasks"] == {"mrpc": 0.80, "rte": 0.60}
    assert choose_lrs(recs[:-1], expected) == {}


def test_an_ablation_variant_at_loras_lr_reuses_dynamics_grid_run(tmp_path):
    """`dynamic:lora-lr` trains dynamic LoRA at LoRA's chosen lr: its seed-0 MRPC run is the same
    run as dynamic's grid run at that lr, so the bench does not train it again and the report
    counts that record for the variant too (and for dynamic only at dynamic's own lr); a
    variant's runs at another lr do not count, and its own record beats a shared one."""
    protocol = paper_protocol()
    variant = protocol.arm("dynamic:lora-lr")
    assert variant.method_options == {} and variant.tuned_by == "lora"
    grids = {"lora": {1e-4: 0.78, 3e-4: 0.81, 1e-3: 0.80, 3e-3: 0.79}, "dynamic": {3e-4: 0.80, 1e-3: 0.82, 3e-3: 0.70}}
    path = tmp_path / "runs.jsonl"
    for name, scores in grids.items():
        arm = protocol.arm(name)
        for lr, sel in scores.items():
            job = Job("0", "grid", arm, "mrpc", 0, lr, job_settings(protocol, arm, protocol.tier("0")))
            append_record(path, {**hand_record("mrpc", name, 0, sel + 0.02, lr=lr, stage="grid", selection=sel),
                                 **job.key_record()})
    recorded = read_records(path)
    chosen = {a: c["lr"] for a, c in choose_lrs(recorded, expected_grids(protocol, recorded)).items()}
    assert chosen == {"lora": 3e-4, "dynamic": 1e-3}
    jobs = [j for j in seed_jobs(protocol, protocol.tier("ablation"), chosen) if j.arm is variant]
    left = protocol_runner.pending(jobs, recorded)
    assert len(jobs) == 6 and [(j.task, j.seed) for j in jobs if j not in left] == [("mrpc", 0)]
    seed1 = next(j for j in left if (j.task, j.seed) == ("mrpc", 1))
    assert seed1.lr == 3e-4
    append_record(path, {**hand_record("mrpc", variant.name, 1, 0.86, lr=3e-4), **seed1.key_record(), "tuned_by": "lora"})
    append_record(path, {**hand_record("mrpc", variant.name, 2, 0.50, lr=1e-3), **seed1.key_record(), "lr": 1e-3,
                         "seed": 2, "tuned_by": "lora"})  # not at LoRA's chosen lr: left out
    text = write_report(path, tmp_path / "report")
    table = (tmp_path / "report" / "table1.csv").read_text().splitlines()
    assert next(row for row in table if row.startswith("dynamic:lora-lr,")).startswith("dynamic:lora-lr,84.00 ± 2.83 (n=2)")
    assert next(row for row in table if row.startswith("dynamic,")).startswith("dynamic,84.00 (n=1)")
    assert "(9 records, 4 counted)" in text  # lora and dynamic at their lrs, the variant's own run and the shared one
    # From the records alone: a variant the protocol does not know, tuned by LoRA's grid, with its
    # own record for seed 0 as well, keeps its own record and still counts at LoRA's lr only.
    append_record(path, {**hand_record("mrpc", "dynamic:mine", 0, 0.90, lr=3e-4), **seed1.key_record(), "seed": 0,
                         "tuned_by": "lora"})
    append_record(path, {**hand_record("mrpc", "dynamic:mine", 1, 0.70, lr=3e-4), **seed1.key_record(), "tuned_by": "lora"})
    write_report(path, tmp_path / "report")
    table = (tmp_path / "report" / "table1.csv").read_text().splitlines()
    assert next(row for row in table if row.startswith("dynamic:mine,")).startswith("dynamic:mine,80.00 ± 14.14 (n=2)")
    bad = tmp_path / "ablation.yaml"
    bad.write_text("variants:\n  x: {lr_from: dora}\n")
    with pytest.raises(ConfigError, match="variant 'x': lr_from 'dora' is not an arm"):
        paper_protocol(bad)
    bad.write_text("variants:\n  x: {lr_from: [lora]}\n")
    with pytest.raises(ConfigError, match="variant 'x': lr_from \\['lora'\\] is not an arm"):
        paper_protocol(bad)
    bad.write_text("variants:\n  x: {tier: '3'}\n")
    with pytest.raises(ConfigError, match="variant 'x': tier '3' is not one of ablation, ablation-extra"):
        paper_protocol(bad)
    bad.write_text("variants:\n  x: {beta: 1.0}\n")  # no extra variant: no extra tier
    assert "ablation-extra" not in [t.name for t in paper_protocol(bad).tiers]


def test_report_warns_when_an_arms_runs_were_trained_under_different_defaults(tmp_path):
    """A run's key holds only explicit options: records made before and after a default changed
    share it. The report finds them from `method_config` (fields all of them recorded) and says so;
    the warning goes once the records agree again."""
    path = tmp_path / "runs.jsonl"
    for seed, w_min in ((0, 0.5), (1, 0.25)):
        append_record(path, {**hand_record("mrpc", "mine", seed, 0.8),
                             "method_config": {"r": 8, "w_min": w_min, **({"grow_init": "random"} if seed else {})}})
    append_record(path, hand_record("mrpc", "mine", 2, 0.8))  # an older record without method_config
    text = write_report(path, tmp_path / "report")
    assert "| mine | w_min | 0.25 / 0.5 |" in text and "grow_init" not in text
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True) if '"seed": 1' not in line))
    assert "Warning" not in write_report(path, tmp_path / "report")
    assert not (tmp_path / "report" / "config_conflicts.csv").exists()


def test_report_shows_where_the_rank_changing_arms_put_their_budget(tmp_path):
    path = tmp_path / "runs.jsonl"
    for seed, (q, ffn, turns) in enumerate(((6, 10, 0.5), (4, 12, 0.0))):
        append_record(path, {**hand_record("cola", "mine", seed, 0.3), "allocation": {
            "ranks_by_type": {"query": {"mean": q}, "ffn": {"mean": ffn}}, "resizes": 10 + seed,
            "reversals": {"mean_per_layer": turns}, "weight_min": 0.6 + seed / 10, "weight_max": 2.0 - seed}})
    append_record(path, {**hand_record("cola", "plain", 0, 0.3), "allocation": None})  # LoRA: no allocation
    text = write_report(path, tmp_path / "report")
    assert "| mine | cola | 2 | 11.0 | 5.0 | 10 | 0.25 (n=2) | 0.60-2.00 |" in text
    assert "| plain | cola |" not in text.split("## Allocation")[1]


def test_table1_compares_the_main_arms_on_the_seeds_they_share(tmp_path):
    """Seed 2 of lora is done, dynamic's is not: lora's Table 1 mean leaves it out until then
    (a seed moves a mean by itself); a run whose patience ran out at the epoch cap did not
    stop early."""
    path = tmp_path / "runs.jsonl"
    for seed, dev in enumerate((0.80, 0.82, 0.90)):
        append_record(path, {**hand_record("mrpc", "lora", seed, dev), "settings": {"epochs": 4.0}})
    for seed, dev in enumerate((0.81, 0.85)):
        append_record(path, hand_record("mrpc", "dynamic", seed, dev))
    write_report(path, tmp_path / "report")
    table = (tmp_path / "report" / "table1.csv").read_text()
    assert f"{statistics.fmean([80, 82]):.2f} ± {statistics.stdev([80, 82]):.2f} (n=2)" in table
    assert "83.00 ± 2.83 (n=2)" in table
    rows = {r.split(",")[1]: r.split(",") for r in (tmp_path / "report" / "convergence.csv").read_text().splitlines()[1:]}
    assert rows["lora"][5] == "0" and rows["dynamic"][5] == "2"  # lora's runs reached their 4-epoch cap


def test_report_shows_how_much_of_its_rank_each_arm_uses(tmp_path):
    path = tmp_path / "runs.jsonl"
    for seed, used in enumerate((2.0, 3.0)):
        append_record(path, {**hand_record("mrpc", "lora", seed, 0.8),
                             "rank_use": {"intermediate.dense": {"layers": 6, "r": 8.0, "effective_rank": used,
                                                                 "top2_energy": 0.8}}})
    append_record(path, hand_record("mrpc", "dynamic", 0, 0.8))  # older records carry none
    text = write_report(path, tmp_path / "report")
    assert "| lora | mrpc | 2 | 2.5 / 8.0 |" in text and "| dynamic | mrpc |" not in text.split("Rank use")[1]


def test_peft_adalora_config_in_a_record_holds_settings_not_per_run_values(tmp_path):
    """Two AdaLoRA runs on different tasks: their schedules, PEFT version and module order
    differ, their settings do not, so the report must see one config (no false conflict)."""
    configs = []
    for name, steps, modules in (("mrpc", 294, ["value", "query", "key"]), ("cola", 2390, ["key", "value", "query"])):
        best = tmp_path / name / "best"
        best.mkdir(parents=True)
        (best / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "orth_reg_weight": 0.1, "total_step": steps,
             "tinit": steps // 10, "tfinal": steps // 3, "deltaT": 8 + steps // 100, "peft_version": name,
             "target_modules": modules, "base_model_name_or_path": f"/machine/{name}", "rank_pattern": {"x": [True]}}))
        configs.append(protocol_worker.method_config(tmp_path / name))
    assert configs[0] == configs[1] == {"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "orth_reg_weight": 0.1,
                                        "target_modules": ["key", "query", "value"]}


def test_an_undefined_dev_score_counts_as_zero_and_the_grid_seed_leaves_only_the_grid_task(tmp_path):
    """A constant STS-B prediction has no correlation (NaN): it counts as 0 instead of breaking
    the tables. Seed 0 chose the lrs on MRPC only, so only MRPC loses it in the second table."""
    path = tmp_path / "runs.jsonl"
    for task in ("mrpc", "stsb"):
        for seed in range(3):
            append_record(path, hand_record(task, "lora", seed, 0.80 + seed / 100))
            dev = math.nan if (task, seed) == ("stsb", 1) else 0.81 + seed / 100
            append_record(path, hand_record(task, "dynamic", seed, dev))
    write_report(path, tmp_path / "report")
    stsb = [81.0, 0.0, 83.0]
    expected = f"{statistics.fmean(stsb):.2f} ± {statistics.stdev(stsb):.2f} (n=3)"
    assert expected in (tmp_path / "report" / "table1.csv").read_text()
    later = {tuple(r.split(",")[:3]) for r in (tmp_path / "report" / "paired_without_grid_seed.csv")
             .read_text().splitlines()[1:]}
    assert ("dynamic", "mrpc", "2") in later and ("dynamic", "stsb", "3") in later


def test_differences_that_tie_exactly_are_ties_after_float_noise():
    scores = [600, 613, 650, 677, 699]
    diffs = [100 * (a + 3) / 1043 - 100 * a / 1043 for a in scores]  # all equal in exact arithmetic
    assert len(set(diffs)) > 1  # not in floating point
    assert paired(diffs).low == paired(diffs).high  # sd 0 once rounded: the interval is a point


def test_low_rank_arms_are_also_paired_with_their_own_baseline(tmp_path):
    path = tmp_path / "runs.jsonl"
    for lr, sel in ((3e-4, 0.79), (1e-3, 0.81), (3e-3, 0.80)):  # LoRA's grid chooses 1e-3
        append_record(path, hand_record("mrpc", "lora", 0, 0.8, lr=lr, stage="grid", selection=sel))
    low, dyn = [0.30, 0.32, 0.31], [0.31, 0.34, 0.30]
    for seed in range(3):
        append_record(path, hand_record("cola", "lora-r2", seed, low[seed]))
        append_record(path, hand_record("cola", "dynamic-r2", seed, dyn[seed]))
        append_record(path, hand_record("cola", "dynamic-r2", seed, 0.9, lr=3e-4))  # not LoRA's lr: left out
    write_report(path, tmp_path / "report")
    row = (tmp_path / "report" / "paired_own.csv").read_text().splitlines()[1]
    expected = paired([100 * (b - a) for a, b in zip(low, dyn)])
    assert row.startswith(f"lora-r2,dynamic-r2,cola,3,{expected.mean:+.2f},")


def test_the_budget_table_shows_each_task_so_a_pooled_mean_hides_no_task(tmp_path):
    """An arm 10% over LoRA's budget on one task and 10% under on another averages to 1.0;
    the per-task column must show both."""
    recs = [hand_record(task, "lora", s, 0.8) for task in ("mrpc", "rte") for s in range(2)]
    for task, ratio in (("mrpc", 1.1), ("rte", 0.9)):
        for s in range(2):
            recs.append({**hand_record(task, "peft-adalora", s, 0.8), "budget_vs_lora": ratio})
    path = tmp_path / "runs.jsonl"
    for r in recs:
        append_record(path, r)
    write_report(path, tmp_path / "report")
    adalora = next(line for line in (tmp_path / "report" / "budget.md").read_text().splitlines() if "| peft-adalora |" in line)
    assert "1.000 (0.900-1.100)" in adalora and "mrpc 1.100, rte 0.900" in adalora


def test_progress_counts_each_tiers_runs_left_and_those_waiting_for_an_lr(tmp_path):
    from dynalora.bench.protocol_runner import describe_plan, tier_progress

    protocol = paper_protocol()
    empty = {r["tier"]: r for r in tier_progress(protocol, ["0", "1"], [], {})}
    assert (empty["0"]["planned"], empty["0"]["left"]) == (9, 9)  # 3 arms x 3 lrs on MRPC
    assert empty["1"]["left"] == empty["1"]["waiting for an lr"] == 60  # no lr is chosen yet
    # the ablation tiers share their baselines (dynamic, dynamic:lora-lr): the total counts them once
    total, _, text = describe_plan(protocol, ["ablation", "ablation-extra"], tmp_path / "none.jsonl", 1)
    rows = tier_progress(protocol, ["ablation", "ablation-extra"], [], {})
    assert total == 30 + 24 - 12 < sum(r["left"] for r in rows) and f"{total} runs left" in text
    grid = next(job for job in grid_jobs_of(protocol, "0") if job.arm.name == "lora")
    record = {**hand_record("mrpc", "lora", 0, 0.8, lr=grid.lr, stage="grid"), "settings": grid.settings}
    one = {r["tier"]: r for r in tier_progress(protocol, ["0"], [record], {})}
    assert one["0"]["left"] == 8 and one["0"]["hours left"] > 0
    (tmp_path / "runs.jsonl").write_text(json.dumps(record) + "\n")
    write_report(tmp_path / "runs.jsonl", tmp_path / "report")
    assert "| 0 | 9 | 8 | 0 |" in (tmp_path / "report" / "progress.md").read_text()


def grid_jobs_of(protocol, tier):
    from dynalora.bench.protocol import grid_jobs

    return grid_jobs(protocol, protocol.tier(tier), [])
