"""`run_protocol`: the tiers of a protocol, resumable from runs.jsonl, N runs side by side.

Each run trains in its own child process (`dynalora.bench.protocol_worker`, one thread by
default), in `WORKDIR/<tier>/<task>/<arm>/lr<lr>/seed<k>` (scratch: the record is what
counts). When a child finishes, this process appends its record to the records file: a run
is done exactly when its line is there, so Ctrl-C or `kill` at any moment loses at most the
runs in flight, and the next call skips everything recorded.

Order: whenever a worker is free it takes the first runnable run in tier order (the tiers as
given; inside a tier the grid runs, then the seed runs). A seed run is runnable once its arm's
lr grid is complete (its edge step included, when the grid's best sits at an end): the
choice is then written to `lr_choice.json` (next to the records) and the seed runs read it.
So a worker that would wait for the last run of a grid, or of a tier, starts the next
runnable run of a later tier instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynalora.analysis.tables import write_table
from dynalora.bench.protocol import Job, Protocol, choose_lrs, expected_grids, grid_jobs, seed_jobs
from dynalora.bench.records import append_record, lr_text, read_records, run_key
from dynalora.files import read_json, write_json

# Seconds per run when nothing comparable is recorded yet (one thread, MiniLM, this protocol).
DEFAULT_RUN_S = {"mrpc": 1500.0, "rte": 1800.0, "stsb": 2400.0, "cola": 2400.0, "sst2": 3600.0}
POLL_S = 2.0


def lr_choice_path(records: Path) -> Path:
    return records.parent / "lr_choice.json"


def refresh_lr_choice(protocol: Protocol, records_path: Path, recorded: list[dict[str, Any]]) -> dict[str, float]:
    """Recompute every decided arm's lr from `recorded` (the records of `records_path`), write
    lr_choice.json beside that file, and return the choices as read back from it (the file is
    what later tiers use)."""
    chosen = choose_lrs(recorded, expected_grids(protocol, recorded))
    path = lr_choice_path(records_path)
    if chosen or path.is_file():
        write_json(path, chosen)
    stored = read_json(path, "lr choice") if path.is_file() else {}
    return {arm: float(entry["lr"]) for arm, entry in stored.items()}


def pending(jobs: list[Job], records: list[dict[str, Any]]) -> list[Job]:
    done = {run_key(r) for r in records}
    return [j for j in jobs if j.lr is None or run_key(j.key_record()) not in done]


def estimate_s(job: Job, records: list[dict[str, Any]]) -> float:
    """Mean recorded run time of the same task and method, else of the task, else a default."""
    same = [r["run_wall_s"] for r in records if r["task"] == job.task and r["method"] == job.arm.method]
    task = [r["run_wall_s"] for r in records if r["task"] == job.task]
    values = same or task
    return sum(values) / len(values) if values else DEFAULT_RUN_S.get(job.task, 2400.0)


def tier_jobs(protocol: Protocol, name: str, recorded: list[dict[str, Any]], chosen: dict[str, float],
              arms: list[str] | None = None) -> tuple[list[Job], list[Job]]:
    """(the runs tier `name` plans, those of them not recorded yet)."""
    tier = protocol.tier(name)
    jobs = [j for j in grid_jobs(protocol, tier, recorded) + seed_jobs(protocol, tier, chosen) if keep(j, arms)]
    return jobs, pending(jobs, recorded)


def same_run(job: Job) -> str:
    """What makes two planned jobs one run (two tiers may plan it): its record key, or, before its
    arm's lr is chosen, the arm, task and seed."""
    return run_key(job.key_record()) if job.lr is not None else f"{job.arm.name} {job.task} {job.seed}"


def tier_progress(protocol: Protocol, tiers: list[str], recorded: list[dict[str, Any]], chosen: dict[str, float],
                  arms: list[str] | None = None) -> list[dict[str, Any]]:
    """Per tier: the runs it plans (a tier may plan a run another tier has recorded), how many
    are left, how many of those wait for an lr grid, and their estimated single-worker time."""
    return [progress_row(name, *tier_jobs(protocol, name, recorded, chosen, arms), recorded) for name in tiers]


