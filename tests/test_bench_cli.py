"""`dynalora bench` and `dynalora analyze` end to end on a tiny BERT and a tiny SST-2: the
tables and plots, caching and resuming, failed runs, honest cost figures (merged latency,
the worker's own peak memory), PEFT AdaLoRA's schedule, and head-only training pooling each
example once. Runs go through the real worker code in this process (a child process costs
seconds of imports); one test launches the real child process."""

from __future__ import annotations

import csv
import json
import shutil
import statistics

import pytest
import torch
from training_helpers import make_sst_dir, make_tiny_model

from dynalora.bench import runner, worker
from dynalora.bench.measure import merge_for_inference, peak_rss_bytes
from dynalora.bench.profiles import BenchProfile, run_dir
from dynalora.cli.main import build_parser, main
from dynalora.training import TrainConfig, load_trained, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = BenchProfile("tiny", tasks=("sst2",), methods=("lora", "dynamic"), seeds=(0, 1), epochs=2.0,
                    max_train_samples=48, max_eval_samples=24, batch_size=16, rank=4, alpha=8.0,
                    max_length=16, latency_repeats=1)


class InProcessWorker:
    """Stands in for `runner.launch_worker`: the worker's `main` in this process; records
    which (method, seed) trained and fails the methods in `fail` with exit code 1."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.launched: list[tuple[str, int]] = []
        self.fail = fail

    def __call__(self, folder, log_prefix: str) -> int:
        spec = json.loads((folder / "spec.json").read_text())["train"]
        self.launched.append((spec["method"], spec["seed"]))
        if spec["method"] in self.fail:
            return 1
        worker.main(str(folder))
        return 0


def bench(monkeypatch, paths, output, fail=(), **kw):
    fake = InProcessWorker(fail)
    monkeypatch.setattr(runner, "launch_worker", fake)
    settings = {"profile": TINY, "data_dir": paths["data"], "model": paths["model"], "output": output, **kw}
    return runner.run_bench(**settings), fake


def is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-data")
    return {"model": make_tiny_model(root / "model"), "data": make_sst_dir(root / "glue")}


@pytest.fixture(scope="module")
def first_bench(paths, tmp_path_factory):
    """2 methods x 2 seeds, run once for the module's tests (which must not change it)."""
    output = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        results, fake = bench(mp, paths, output)
    return output, results, fake


def test_bench_writes_results_tables_and_plots(first_bench):
    output, results, fake = first_bench
    assert sorted(fake.launched) == [("dynamic", 0), ("dynamic", 1), ("lora", 0), ("lora", 1)]
    lines = (output / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {json.loads(line)["method"] for line in lines} == {"lora", "dynamic"}
    for stem in ("table1", "table2", "table1_display", "table2_display"):
        assert (output / f"{stem}.csv").stat().st_size > 0 and (output / f"{stem}.md").stat().st_size > 0
    t1 = read_csv(output / "table1.csv")
    for column in ("accuracy", "roc_auc", "f1", "recall", "glue_metric", "main", "accuracy_std", "main_std"):
        assert column in t1[0], column
    # Each table cell is the mean (and sample std) over the seeds of the per-run results.
    for method in ("lora", "dynamic"):
        row = next(r for r in t1 if r["task"] == "sst2" and r["method"] == method)
        runs = [r for r in results if r["method"] == method]
        assert row["glue_metric"] == "accuracy" and row["seeds"] == "2"
        for metric in ("accuracy", "f1", "main"):
            values = [r["metrics"][metric] for r in runs]
            assert float(row[metric]) == pytest.approx(statistics.fmean(values))
            assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values))
    shown = (output / "table1_display.md").read_text()
    assert "| accuracy | roc_auc | f1 | recall | glue_metric | main |" in shown and " ± " in shown
    t2 = read_csv(output / "table2.csv")
    for column in ("train_seconds", "latency_b1_ms", "latency_b32_ms", "trainable_share_pct", "peak_rss_mb",
                   "merged", "trainable_params", "budget_vs_lora"):
        assert column in t2[0], column
    lora = next(r for r in t2 if r["method"] == "lora")
    assert float(lora["train_seconds"]) == pytest.approx(
        statistics.fmean(r["cost"]["train_seconds"] for r in results if r["method"] == "lora"))
    assert float(lora["budget_vs_lora"]) == pytest.approx(1.0)
    assert 0 < float(lora["trainable_share_pct"]) < 100
    for name in ("loss_sst2.png", "quality.png", "allocation_sst2_dynamic.png"):
        assert is_png(output / name), name
    # The dynamic figure's data: rank per layer, importance and weights at each reallocation.
    history = json.loads((run_dir(output, "sst2", "dynamic", 0) / "allocation.json").read_text())
    assert history and all({"ranks", "importance", "weights"} <= set(h) for h in history)
    summary = json.loads((output / "bench.json").read_text())
    assert summary["failed"] == [] and summary["runs"] == 4 and summary["settings"]["epochs"] == 2.0


