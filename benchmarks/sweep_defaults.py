"""How the `train` defaults were chosen: LoRA (r=8, query/value) on full MRPC, one variable at a time.

    .venv/bin/python benchmarks/sweep_defaults.py [--data-dir ../shared/data/glue] [--epochs 3]

Each row is one real `dynalora.training.train` run of the packaged MiniLM on the whole MRPC
training set, evaluated on the whole dev set after every epoch (best epoch reported, as the
trainer does). The reference bar is PEFT 0.21's LoRA with a CLS-pooler head at lr 5e-4
(71.1% dev accuracy, majority class 68.4%), so the `pooler` row reproduces that head in our
harness. Writes `docs/results/defaults_sweep.{json,md}`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import sys
import tempfile
from pathlib import Path

from dynalora.files import atomic_path, write_json
from dynalora.training import TrainConfig, train

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
CACHE = Path("runs/defaults-sweep")  # one JSON per finished variant, so a rerun continues

# (label, overrides of the run config); the first row is the shipped default.
VARIANTS = [
    ("default: mean pooling, lr 1e-3, no backbone dropout", {}),
    ("lr 5e-4", {"lr": 5e-4}),
    ("lr 2e-3", {"lr": 2e-3}),
    ("pooler head (CLS), lr 5e-4 (the PEFT bar's setup)", {"pooling": "pooler", "lr": 5e-4}),
    ("backbone dropout 0.1 (the model's own)", {"backbone_dropout": None}),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, nargs="*", help="indices of VARIANTS to train (default: all); "
                        "finished ones (cached in runs/defaults-sweep) are always reported")
    args = parser.parse_args(argv)
    rows = []
    for k, (label, overrides) in enumerate(VARIANTS):
        cached = CACHE / f"{args.task}-{k}-seed{args.seed}-e{args.epochs:g}.json"
        if cached.is_file():  # a finished variant is not trained again
            rows.append(json.loads(cached.read_text()))
            continue
        if args.only and k not in args.only:
            continue
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(task=args.task, method="lora", data_dir=args.data_dir, output=out,
                                 epochs=args.epochs, seed=args.seed, progress=False, **overrides)
            result = train(config)
        row = {"variant": label, "overrides": overrides, "lr": result["lr"], **result["metrics"],
               "best_epoch": result["best_epoch"], "train_wall_s": result["train_wall_s"]}
        print(row, flush=True)
        write_json(cached, row)
        rows.append(row)
    command = "python benchmarks/sweep_defaults.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    meta = {"command": command, "task": args.task, "epochs": args.epochs, "seed": args.seed,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores (shared)",
            "date": dt.date.today().isoformat()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"defaults_sweep_{args.task}.json", {**meta, "rows": rows})
    lines = [f"# Default settings sweep: LoRA r=8 (query, value) on {args.task.upper()}, packaged MiniLM",
             "", f"Command: `{command}`  ", f"Date: {meta['date']}; machine: {meta['machine']}; "
             f"{args.epochs:g} epochs, seed {args.seed}, batch 32, best epoch on dev.", "",
             "| variant | lr | accuracy | F1 | ROC-AUC | best epoch | train s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {r['lr']:g} | {r['accuracy']:.4f} | {r['f1']:.4f} | {r['roc_auc']:.4f} "
              f"| {r['best_epoch']:g} | {r['train_wall_s']:.0f} |" for r in rows]
    with atomic_path(RESULTS / f"defaults_sweep_{args.task}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