def progress_row(name: str, jobs: list[Job], left: list[Job], recorded: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tier": name, "planned": len(jobs), "left": len(left), "waiting for an lr": sum(j.lr is None for j in left),
            "hours left": sum(estimate_s(j, recorded) for j in left) / 3600}


def progress_table(protocol: Protocol, records: list[dict[str, Any]], chosen: dict[str, float], output: Path) -> str:
    """How far each tier is, as a table in `output`/progress.{md,csv} (a run two tiers plan counts in both)."""
    rows = tier_progress(protocol, [t.name for t in protocol.tiers], records, chosen)
    for row in rows:
        row["hours left"] = f"{row['hours left']:.1f}"
    return write_table(rows, list(rows[0]), output / "progress",
                       title=f"Progress of the {protocol.name} protocol: runs each tier plans and has left "
                             "(hours: one worker, from the recorded run times)")


def describe_plan(protocol: Protocol, tiers: list[str], records: Path, workers: int,
                  arms: list[str] | None = None) -> tuple[int, float, str]:
    """(runs left, estimated seconds, a readable summary) for the chosen tiers."""
    recorded = read_records(records)
    chosen = refresh_lr_choice(protocol, records, recorded)
    planned = {name: tier_jobs(protocol, name, recorded, chosen, arms) for name in tiers}
    lines = []
    for row in (progress_row(name, jobs, left, recorded) for name, (jobs, left) in planned.items()):
        waiting = row["waiting for an lr"]
        note = f" ({waiting} wait for their arm's lr grid)" if waiting else ""
        lines.append(f"tier {row['tier']}: {row['left']} of {row['planned']} runs left{note}, "
                     f"~{row['hours left']:.1f} h of run time")
    # a run two of these tiers plan (the ablation tiers share their baselines) runs once
    distinct = {same_run(j): j for _, left in planned.values() for j in left}
    total, seconds = len(distinct), sum(estimate_s(j, recorded) for j in distinct.values())
    basis = f"from {len(recorded)} recorded runs" if recorded else "no runs recorded yet: default guesses"
    lines.append(f"{total} runs left; about {seconds / workers / 3600:.1f} h with {workers} worker(s) ({basis})")
    return total, seconds / workers, "\n".join(lines)


def keep(job: Job, arms: list[str] | None) -> bool:
    return arms is None or job.arm.name in arms


def job_folder(workdir: Path, job: Job) -> Path:
    arm = job.arm.name.replace(":", "-")
    return workdir / f"tier-{job.tier}" / job.task / arm / f"lr{lr_text(job.lr)}" / f"seed{job.seed}"


def job_document(job: Job, data_dir: str | None, model: str | None) -> dict[str, Any]:
    train = {"task": job.task, "method": job.arm.method, "seed": job.seed, "lr": job.lr,
             "target_modules": job.arm.targets_value(), "method_options": dict(job.arm.method_options),
             "data_dir": data_dir, "model": model, "progress": False, **job.settings}
    record = {**job.key_record(), "arm": job.arm.name, "tier": job.tier, "stage": job.stage,
              "tuned_by": job.arm.tuned_by,  # whose lr grid chose this run's lr (the report needs it)
              "budget_rank": job.arm.budget_rank or job.settings["rank"]}  # budget_vs_lora's reference
    return {"train": train, "record": record}


