"""`run_bench`: tasks x methods x seeds through the one training loop, cached, then tables and plots.

Every (task, method, seed) run trains in its own child process (`python -m
dynalora.bench.worker`), so its peak memory is its own and a crash ends that run only. A
finished run leaves `runs/<task>/<method>/seed<k>/result.json`; a rerun of the same bench
skips every run whose result exists with the same settings, so an interrupted bench resumes
where it stopped. The summary (tables, plots, results.jsonl) is rebuilt from all results
at the end of every call.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dynalora.adapters.config import ConfigError
from dynalora.bench.plots import write_plots
from dynalora.bench.profiles import EQUAL_BUDGET_METHODS, BenchProfile, get_profile, run_dir
from dynalora.bench.summary import write_tables
from dynalora.files import atomic_path, read_json, write_json

RESULT_FILE = "result.json"


def run_spec(profile: BenchProfile, task: str, method: str, seed: int, data_dir: str | None,
             model: str | None) -> dict[str, Any]:
    """The TrainConfig fields of one run (plus what the worker measures afterwards)."""
    train = {
        "task": task, "method": method, "seed": seed, "data_dir": data_dir, "model": model,
        "epochs": profile.epochs, "batch_size": profile.batch_size, "rank": profile.rank, "alpha": profile.alpha,
        "max_train_samples": profile.max_train_samples, "max_eval_samples": profile.max_eval_samples,
        "max_length": profile.max_length, "progress": False,
        **profile.method_overrides.get(method, {}),
    }
    return {"train": train, "latency_repeats": profile.latency_repeats, "seq_len": profile.max_length}


def cached_result(folder: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    path = folder / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = read_json(path, "bench result")
    except ValueError:
        return None  # unreadable: run it again
    return result if result.get("spec", {}).get("train") == spec["train"] else None


def launch_worker(folder: Path, log_prefix: str) -> int:
    """`python -m dynalora.bench.worker folder` in a child process; returns its exit code."""
    command = [sys.executable, "-m", "dynalora.bench.worker", str(folder)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "DYNALORA_BENCH_PREFIX": log_prefix}
    return subprocess.run(command, env=env, check=False).returncode


def run_one(folder: Path, spec: dict[str, Any], log_prefix: str) -> dict[str, Any]:
    """Train and measure one run in a child process; returns its result (raises if it failed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULT_FILE).unlink(missing_ok=True)  # a stale result must not pass for this run's
    write_json(folder / "spec.json", spec)
    code = launch_worker(folder, log_prefix)
    if code != 0 or not (folder / RESULT_FILE).is_file():
        raise RuntimeError(f"{log_prefix} failed (exit code {code}); see the output above and {folder}")
    return read_json(folder / RESULT_FILE, "bench result")


def check_budgets(results: list[dict[str, Any]]) -> list[str]:
    """Warnings for equal-budget methods whose final adapter is larger than LoRA's at that rank."""
    problems = []
    for r in results:
        ratio = r["cost"].get("budget_vs_lora")
        if r["method"] in EQUAL_BUDGET_METHODS and ratio is not None and ratio > 1.0 + 1e-9:
            problems.append(f"{r['task']}/{r['method']}/seed{r['seed']}: adapter budget {ratio:.3f}x LoRA's")
    return problems


def preflight(specs: list[dict[str, Any]], output: Path) -> None:
    """Mistakes every run would trip over, found before the first one starts (each run costs
    a process start and a model load): invalid settings, a missing data or model folder."""
    from dynalora.data import get_task
    from dynalora.data.glue import find_task_dir
    from dynalora.training import TrainConfig

    for spec in specs:
        train = spec["train"]
        TrainConfig.from_dict({**train, "output": str(output)}, source=f"bench run {train['task']}/{train['method']}")
        if train["data_dir"] is not None:
            task = get_task(train["task"])
            file_name, _ = task.split_source("train")
            find_task_dir(task, Path(train["data_dir"]), file_name)
        if train["model"] is not None and not (Path(train["model"]) / "config.json").is_file():
            raise FileNotFoundError(f"base model not found: {train['model']} has no config.json")


def run_bench(tasks: list[str] | None = None, methods: list[str] | None = None, seeds: list[int] | None = None,
              profile: str | BenchProfile = "quick", output: str | Path = "runs/bench",
              data_dir: str | Path | None = None, model: str | Path | None = None,
              keep_going: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the bench; write tables, plots and results.jsonl into `output`; return the results.

    tasks / methods / seeds default to the profile's. A failed run is reported and skipped
    (`keep_going=True`) or raises. Equal-budget methods whose final adapter exceeds LoRA's
    budget are listed in `budget_warnings` of `bench.json`.
    """
    from dynalora.data import get_task
    from dynalora.training.methods import known_methods

    prof = get_profile(profile) if isinstance(profile, str) else profile
    tasks, methods = list(tasks or prof.tasks), list(methods or prof.methods)
    seeds = list(prof.seeds if seeds is None else seeds)
    unknown = [m for m in methods if m not in known_methods()]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known_methods())}")
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    tasks = [get_task(t).name for t in tasks]  # unknown task -> DataError, before anything is written
    output = Path(output)
    plan = [(t, m, s) for t in tasks for m in methods for s in seeds]
    specs = [run_spec(prof, task, method, seed, None if data_dir is None else str(data_dir),
                      None if model is None else str(model)) for task, method, seed in plan]
    preflight(specs, output)
    output.mkdir(parents=True, exist_ok=True)
    results, failures, started = [], [], time.perf_counter()
    for k, ((task, method, seed), spec) in enumerate(zip(plan, specs), start=1):
        folder = run_dir(output, task, method, seed)
        prefix = f"[{k}/{len(plan)}] {task} {method} seed {seed}"
        result = cached_result(folder, spec)
        if result is not None:
            print(f"{prefix}: cached ({result['metrics']['main']:.4f})", flush=True)
        else:
            print(f"{prefix}: training ({time.perf_counter() - started:.0f} s into the bench)", flush=True)
            try:
                result = run_one(folder, spec, prefix)
            except RuntimeError as err:
                if not keep_going:
                    raise
                print(f"{err}; going on", flush=True)
                failures.append(prefix)
                continue
            cost = result["cost"]
            print(f"{prefix}: {result['task_metric']} {result['metrics']['main']:.4f}, "
                  f"trained in {cost['train_seconds']:.0f} s", flush=True)
        results.append(result)
    summarise(results, methods, output, prof, failures)
    return results


def summarise(results: list[dict[str, Any]], methods: list[str], output: Path, profile: BenchProfile,
              failures: list[str]) -> None:
    with atomic_path(output / "results.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in results))
    text = ""
    if results:
        text = write_tables(results, methods, output)
        write_plots(results, methods, output)
    warnings = check_budgets(results)
    write_json(output / "bench.json", {
        "profile": profile.name, "settings": profile.train_settings(), "runs": len(results),
        "failed": failures, "budget_warnings": warnings, "methods": methods,
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    })
    if text:
        print(text, flush=True)
    for w in warnings:
        print(f"BUDGET WARNING: {w}", flush=True)
