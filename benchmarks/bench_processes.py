"""Two single-threaded processes (torchrun, data-parallel) against one two-threaded process.

    .venv/bin/python benchmarks/bench_processes.py [--repeats 3] [--task sst2] [--samples 1024]

Each repeat runs the same `dynalora train` (real MiniLM, LoRA, the same global batch and
steps) twice, in alternating order: `python -m dynalora train` with OMP_NUM_THREADS=2, and
`torchrun --nproc_per_node 2 -m dynalora train` with OMP_NUM_THREADS=1. Throughput is
training examples per second of `train_wall_s` (metrics.json: the loop's time without
evaluation); the whole command's wall time (start-up, tokenising, evaluation) is kept too.
The load average is recorded with every run: the machine is shared.

Writes `benchmarks/results/processes.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import load_average, machine_info

from dynalora.files import write_json

REPO = Path(__file__).resolve().parents[1]


def run(kind: str, flags: list[str], output: Path) -> dict:
    python = sys.executable
    if kind == "1x2":
        command, threads = [python, "-m", "dynalora", "train"], "2"
    else:
        command, threads = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "dynalora", "train"], "1"
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONPATH": str(REPO / "src")}
    load = load_average()
    start = time.perf_counter()
    subprocess.run([*command, *flags, "--output", str(output), "--no-progress"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics = json.loads((output / "metrics.json").read_text())
    return {"kind": kind, "command_wall_s": wall, "train_wall_s": metrics["train_wall_s"],
            "steps": metrics["steps"], "score": metrics["metrics"]["main"], "load_average": load}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    parser.add_argument("--samples", type=int, default=1024, help="training examples (one epoch)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "processes.json"))
    args = parser.parse_args(argv)
    flags = ["--task", args.task, "--method", "lora", "--data-dir", args.data_dir, "--epochs", "1",
             "--max-train-samples", str(args.samples), "--max-eval-samples", "256", "--batch-size", str(args.batch)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            kinds = ["1x2", "2x1"] if repeat % 2 == 0 else ["2x1", "1x2"]
            for kind in kinds:
                runs.append({"repeat": repeat, **run(kind, flags, Path(tmp) / f"{kind}-{repeat}")})
                print(json.dumps(runs[-1]), flush=True)
    examples = {kind: [r["steps"] * args.batch / r["train_wall_s"] for r in runs if r["kind"] == kind]
                for kind in ("1x2", "2x1")}
    medians = {kind: statistics.median(v) for kind, v in examples.items()}
    result = {
        "command": " ".join([".venv/bin/python", "benchmarks/bench_processes.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "note": "shared 2-core machine: see each run's load average",
        "median_train_examples_per_s": medians,
        "ratio_2x1_over_1x2": medians["2x1"] / medians["1x2"],
        "median_command_wall_s": {k: statistics.median(r["command_wall_s"] for r in runs if r["kind"] == k)
                                  for k in ("1x2", "2x1")},
        "runs": runs,
    }
    write_json(args.output, result)
    print(json.dumps({k: result[k] for k in ("median_train_examples_per_s", "ratio_2x1_over_1x2",
                                             "median_command_wall_s")}, indent=2))
    return result


if __name__ == "__main__":
    main()
