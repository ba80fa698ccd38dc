"""Tokenisation (real MiniLM tokenizer) and the length-bucketing batcher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import minilm_path

from dynalora.data import BucketBatcher, DataError, Example, encode, load_split


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def random_features(n: int, seed: int = 0, regression: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    features = []
    for i in range(n):
        length = int(rng.integers(3, 60))
        ids = [101, *rng.integers(1000, 2000, size=length - 2).tolist(), 102]
        label = float(rng.random()) if regression else i % 2
        features.append({"input_ids": ids, "attention_mask": [1] * length, "labels": label})
    return features


def epoch_order(batcher: BucketBatcher) -> list[int]:
    return [i for batch in batcher for i in batch["index"].tolist()]


# ---------------------------------------------------------------- encode


@pytest.mark.integration
def test_pair_encoding_with_minilm(tokenizer):
    features = encode([Example(("A man sleeps.", "Someone rests."), 1)], tokenizer)
    (feature,) = features
    tokens = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert tokens == ["[CLS]", "a", "man", "sleeps", ".", "[SEP]", "someone", "rests", ".", "[SEP]"]
    assert feature["token_type_ids"] == [0] * 6 + [1] * 4
    assert feature["attention_mask"] == [1] * 10
    assert feature["labels"] == 1


@pytest.mark.integration
def test_truncation_is_longest_first_and_there_is_no_padding(tokenizer):
    short, long = "short one .", " ".join(["word"] * 100)
    (pair,) = encode([Example((short, long), 0)], tokenizer, max_length=16)
    single, tiny = encode([Example((long,), 0), Example(("hi",), 1)], tokenizer, max_length=16)
    assert len(pair["input_ids"]) == 16
    # the long text gave up its tokens; the short one is whole
    assert tokenizer.decode(pair["input_ids"]).startswith("[CLS] short one. [SEP] word")
    assert pair["token_type_ids"].count(0) == 5  # [CLS] short one . [SEP]
    assert len(single["input_ids"]) == 16 and single["input_ids"][-1] == tokenizer.sep_token_id
    assert len(tiny["input_ids"]) == 3  # [CLS] hi [SEP]: not padded to max_length


@pytest.mark.integration
def test_encode_real_sst2_slice(glue_dir, tokenizer):
    examples = load_split("sst2", "dev", glue_dir, max_samples=64)
    features = encode(examples, tokenizer, max_length=32)
    assert [f["labels"] for f in features] == [e.label for e in examples]
    lengths = [len(f["input_ids"]) for f in features]
    assert max(lengths) <= 32 and len(set(lengths)) > 5


class WhitespaceTokenizer:
    """A tokenizer without token_type_ids (like GPT-style ones): one id per word."""

    def __call__(self, first, second=None, truncation=True, max_length=None, padding=False):
        assert second is None and truncation and not padding
        ids = [[len(w) for w in text.split()][:max_length] for text in first]
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}


def test_encode_without_token_type_ids():
    features = encode([Example(("a bb ccc",), 2.5)], WhitespaceTokenizer(), max_length=2)
    assert features == [{"input_ids": [1, 2], "attention_mask": [1, 1], "labels": 2.5}]


def test_encode_rejects_mixed_or_empty_input():
    with pytest.raises(DataError, match="same number of texts"):
        encode([Example(("a",), 0), Example(("a", "b"), 1)], WhitespaceTokenizer())
    with pytest.raises(DataError, match="no examples"):
        encode([], WhitespaceTokenizer())


# ---------------------------------------------------------------- BucketBatcher


def test_every_example_once_per_epoch_and_padding_to_batch_max():
    features = random_features(203)
    batcher = BucketBatcher(features, batch_size=8, shuffle=True, seed=3, pad_token_id=7,
                            bucket_size_multiplier=5)
    assert len(batcher) == 26
    seen = []
    for batch in batcher:
        index = batch["index"].tolist()
        seen += index
        lengths = [len(features[i]["input_ids"]) for i in index]
        assert batch["input_ids"].shape == (len(index), max(lengths))
        assert batch["attention_mask"].sum(dim=1).tolist() == lengths
        for row, i, n in zip(batch["input_ids"].tolist(), index, lengths):
            assert row[:n] == features[i]["input_ids"]
            assert row[n:] == [7] * (len(row) - n)
        assert batch["labels"].dtype == torch.long
        assert batch["labels"].tolist() == [features[i]["labels"] for i in index]
    assert sorted(seen) == list(range(203))


def test_order_is_seeded_and_changes_per_epoch():
    features = random_features(300)
    a = BucketBatcher(features, batch_size=16, shuffle=True, seed=1)
    b = BucketBatcher(features, batch_size=16, shuffle=True, seed=1)
    first = epoch_order(a)
    assert first == epoch_order(b) == epoch_order(a)  # same seed, same epoch: same order
    a.set_epoch(1)
    second = epoch_order(a)
    assert second != first and sorted(second) == sorted(first)
    b.set_epoch(1)
    assert epoch_order(b) == second  # a resumed run at epoch 1 sees the same batches
    assert epoch_order(BucketBatcher(features, batch_size=16, shuffle=True, seed=2)) != first


def test_bucketing_cuts_padding_compared_with_random_batches():
    features = random_features(2000)

    def padding(batcher: BucketBatcher) -> float:
        total = sum(batch["attention_mask"].numel() for batch in batcher)
        return 1 - sum(len(f["input_ids"]) for f in features) / total

    bucketed = padding(BucketBatcher(features, batch_size=32, shuffle=True, bucket_size_multiplier=50))
    unsorted = padding(BucketBatcher(features, batch_size=32, shuffle=True, bucket_size_multiplier=1))
    assert bucketed < 0.1 < unsorted


def test_eval_order_is_stable_and_regression_labels_are_float():
    features = random_features(21, regression=True)
    batcher = BucketBatcher(features, batch_size=4, shuffle=False)
    batcher.set_epoch(5)
    batches = list(batcher)
    assert epoch_order(batcher) == list(range(21))
    assert [len(b["index"]) for b in batches] == [4, 4, 4, 4, 4, 1]
    assert batches[0]["labels"].dtype == torch.float32
    assert batches[0]["labels"].tolist() == pytest.approx([f["labels"] for f in features[:4]])


def test_list_labels_are_padded_with_ignore_index():
    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}]
    batch = next(iter(BucketBatcher(features, batch_size=2, shuffle=False)))
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]


@pytest.mark.parametrize(("features", "kwargs", "message"), [
    ([], {}, "no features"),
    ([{"input_ids": [1]}], {"batch_size": 0}, "batch_size"),
    ([{"input_ids": [1], "labels": 0}, {"input_ids": [1]}], {}, "feature 1 has keys"),
    ([{"ids": [1]}], {}, "input_ids"),
])
def test_batcher_rejects_bad_input(features, kwargs, message):
    with pytest.raises(DataError, match=message):
        BucketBatcher(features, **{"batch_size": 2, "shuffle": True, **kwargs})