def test_latency_is_timed_on_the_merged_model_and_costs_are_recorded(first_bench):
    _, results, _ = first_bench
    for r in results:
        cost = r["cost"]
        assert cost["merged"] == "yes" and cost["device"] == "cpu"
        assert cost["latency_b1_ms"] > 0 and cost["latency_b32_ms"] > 0 and cost["peak_rss_mb"] > 0
        assert cost["peak_gpu_mb"] is None


def test_merging_for_inference_removes_the_adapter_layers(first_bench):
    from dynalora.adapters.layer import LoraLayer

    output, _, _ = first_bench
    model, _, _ = load_trained(run_dir(output, "sst2", "lora", 0))
    ids = torch.randint(5, 27, (2, 7))
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        merged, flag = merge_for_inference(model)
        after = merged(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert flag == "yes" and not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert torch.allclose(before, after, atol=1e-5)


def test_rerun_uses_the_cache_and_reruns_only_what_changed(first_bench, paths, tmp_path, monkeypatch):
    output = tmp_path / "bench"
    shutil.copytree(first_bench[0], output)
    table1 = (output / "table1.csv").read_text()
    _, fake = bench(monkeypatch, paths, output)
    assert fake.launched == []
    assert (output / "table1.csv").read_text() == table1

    (run_dir(output, "sst2", "lora", 1) / "result.json").unlink()
    _, fake = bench(monkeypatch, paths, output)
    assert fake.launched == [("lora", 1)]

    results, fake = bench(monkeypatch, paths, output, methods=["lora"], seeds=[0], profile=TINY.replace(epochs=1.0))
    assert fake.launched == [("lora", 0)]  # another training setting: the cached result does not count
    assert results[0]["spec"]["train"]["epochs"] == 1.0


def test_a_failed_run_is_reported_and_the_others_finish(paths, tmp_path, monkeypatch):
    results, fake = bench(monkeypatch, paths, tmp_path, fail=("dynamic",), seeds=[0])
    assert fake.launched == [("lora", 0), ("dynamic", 0)]
    assert [r["method"] for r in results] == ["lora"]
    summary = json.loads((tmp_path / "bench.json").read_text())
    assert summary["failed"] == ["[2/2] sst2 dynamic seed 0"] and summary["runs"] == 1
    assert "dynamic" not in {r["method"] for r in read_csv(tmp_path / "table1.csv")}
    with pytest.raises(RuntimeError, match="dynamic seed 0 failed"):
        bench(monkeypatch, paths, tmp_path / "strict", fail=("dynamic",), seeds=[0], keep_going=False)


def test_the_real_worker_process_reports_its_own_peak_memory(paths, tmp_path):
    """Linux carries ru_maxrss over exec, so a worker reading it reported the bench's peak."""
    ballast = torch.ones(1536 * 2**20, dtype=torch.uint8)  # raise this process's peak RSS by 1.5 GB
    del ballast
    assert peak_rss_bytes() > 1536 * 2**20
    spec = runner.run_spec(TINY.replace(epochs=1.0), "sst2", "head", 0, str(paths["data"]), str(paths["model"]))
    folder = tmp_path / "head"
    (folder).mkdir()
    (folder / "result.json").write_text("{}")  # stale: must not pass for this run's result
    result = runner.run_one(folder, spec, "[1/1] sst2 head seed 0")
    cost = result["cost"]
    assert result["method"] == "head" and 0 <= result["metrics"]["accuracy"] <= 1
    assert 50 < cost["peak_rss_mb"] < 1536
    assert cost["peak_rss_delta_mb"] >= 0 and cost["merged"] == "n/a"


def test_peft_adalora_allocates_once_per_optimizer_step_on_a_schedule_of_the_run(paths, tmp_path, monkeypatch):
    from dynalora.training.peft_methods import AdaLoraHook

    steps: list[int] = []
    original = AdaLoraHook.after_optimizer_step
    monkeypatch.setattr(AdaLoraHook, "after_optimizer_step", lambda self, step: (steps.append(step), original(self, step)))
    # 12 batches of 8, two per optimizer step, 1.5 epochs: 9 optimizer steps (not 18 batches).
    metrics = train(TrainConfig(task="sst2", method="peft-adalora", model=str(paths["model"]),
                                data_dir=str(paths["data"]), output=str(tmp_path / "run"), epochs=1.5,
                                batch_size=8, grad_accum=2, max_train_samples=96, max_eval_samples=24, rank=4,
                                alpha=8, max_length=16, progress=False))
    report = json.loads((tmp_path / "run" / "adalora_ranks.json").read_text())
    schedule, history = report["schedule"], report["history"]
    assert metrics["total_steps"] == metrics["steps"] == schedule["total_step"] == 9
    assert steps == list(range(1, 10))
    assert 0 < schedule["tinit"] < schedule["total_step"] - schedule["tfinal"] < 9
    # Nothing masked in the warm-up; then pruned, within the budgeting phase, to LoRA's budget
    # at r=4 (the history records changes only, so the last entry holds to the end).
    assert set(history[0]["ranks"].values()) == {6} and history[0]["step"] <= schedule["tinit"]
    assert sum(history[-1]["ranks"].values()) == 4 * len(history[-1]["ranks"])
    assert history[-1]["step"] <= schedule["total_step"] - schedule["tfinal"]


def test_head_only_training_runs_the_backbone_once_per_example(paths, tmp_path, monkeypatch):
    import dynalora.training.api as api

    rows = []
    build = api.build_classifier

    def counting_build(*args, **kwargs):
        classifier = build(*args, **kwargs)
        classifier.backbone.register_forward_hook(lambda module, inputs, output: rows.append(output[0].shape[0]))
        return classifier

    monkeypatch.setattr(api, "build_classifier", counting_build)
    metrics = train(TrainConfig(task="sst2", method="head", model=str(paths["model"]), data_dir=str(paths["data"]),
                                output=str(tmp_path / "head"), epochs=3, batch_size=16, max_train_samples=48,
                                max_eval_samples=24, max_length=16, progress=False))
    assert metrics["steps"] == 9  # 3 epochs of 3 batches, evaluated after each
    assert sum(rows) == 48 + 24  # every train and dev example pooled once, not once per epoch


# -- the command line -------------------------------------------------------------------------
def test_bench_help_documents_every_flag(capsys):
    parser = build_parser()
    bench_parser = next(a for a in parser._actions if hasattr(a, "choices") and a.choices
                        and "bench" in a.choices).choices["bench"]
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    flags = [a for a in bench_parser._actions if a.option_strings and a.dest != "help"]
    assert {f.option_strings[0] for f in flags} >= {"--profile", "--tasks", "--methods", "--seeds", "--data-dir",
                                                   "--model", "--output", "--max-train-samples", "--epochs"}
    for flag in flags:
        assert flag.option_strings[0] in text and flag.help and len(flag.help) > 20, flag.option_strings


@pytest.mark.parametrize("argv, message", [
    (["--methods", "lora", "nope"], "unknown method(s) nope"),
    (["--tasks", "mnlx"], "unknown GLUE task 'mnlx'"),
    (["--max-train-samples", "0"], "max_train_samples"),
    (["--data-dir", "/nonexistent/glue"], "data directory not found"),
])
def test_bench_user_mistakes_are_one_line_errors(argv, message, paths, tmp_path, capsys):
    base = ["bench", "--tasks", "sst2", "--data-dir", str(paths["data"]), "--model", str(paths["model"]),
            "--output", str(tmp_path / "out")]
    assert main([*base, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dynalora bench: error:") and message in err
    assert not (tmp_path / "out").exists()  # found before anything ran or was written


def test_bench_unknown_profile_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--profile", "huge"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_bench_command_applies_flag_overrides_and_exits_1_on_failure(paths, tmp_path, monkeypatch):
    fake = InProcessWorker(fail=("bitfit",))
    monkeypatch.setattr(runner, "launch_worker", fake)
    argv = ["bench", "--tasks", "sst2", "--methods", "head", "--seeds", "3", "--max-train-samples", "32",
            "--max-eval-samples", "16", "--epochs", "1", "--data-dir", str(paths["data"]),
            "--model", str(paths["model"]), "--output", str(tmp_path)]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "bench.json").read_text())
    assert summary["profile"] == "quick" and summary["runs"] == 1
    assert summary["settings"]["epochs"] == 1.0 and summary["settings"]["max_train_samples"] == 32
    assert fake.launched == [("head", 3)]
    result = json.loads((tmp_path / "results.jsonl").read_text())
    assert result["cost"]["latency_seq_len"] == 64  # quick's 128 tokens, capped at the model's positions
    assert main([*argv[:4], "bitfit", *argv[5:]]) == 1  # a failed run: exit status 1


def test_analyze_command_writes_tables_and_figures(first_bench, tmp_path, capsys):
    runs = first_bench[0]
    adapters = [str(run_dir(runs, "sst2", "lora", 0)), str(run_dir(runs, "sst2", "dynamic", 1))]
    assert main(["analyze", "--adapters", *adapters, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Subspace similarity phi" in out and "Amplification" in out
    for name in ("amplification_1", "amplification_2", "subspace"):
        assert is_png(tmp_path / f"{name}.png"), name
        assert (tmp_path / f"{name}.csv").stat().st_size > 0 and (tmp_path / f"{name}.md").stat().st_size > 0
    rows = read_csv(tmp_path / "subspace.csv")
    assert len(rows) == 4  # 2 layers x (query, value)
    assert all(0 <= float(r["phi_1_1"]) <= 1 for r in rows)
    amp = read_csv(tmp_path / "amplification_1.csv")
    assert all(float(r["amplification"]) > 0 and float(r["amplification_random"]) > 0 for r in amp)


def test_analyze_user_mistakes_are_one_line_errors(tmp_path, capsys):
    assert main(["analyze", "--adapters", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    assert main(["analyze", "--adapters", "a", "b", "c"]) == 2
    assert "one or two" in capsys.readouterr().err
    head_run = tmp_path / "head"  # what `dynalora train --method head` leaves: no adapter files
    head_run.mkdir()
    (head_run / "dynalora_run.json").write_text(json.dumps({"format": "dynalora-run", "metadata": {"method": "head"}}))
    assert main(["analyze", "--adapters", str(head_run), "--output", str(tmp_path / "out")]) == 2
    assert "a 'head' run has no LoRA adapter" in capsys.readouterr().err
