"""Builders shared by the training and CLI tests: a tiny BERT folder with its own tokenizer,
and a tiny sentiment task in the GLUE SST-2 layout (and as CSV files)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

GOOD = ["good", "great", "fine", "nice", "happy"]
BAD = ["bad", "awful", "poor", "sad", "ugly"]
FILLER = ["the", "a", "movie", "film", "was", "is", "very", "plot", "actor", "story", "quite", "really"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT saved with a word-level tokenizer over the task's words."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + GOOD + BAD + FILLER
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertModel(config).save_pretrained(folder)
    return folder


def sentences(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [*rng.sample(FILLER, 4), rng.choice(GOOD if label else BAD)]
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


def make_csv_pair(root: Path, n_train: int = 64, n_dev: int = 32) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n, seed in (("train", n_train, 3), ("dev", n_dev, 4)):
        path = root / f"{name}.csv"
        path.write_text("text,verdict\n" + "".join(f"{s},{'pos' if y else 'neg'}\n" for s, y in sentences(n, seed)))
        paths.append(path)
    return paths[0], paths[1]
