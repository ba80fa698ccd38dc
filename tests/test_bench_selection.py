"""The selection split (data layer), the GLUE selection score, and a run that chooses on the
split: no overlap with dev or the remaining train, stratified, the same for every seed and method."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from training_helpers import make_sst_dir, make_tiny_model, tiny_config

from dynalora.data import Example, load_split
from dynalora.data.selection import (
    SELECTION_CAP,
    selection_indices,
    selection_size,
    split_for_selection,
)
from dynalora.training import TrainConfig, evaluate, train
from dynalora.training.api import run_data
from dynalora.training.metrics import compute_metrics
from dynalora.training.optim import param_groups


def unique_sst_dir(root, n_train=400, n_dev=60):
    """SST-2 layout whose every sentence is unique, with a 70/30 label mix in train."""
    task = root / "SST-2"
    task.mkdir(parents=True)
    train = [f"train sentence {i}\t{int(i % 10 < 7)}" for i in range(n_train)]
    dev = [f"dev sentence {i}\t{i % 2}" for i in range(n_dev)]
    (task / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(train) + "\n")
    (task / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(dev) + "\n")
    return root


def test_selection_split_partitions_train_is_stratified_and_never_touches_dev(tmp_path):
    data = unique_sst_dir(tmp_path)
    full = load_split("sst2", "train", data)
    dev = {e.texts for e in load_split("sst2", "dev", data)}
    rest, chosen = split_for_selection(full, regression=False)
    assert len(chosen) == selection_size(len(full)) == 60  # 15% of 400
    assert sorted(e.texts for e in rest + chosen) == sorted(e.texts for e in full)  # a partition
    assert not {e.texts for e in rest} & {e.texts for e in chosen}
    assert not {e.texts for e in chosen} & dev
    share = Counter(e.label for e in chosen)[1] / len(chosen)
    assert share == pytest.approx(0.7, abs=1 / len(chosen))  # the training set's label mix


def test_selection_split_is_capped_and_fixed_by_the_rows_alone():
    rows = [Example((f"s{i}",), i % 3 == 0) for i in range(20000)]
    assert len(selection_indices(rows, regression=False)) == SELECTION_CAP
    assert selection_indices(rows, False) == selection_indices(list(rows), False)  # no hidden state
    assert selection_size(10) == 5  # tiny data: at most half goes to selection


def test_regression_selection_is_stratified_by_score_bin():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0, 1, 800), rng.uniform(4, 5, 200)])  # 80% low, 20% high
    rows = [Example((f"a{i}", f"b{i}"), float(s)) for i, s in enumerate(scores)]
    _, chosen = split_for_selection(rows, regression=True)
    high = sum(e.label >= 4 for e in chosen) / len(chosen)
    assert len(chosen) == 150 and high == pytest.approx(0.2, abs=0.01)


def test_every_seed_and_method_gets_the_same_rows(tmp_path):
    data = unique_sst_dir(tmp_path)
    splits = []
    for method, seed in (("lora", 0), ("lora", 1), ("dynamic", 3), ("full", 7)):
        config = TrainConfig(task="sst2", method=method, seed=seed, data_dir=str(data), selection="split",
                             max_train_samples=100, max_eval_samples=40)
        _, rest, chosen, dev = run_data(config)
        splits.append([[e.texts for e in part] for part in (rest, chosen, dev)])
    assert all(s == splits[0] for s in splits)
    rest, chosen, dev = splits[0]
    assert len(rest) == 100 and len(dev) == 40 and not set(rest) & set(chosen)


def test_glue_score_is_the_tasks_leaderboard_score():
    labels = np.array([1, 1, 1, 1, 0, 0])
    always_yes = np.tile([0.0, 1.0], (6, 1))  # the majority class: F1 0.8, accuracy 0.667
    mrpc = compute_metrics("mrpc", always_yes, labels)
    assert mrpc["glue"] == pytest.approx((mrpc["accuracy"] + mrpc["f1"]) / 2) and mrpc["glue"] < mrpc["f1"]
    assert compute_metrics("cola", always_yes, labels)["glue"] == 0.0  # MCC of a constant answer
    sts = compute_metrics("stsb", np.array([0.1, 0.5, 0.2, 0.9]), np.array([0.0, 3.0, 1.0, 2.0]))
    assert sts["glue"] == pytest.approx((sts["pearson"] + sts["spearman"]) / 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("selection")
    return make_tiny_model(root / "model"), make_sst_dir(root / "glue", n_train=120)


def test_a_split_run_chooses_on_selection_and_touches_dev_once_at_the_end(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "run"
    metrics = train(tiny_config(model, data, out, method="lora", selection="split", min_epochs=2.0,
                                early_stopping_patience=1))
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    selection = metrics["selection"]
    assert {r["n_examples"] for r in evals} == {selection["n_examples"]} == {32}  # every choice on the split
    assert selection["n_train"] == 88 and metrics["n_examples"] == 48  # dev: all of it, once
    assert metrics["best_epoch"] >= 2.0  # nothing before min_epochs can be chosen
    chosen = max((r for r in evals if r["epoch"] >= 2.0), key=lambda r: r["metrics"]["glue"])
    assert chosen["metrics"] == selection["metrics"]
    assert evaluate(out)["metrics"] == metrics["metrics"]  # the dev figure is the saved model's


def test_adalora_singular_values_get_no_weight_decay_and_a_moderate_orth_penalty(tiny, tmp_path):
    from dynalora.training.classifier import build_classifier
    from dynalora.training.methods import get_method
    from dynalora.training.optim import budget_horizon
    from dynalora.training.peft_methods import ORTH_REG_WEIGHT

    model, data = tiny
    config = tiny_config(model, data, tmp_path, method="peft-adalora", target_modules="all-linear",
                         epochs=10.0, min_epochs=3.0)
    prepared = get_method("peft-adalora").prepare(build_classifier(model, 2, "mean", 0.0), config, 100)
    assert prepared.model.peft_config["default"].orth_reg_weight == ORTH_REG_WEIGHT == 0.1
    assert prepared.model.peft_config["default"].total_step == budget_horizon(config, 100) == 30
    decayed = {id(p) for g in param_groups(prepared.model, None, 1e-3, 1e-3, 0.01) if g["weight_decay"] > 0
               for p in g["params"]}
    singular = [p for n, p in prepared.model.named_parameters() if ".lora_E." in n]
    factors = [p for n, p in prepared.model.named_parameters() if ".lora_A." in n]
    assert singular and not any(id(p) in decayed for p in singular)
    assert all(id(p) in decayed for p in factors)



@pytest.mark.parametrize("method", ["dynamic", "rank1"])
def test_allocation_is_final_before_min_epochs_like_adalora(tiny, tmp_path, method):
    """With early stopping, a checkpoint can be chosen from min_epochs on: every reallocation
    (dynamic) and every pruning step (rank1) happens before then, as AdaLoRA's budget does."""
    model, data = tiny
    config = tiny_config(model, data, tmp_path / "run", method=method, target_modules="all-linear",
                         epochs=6.0, min_epochs=2.0, selection="split")
    metrics = train(config)
    steps_per_epoch = metrics["steps"] / 6
    history = json.loads((tmp_path / "run" / "allocation.json").read_text())
    assert history and max(r["step"] for r in history) <= 2 * steps_per_epoch


REAL_GLUE = Path("/work/shared/data/glue")


@pytest.mark.skipif(not (REAL_GLUE / "MRPC").is_dir(), reason="real GLUE data not on this machine")
def test_real_mrpc_selection_split_sizes_and_no_dev_sentence():
    full = load_split("mrpc", "train", REAL_GLUE)
    rest, chosen = split_for_selection(full, regression=False)
    dev = {e.texts for e in load_split("mrpc", "dev", REAL_GLUE)}
    assert (len(rest), len(chosen)) == (3118, 550) and not {e.texts for e in chosen} & dev
    assert Counter(e.label for e in chosen)[1] == round(550 * 2474 / 3668)
