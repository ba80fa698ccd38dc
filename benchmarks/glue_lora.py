"""LoRA (r=8 on query/value, the `train` defaults) on full GLUE tasks with the packaged MiniLM.

    .venv/bin/python benchmarks/glue_lora.py [--tasks sst2 mrpc rte cola stsb] [--data-dir ../shared/data/glue]

Each task is one real `dynalora train` command (printed and recorded verbatim), run on the
whole training set and evaluated on the whole dev set after every epoch; the best epoch's
dev metrics are reported. Runs land in `runs/glue-lora/<task>`; the table goes to
`docs/results/glue_lora.{json,md}`. A finished task is skipped on rerun (its metrics.json
exists), so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from dynalora.files import atomic_path, write_json
from dynalora.training import main_metric

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
EPOCHS = {"sst2": 1, "mrpc": 3, "rte": 3, "cola": 3, "stsb": 3}  # SST-2 is 18x the size of MRPC
# Reference: full fine-tuning of MiniLM-L6-H384 as reported (the numbers).
REFERENCE = {"sst2": 91.5, "mrpc": 88.9, "rte": 68.8, "cola": 47.5}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(EPOCHS))
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--output", default="runs/glue-lora")
    args = parser.parse_args(argv)
    dynalora = str(Path(sys.executable).with_name("dynalora"))
    rows = []
    for task in args.tasks:
        out = Path(args.output) / task
        command = ["dynalora", "train", "--task", task, "--method", "lora", "--data-dir", args.data_dir,
                   "--epochs", str(EPOCHS.get(task, 3)), "--no-progress", "--output", str(out)]
        wall = None
        if not (out / "metrics.json").is_file():
            print("$", shlex.join(command), flush=True)
            started = time.perf_counter()
            subprocess.run([dynalora, *command[1:]], check=True, stdout=subprocess.DEVNULL)
            wall = round(time.perf_counter() - started, 1)
            write_json(out / "wall.json", {"wall_s": wall})
        metrics = json.loads((out / "metrics.json").read_text())
        if wall is None and (out / "wall.json").is_file():
            wall = json.loads((out / "wall.json").read_text())["wall_s"]
        rows.append({"task": task, "command": shlex.join(command), "wall_s": wall, **metrics})
        print(task, metrics["metrics"], flush=True)
    meta = {"machine": f"{platform.machine()}, 2 cores (shared with other jobs), no GPU",
            "date": dt.date.today().isoformat()}
    write_json(RESULTS / "glue_lora.json", {**meta, "rows": rows})
    lines = ["# LoRA r=8 (query, value) on full GLUE tasks, packaged MiniLM (all-MiniLM-L6-v2)", "",
             f"Date: {meta['date']}; machine: {meta['machine']}. Defaults of `dynalora train` "
             "(mean pooling, lr 1e-3, batch 32, no backbone dropout); best epoch on the full dev set.", "",
             "| task | GLUE metric | value | accuracy | F1 | reference (full FT) | epochs | wall s | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        m = r["metrics"]
        ref = REFERENCE.get(r["task"])
        lines.append(f"| {r['task']} | {main_metric(r['task'])} | {100 * m['main']:.1f} | "
                     f"{fmt_pct(m.get('accuracy'))} | {fmt_pct(m.get('f1'))} | {ref or '–'} | "
                     f"best {r['best_epoch']:g} of {EPOCHS.get(r['task'], 3)} | {r['wall_s']} | `{r['command']}` |")
    with atomic_path(RESULTS / "glue_lora.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


if __name__ == "__main__":
    main()
