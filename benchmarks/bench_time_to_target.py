"""Wall time until the selection-split score first reaches a target: dynalora against Hugging
Face PEFT + `transformers.Trainer`, same model, head, data, learning rate and batch size.

    .venv/bin/python benchmarks/bench_time_to_target.py [--tasks sst2 mrpc] [--seeds 0 1]
        [--sst2-train 2000] [--selection 400] [--epochs 1] [--dynalora-procs 1|2]

Data: a fixed random `--selection` rows of each GLUE *train* split are held out as the
selection split (GLUE dev is never looked at); training uses (a subset of) the rest. Both
sides train the packaged MiniLM with the same mean-pooling classifier (dynalora's
`SequenceClassifier`, head dropout 0.1), LoRA r=8 alpha=16 on query/value, the head trained
in full, AdamW (lr `--lr` for adapters and head, weight decay 0.01, no decay on biases and
norms), linear decay after 6% warm-up, gradient clipping at 1, `--epochs` epochs (one), and evaluate
accuracy on the selection split every `--eval-every` steps. The PEFT side is configured as
a careful user would: `DataCollatorWithPadding` (dynamic padding), `train_sampling_strategy="group_by_length"` (transformers 5's `group_by_length`),
no checkpoints, no logging. Each run is a fresh subprocess; its clock starts after imports,
before the model is loaded (both sides load, tokenise, train and evaluate on the clock).

Target: per task, the lower of the two sides' median (over seeds) best score, floored to
0.005, unless given (`--target TASK=VALUE`); a run that never reaches it counts as censored
at its full time, and the report says how many were. Ratio = median dynalora time / median
PEFT time.

Writes `benchmarks/results/time_to_target.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


# -- data ----------------------------------------------------------------------------------
def write_splits(task: str, data_dir: str, selection: int, train_limit: int | None, folder: Path) -> dict:
    """train.csv / selection.csv from the GLUE train split; the selection rows are fixed (seed 1234)."""
    import numpy as np

    from dynalora.data import get_task, load_split

    spec = get_task(task)
    rows = load_split(spec, "train", data_dir)
    order = np.random.default_rng(1234).permutation(len(rows))
    picked = {"selection": [rows[i] for i in order[:selection]], "train": [rows[i] for i in order[selection:]]}
    if train_limit:
        picked["train"] = picked["train"][:train_limit]
    columns = [f"text{i}" for i in range(len(spec.text_fields))]
    for name, examples in picked.items():
        with (folder / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*columns, "label"])
            writer.writerows([*e.texts, e.label] for e in examples)
    labels = [e.label for e in picked["selection"]]
    majority = max(labels.count(label) for label in set(labels)) / len(labels)
    return {"columns": columns, "train": len(picked["train"]), "selection": selection, "majority_share": majority}


# -- one run (a worker subprocess) ---------------------------------------------------------
def run_dynalora(args: argparse.Namespace, start: float) -> list[dict]:
    from dynalora.training import TrainConfig, train

    stamps: dict[int, float] = {}

    class Clock:
        def on_step_end(self, step: int) -> None:
            stamps[step] = time.perf_counter() - start

    out = Path(args.folder) / f"dynalora-{args.seed}"
    config = TrainConfig(task=args.task, method="lora", train_file=str(Path(args.folder) / "train.csv"),
                         dev_file=str(Path(args.folder) / "selection.csv"), text_columns=args.columns,
                         label_column="label", output=str(out), epochs=float(args.epochs), batch_size=args.batch,
                         eval_batch_size=64, lr=args.lr, head_lr=args.lr, eval_every=args.eval_every,
                         seed=args.seed, progress=False, rank=8, alpha=16.0, head_dropout=0.1)
    train(config, callbacks=[Clock()])
    if os.environ.get("RANK", "0") != "0":  # the main process of a distributed run reports
        return []
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "time_s": stamps[r["step"]], "score": r["metrics"]["accuracy"]}
            for r in evals if r.get("kind") == "eval"]


def run_peft(args: argparse.Namespace, start: float) -> list[dict]:
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
    from transformers.modeling_outputs import SequenceClassifierOutput

    from dynalora.data import encode, load_table
    from dynalora.training.api import load_tokenizer
    from dynalora.training.classifier import build_classifier, default_model_path

    class WithLoss(nn.Module):
        """Our classifier with the (loss, logits) output the Trainer expects."""

        def __init__(self, classifier: nn.Module) -> None:
            super().__init__()
            self.classifier_model = classifier
            self.config = classifier.config

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None):
            logits = self.classifier_model(input_ids=input_ids, attention_mask=attention_mask,
                                           token_type_ids=token_type_ids)
            loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits)

    torch.manual_seed(args.seed)
    path = default_model_path()
    tokenizer = load_tokenizer(path)
    folder = Path(args.folder)
    train_rows, labels = load_table(str(folder / "train.csv"), args.columns, "label")
    selection_rows, _ = load_table(str(folder / "selection.csv"), args.columns, "label", labels=labels)
    train_set, selection_set = (encode(rows, tokenizer, 128) for rows in (train_rows, selection_rows))
    model = get_peft_model(WithLoss(build_classifier(path, len(labels), "mean", 0.1, 0.0)),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
                                      modules_to_save=["classifier"]))
    curve: list[dict] = []

    class Clock(TrainerCallback):
        def on_evaluate(self, args_, state, control, metrics=None, **kwargs):
            curve.append({"step": state.global_step, "time_s": time.perf_counter() - start,
                          "score": metrics["eval_accuracy"]})

    steps = math.ceil(len(train_set) / args.batch) * args.epochs
    training = TrainingArguments(
        output_dir=str(folder / f"peft-{args.seed}"), per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=64, learning_rate=args.lr, weight_decay=0.01, num_train_epochs=args.epochs,
        warmup_steps=round(0.06 * steps), lr_scheduler_type="linear", max_grad_norm=1.0,
        eval_strategy="steps", eval_steps=args.eval_every, save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, train_sampling_strategy="group_by_length", seed=args.seed, data_seed=args.seed,
        use_cpu=True, label_names=["labels"], dataloader_num_workers=0)
    trainer = Trainer(model=model, args=training, train_dataset=train_set, eval_dataset=selection_set,
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: {"accuracy": float(np.mean(np.argmax(p.predictions, -1) == p.label_ids))},
                      callbacks=[Clock()])
    trainer.train()
    if steps % args.eval_every:  # the final model is evaluated too, as on dynalora's side
        trainer.evaluate()
    return curve


def worker(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    curve = run_dynalora(args, start) if args.side == "dynalora" else run_peft(args, start)
    if curve:
        Path(args.result).write_text(json.dumps({"curve": curve, "total_s": time.perf_counter() - start}))


# -- the driver ----------------------------------------------------------------------------
def launch(side: str, task: str, seed: int, folder: Path, info: dict, args: argparse.Namespace) -> dict:
    from bench_common import load_average

    result = folder / f"{side}-{seed}.json"
    command = [sys.executable, __file__, "--worker", side, "--task", task, "--seed", str(seed),
               "--folder", str(folder), "--result", str(result), "--columns", *info["columns"],
               "--lr", str(args.lr), "--batch", str(args.batch), "--eval-every", str(args.eval_every),
               "--epochs", str(args.epochs)]
    procs = args.dynalora_procs if side == "dynalora" else 1
    if procs > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *command[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // procs), "PYTHONPATH": str(REPO / "src"),
           "TOKENIZERS_PARALLELISM": "false"}
    load = load_average()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return {"side": side, "task": task, "seed": seed, "processes": procs, "load_average": load,
            **json.loads(result.read_text())}


def time_to(run: dict, target: float) -> tuple[float, bool]:
    """(seconds until the score first reached `target`, reached?); censored runs: their full time."""
    for point in run["curve"]:
        if point["score"] >= target:
            return point["time_s"], True
    return run["total_s"], False


def summarise(runs: list[dict], targets: dict[str, float], majority: dict[str, float]) -> dict[str, Any]:
    """Per task: the target, each side's median time to it and censored count, and the ratio;
    `majority_share` beside the target (a target at or below it is reached by predicting one class)."""
    summary = {}
    for task in sorted({r["task"] for r in runs}):
        best = {side: statistics.median(max(p["score"] for p in r["curve"]) for r in runs
                                        if r["task"] == task and r["side"] == side) for side in ("dynalora", "peft")}
        target = targets.get(task, math.floor(min(best.values()) * 200) / 200)
        per_side = {}
        for side in ("dynalora", "peft"):
            times = [time_to(r, target) for r in runs if r["task"] == task and r["side"] == side]
            per_side[side] = {"median_time_s": statistics.median(t for t, _ in times),
                              "times_s": [t for t, _ in times], "censored": sum(not ok for _, ok in times),
                              "median_best_score": best[side]}
        summary[task] = {"target": target, "majority_share": majority[task],
                         "target_above_majority": target > majority[task], **per_side,
                         "ratio_dynalora_over_peft": per_side["dynalora"]["median_time_s"] / per_side["peft"]["median_time_s"]}
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    parser.add_argument("--selection", type=int, default=400)
    parser.add_argument("--sst2-train", type=int, default=2000, help="SST-2 training subset (MRPC: all)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs on both sides")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--dynalora-procs", type=int, default=1, choices=[1, 2])
    parser.add_argument("--target", nargs="*", default=[], metavar="TASK=VALUE")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "time_to_target.json"))
    parser.add_argument("--note", default="", help="how quiet the machine was, in words, for the result file "
                        "(each run records its own load average either way)")
    # worker mode (one run in a subprocess)
    parser.add_argument("--worker", choices=["dynalora", "peft"], help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--columns", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be a positive whole number, not {args.epochs}")
    if args.worker:
        args.side = args.worker
        worker(args)
        return

    from bench_common import machine_info

    from dynalora.files import write_json

    targets = {k: float(v) for k, v in (t.split("=") for t in args.target)}
    runs, majority = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            folder = Path(tmp) / task
            folder.mkdir()
            info = write_splits(task, args.data_dir, args.selection, args.sst2_train if task == "sst2" else None, folder)
            majority[task] = info["majority_share"]
            for seed in args.seeds:
                sides = ["dynalora", "peft"] if seed % 2 == 0 else ["peft", "dynalora"]  # alternate who goes first
                for side in sides:
                    runs.append(launch(side, task, seed, folder, info, args))
                    print(json.dumps({k: runs[-1][k] for k in ("side", "task", "seed", "total_s")}), flush=True)
    result = {
        "command": " ".join([".venv/bin/python", "benchmarks/bench_time_to_target.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "note": args.note or "no note given: see each run's load average (1, 5, 15 min)",
        "summary": summarise(runs, targets, majority),
        "runs": runs,
    }
    write_json(args.output, result)
    print(json.dumps(result["summary"], indent=2))
    for task, row in result["summary"].items():
        if not row["target_above_majority"]:
            print(f"warning: the {task} target {row['target']} is not above the majority share "
                  f"{row['majority_share']:.4f}: reaching it needs no learning", file=sys.stderr)


if __name__ == "__main__":
    main()
