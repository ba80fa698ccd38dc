"""Builders shared by the training and CLI tests: a tiny BERT folder with its own tokenizer,
a tiny sentiment task in the GLUE SST-2 layout (and as CSV files, classification and
regression), and the settings that train on them in about a second."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import torch

from dynalora.files import load_tensors
from dynalora.training import TrainConfig

GOOD = ["good", "great", "fine", "nice", "happy"]
BAD = ["bad", "awful", "poor", "sad", "ugly"]
FILLER = ["the", "a", "movie", "film", "was", "is", "very", "plot", "actor", "story", "quite", "really"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Settings under which the tiny model learns the tiny task (dev accuracy >0.9 in 36 steps).
# The random backbone's pooled vectors separate the classes only by a small margin, so the
# head needs a large learning rate; no dropout anywhere keeps runs comparable step by step.
TINY_SETTINGS: dict[str, Any] = {
    "task": "sst2", "epochs": 3.0, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-2, "head_lr": 0.1,
    "head_dropout": 0.0, "progress": False, "max_length": 64,  # the tiny model has 64 positions
}


def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT saved with a word-level tokenizer over the task's words."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + GOOD + BAD + FILLER
    # The vocabulary as a dict: transformers 5 silently ignores `vocab_file=` (every word -> [UNK]).
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertModel(config).save_pretrained(folder)
    return folder


def sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """One sentiment word, which decides the label, and at most one filler word.

    More fillers dilute the mean-pooled vector of the random backbone until the tiny model
    needs far more steps to learn the task.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [*rng.sample(FILLER, rng.randint(0, 1)), rng.choice(GOOD if label else BAD)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def make_sst_dir(root: Path, n_train: int = 96, n_dev: int = 48) -> Path:
    """`root/SST-2/{train,dev}.tsv` of a task where one word decides the label."""
    task = root / "SST-2"
    task.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 1), ("dev", n_dev, 2)):
        lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in sentences(n, seed)]
        (task / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return root


def make_csv_pair(root: Path, n_train: int = 96, n_dev: int = 48) -> tuple[Path, Path]:
    """train.csv / dev.csv with columns text, verdict (pos / neg)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n, seed in (("train", n_train, 3), ("dev", n_dev, 4)):
        path = root / f"{name}.csv"
        path.write_text("text,verdict\n" + "".join(f"{s},{'pos' if y else 'neg'}\n" for s, y in sentences(n, seed)))
        paths.append(path)
    return paths[0], paths[1]


def make_regression_csv(root: Path, n_train: int = 64, n_dev: int = 32) -> tuple[Path, Path]:
    """STS-B-like pairs: columns first, second, score (0-5, from how many halves are positive)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n, seed in (("train", n_train, 5), ("dev", n_dev, 6)):
        first, second = sentences(n, seed), sentences(n, seed + 100)
        path = root / f"{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["first", "second", "score"])
            for i, ((a, ya), (b, yb)) in enumerate(zip(first, second)):
                writer.writerow([a, b, 2.25 * (ya + yb) + 0.1 * (i % 5)])
        paths.append(path)
    return paths[0], paths[1]


def tiny_config(model: Path, data: Path | None, output: Path, **overrides: Any) -> TrainConfig:
    """A run of the tiny model on the tiny task (`data` None: own files given in `overrides`)."""
    settings = {**TINY_SETTINGS, "model": str(model), "output": str(output)}
    if data is not None:
        settings["data_dir"] = str(data)
    return TrainConfig(**{**settings, **overrides})


def majority_share(table: Path) -> float:
    """The share of the most common label in a TSV / CSV whose last column is the label."""
    sep = "\t" if table.suffix == ".tsv" else ","
    labels = [line.rsplit(sep, 1)[-1] for line in table.read_text().splitlines()[1:] if line.strip()]
    return max(labels.count(v) for v in set(labels)) / len(labels)


def saved_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """What a run saved as its trained model (our adapter file, PEFT's, or the trained-state file)."""
    folder = run_dir / "best" if (run_dir / "best").is_dir() else run_dir
    for name in ("dynalora_adapter.safetensors", "adapter_model.safetensors"):
        if (folder / name).is_file():
            return load_tensors(folder / name)
    return load_tensors(folder / "trained_state.safetensors")


def assert_same_tensors(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    """Bit-identical: same names, shapes, dtypes and values."""
    assert sorted(left) == sorted(right)
    different = [k for k in left if left[k].dtype != right[k].dtype or not torch.equal(left[k], right[k])]
    assert not different, f"tensors differ: {different[:5]}"


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


WALL_CLOCK = ("time", "tokens_per_s")  # log.jsonl fields that differ between identical runs


def without_clock(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """log.jsonl records without their wall-clock fields; they must be there in training records."""
    assert all(set(WALL_CLOCK) <= set(r) for r in records if r["kind"] == "train")
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in records]


def without_wall_time(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json without the one field that differs between identical runs."""
    return {k: v for k, v in metrics.items() if k != "train_wall_s"}


class StopAfter:
    """A step hook that interrupts the run (as Ctrl-C would) once step `step` is done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step: int) -> None:
        if step == self.step:
            raise KeyboardInterrupt
