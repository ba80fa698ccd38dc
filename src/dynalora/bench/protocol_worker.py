"""One protocol run in its own process: `python -m dynalora.bench.protocol_worker RUN_FOLDER`.

Reads `job.json` (the TrainConfig fields and the record's identity), trains with the
selection split, and writes `record.json`: the run's line of runs.jsonl (the parent appends
it, so one process writes the records file). Latency and memory are measured separately, by
`dynalora bench timing`, so load on the machine does not leak into Table 2 through here.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ALWAYS_IN_COMMAND = ("task", "method", "seed", "lr")


def train_command(fields: dict[str, Any]) -> str:
    """A `dynalora train` line that reproduces the run: the fields that differ from the defaults."""
    import dataclasses

    from dynalora.training import TrainConfig

    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(TrainConfig)}
    words = ["dynalora", "train"]
    for name, value in fields.items():
        if name not in defaults or (value == defaults[name] and name not in ALWAYS_IN_COMMAND):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, dict):
            words += [flag, *(f"{k}={json.dumps(v)}" for k, v in value.items())]
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, "none" if value is None else str(value)]
    return shlex.join(words)


def eval_curve(folder: Path) -> list[list[float]]:
    """[epoch, selection GLUE score] of every evaluation of the run."""
    curve = []
    for line in (folder / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "eval":
            curve.append([record["epoch"], record["metrics"]["glue"]])
    return curve


def method_config(run: Path) -> dict[str, Any] | None:
    """Every field of the adapter config the run trained with, defaults included (not the
    per-layer rank/alpha patterns the run produced). A run's key holds only the options given
    explicitly, so this is what shows, in the report, an arm whose runs were trained under
    different defaults (records made before and after a default changed)."""
    from dynalora.bench.records import settings_only

    path = run / "best" / "dynalora_config.json"
    if path.is_file():
        config = json.loads(path.read_text()).get("config") or {}
    elif (run / "best" / "adapter_config.json").is_file():  # PEFT's methods (AdaLoRA): its own config file
        config = settings_only(json.loads((run / "best" / "adapter_config.json").read_text()))
    else:  # full fine-tuning, head only, ...: no adapter config
        return None
    return {k: v for k, v in config.items() if k not in ("rank_pattern", "alpha_pattern")}


def rank_use(run: Path) -> dict[str, dict[str, float]] | None:
    """How much of its rank the chosen adapter's update uses, per module type (see
    dynalora.analysis.spectrum); None for methods without a dynalora LoRA adapter."""
    if not (run / "best" / "dynalora_config.json").is_file():
        return None
    from dynalora.analysis.factors import load_factors
    from dynalora.analysis.spectrum import rank_use_by_type

    try:
        return rank_use_by_type(load_factors(run / "best")[0])
    except (RuntimeError, ValueError) as err:  # a non-finite update has no SVD: record that, keep the run
        return {"error": str(err).splitlines()[0]}


def data_digest(config: Any) -> dict[str, str]:
    """A short sha256 of the rows each part of the run saw (texts and labels, in order): equal
    digests across records mean the same training, selection and dev data, whatever the files
    were called or wherever they lay."""
    import hashlib

    from dynalora.training.api import run_data

    _, train, chosen_on, dev = run_data(config)
    digest = {}
    for name, rows in (("train", train), ("selection", chosen_on), ("dev", dev)):
        if rows is None:  # selection on dev: no separate dev part
            continue
        h = hashlib.sha256()
        for row in rows:
            h.update(json.dumps([list(row.texts), row.label]).encode())
        digest[name] = h.hexdigest()[:16]
    return digest


def majority_dev_score(config: Any) -> float:
    """Dev GLUE score of always answering the training set's most common class (regression: 0,
    the correlation of a constant prediction taken as none)."""
    import numpy as np

    from dynalora.training.api import run_data
    from dynalora.training.metrics import compute_metrics

    task, train, _, dev = run_data(config)
    if task.is_regression or dev is None:
        return 0.0
    labels = [e.label for e in train]
    majority = max(set(labels), key=labels.count)
    logits = np.zeros((len(dev), task.num_labels))
    logits[:, majority] = 1.0
    return compute_metrics(task, logits, np.array([e.label for e in dev]))["glue"]


def main(folder: str) -> None:
    started = time.perf_counter()
    import shutil

    from dynalora.bench.measure import adapter_budget
    from dynalora.bench.records import machine_info
    from dynalora.bench.worker import lora_budget
    from dynalora.files import read_json, write_json
    from dynalora.training import TrainConfig, load_trained, train
    from dynalora.training.optim import pick_device

    run = Path(folder)
    job = read_json(run / "job.json", "protocol run")
    # The folder is this job's scratch space and the job is not recorded yet: an interrupted
    # attempt is continued from its checkpoint (runs resume exactly), else its leftovers go.
    resume = (run / "checkpoints" / "latest.json").is_file()
    config = TrainConfig(**{**job["train"], "output": str(run), "resume": resume, "overwrite": not resume})
    device = pick_device(config.device)
    metrics = train(config)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    model, _, _ = load_trained(run, device=str(device))
    budget, reference = adapter_budget(model), lora_budget(model, job["record"].get("budget_rank") or config.rank)
    selection = metrics["selection"]
    record = {
        **job["record"],
        "selection_score": selection["metrics"]["glue"], "selection": selection["metrics"],
        "dev": metrics["metrics"], "majority_dev": majority_dev_score(config),
        "n_train": selection["n_train"], "n_selection": selection["n_examples"], "n_dev": metrics["n_examples"],
        "trainable_params": metrics["trainable_params"], "total_params": metrics["total_params"],
        "adapter_params": budget, "lora_budget": reference,
        "budget_vs_lora": budget / reference if budget is not None and reference else None,
        # wall_s (training only) adds up over resumed attempts; run_wall_s is this attempt's
        "wall_s": metrics["train_wall_s"], "run_wall_s": round(time.perf_counter() - started, 1), "resumed": resume,
        "epochs_run": round(metrics["steps"] * config.epochs / metrics["total_steps"], 3),
        "steps": metrics["steps"], "best_step": metrics["best_step"], "best_epoch": metrics["best_epoch"],
        "stopped_early": metrics["stopped_early"], "curve": eval_curve(run),
        "allocation": metrics.get("allocation"),  # dynamic / rank1: resizes, final ranks by module type, weights
        "method_config": method_config(run), "data_digest": data_digest(config), "rank_use": rank_use(run),
        "command": train_command({k: v for k, v in job["train"].items() if k not in ("output", "progress")}),
        "machine": machine_info(str(device)),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(run / "record.json", record)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m dynalora.bench.protocol_worker RUN_FOLDER")
    main(sys.argv[1])