class Pool:
    """Up to `workers` child processes; each finished run's record goes to the records file."""

    def __init__(self, records: Path, workers: int, threads: int) -> None:
        self.records, self.workers, self.threads = records, workers, threads
        self.running: dict[subprocess.Popen, tuple[Job, Path, float]] = {}
        self.failures: list[str] = []
        self.finished = 0

    def start(self, job: Job, folder: Path, doc: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "record.json").unlink(missing_ok=True)
        write_json(folder / "job.json", doc)
        print(f"start  {job.label()}", flush=True)
        self.running[self.launch(folder)] = (job, folder, time.perf_counter())

    def launch(self, folder: Path) -> subprocess.Popen:
        """The child process of one run (its output goes to worker.log in its folder)."""
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "TOKENIZERS_PARALLELISM": "false"}
        with open(folder / "worker.log", "w") as log:
            return subprocess.Popen([sys.executable, "-m", "dynalora.bench.protocol_worker", str(folder)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)

    def startable(self, jobs: list[Job]) -> list[Job]:
        """`jobs` less those running, failed here, or the same run as an earlier one in the list."""
        seen = {run_key(job.key_record()) for job, _, _ in self.running.values()}
        keep = []
        for job in jobs:
            key = run_key(job.key_record())
            if key not in seen and job.label() not in self.failures:
                seen.add(key)
                keep.append(job)
        return keep

    def reap(self) -> int:
        """Collect finished children; returns how many finished (recorded or failed)."""
        finished = [c for c in self.running if c.poll() is not None]
        for child in finished:
            job, folder, began = self.running.pop(child)
            if child.returncode == 0 and (folder / "record.json").is_file():
                record = read_json(folder / "record.json", "run record")
                append_record(self.records, record)
                self.finished += 1
                print(f"done   {job.label()}: selection {record['selection_score']:.4f}, dev GLUE "
                      f"{record['dev']['glue']:.4f}, {record['epochs_run']:g} epochs, "
                      f"{time.perf_counter() - began:.0f} s", flush=True)
            else:
                tail = (folder / "worker.log").read_text(errors="replace").strip().splitlines()[-3:]
                print(f"FAILED {job.label()} (exit {child.returncode}); {folder / 'worker.log'}: "
                      + " | ".join(tail), flush=True)
                self.failures.append(job.label())
        return len(finished)

    def run(self, runnable: Callable[[], list[Job]], workdir: Path, data_dir: str | None, model: str | None) -> None:
        """Keep the workers busy with `runnable()`'s first runs (asked again after each finished
        run) until nothing is runnable or running. A run that failed is not retried here."""
        queue: list[Job] | None = None
        while True:
            if len(self.running) < self.workers:
                if queue is None:
                    queue = self.startable(runnable())
                while queue and len(self.running) < self.workers:
                    job = queue.pop(0)
                    self.start(job, job_folder(workdir, job), job_document(job, data_dir, model))
            if not self.running:
                return
            time.sleep(POLL_S)
            if self.reap():
                queue = None  # a new record may decide an lr: ask again

    def stop(self) -> None:
        for child in self.running:
            child.terminate()
        for child in self.running:
            child.wait()
        self.running.clear()


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_protocol(protocol: Protocol, tiers: list[str], records: str | Path, workdir: str | Path,
                 workers: int = 1, threads: int = 1, arms: list[str] | None = None,
                 data_dir: str | None = None, model: str | None = None) -> list[str]:
    """Run what is left of `tiers` (in order); returns the labels of failed runs."""
    records, workdir = Path(records), Path(workdir)
    for name in tiers:
        protocol.tier(name)  # unknown tier names fail before anything runs
    for name in arms or []:
        protocol.arm(name)
    _, _, summary = describe_plan(protocol, tiers, records, workers, arms)
    print(summary, flush=True)
    pool = Pool(records, workers, threads)
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    told: set[str] = set()

    def runnable() -> list[Job]:
        recorded = read_records(records)
        chosen = refresh_lr_choice(protocol, records, recorded)
        jobs = []
        for name in tiers:
            tier = protocol.tier(name)
            seeds = [j for j in seed_jobs(protocol, tier, chosen) if keep(j, arms)]
            waiting = sorted({j.arm.tuned_by for j in seeds if j.lr is None} - told)
            if waiting:
                told.update(waiting)
                print(f"tier {name}: no lr chosen yet for {', '.join(waiting)} (its grid is unfinished); "
                      "their seed runs wait", flush=True)
            jobs += [j for j in grid_jobs(protocol, tier, recorded) if keep(j, arms)]
            jobs += [j for j in seeds if j.lr is not None]
        return pending(jobs, recorded)

    try:
        pool.run(runnable, workdir, data_dir, model)
    except KeyboardInterrupt:
        print(f"interrupted: stopping {len(pool.running)} run(s) in flight; every finished run is recorded "
              f"in {records}", flush=True)
        pool.stop()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"{pool.finished} run(s) finished, {len(pool.failures)} failed; records: {records}", flush=True)
    return pool.failures
