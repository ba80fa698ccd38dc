"""Metrics against values worked out by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynalora.data import get_task
from dynalora.training.metrics import compute_metrics, main_metric


def logits_for(predicted: list[int], num_labels: int = 2) -> np.ndarray:
    """Logits whose argmax is `predicted` (the class gets +2, others 0)."""
    logits = np.zeros((len(predicted), num_labels))
    logits[np.arange(len(predicted)), predicted] = 2.0
    return logits


def test_binary_metrics_from_a_known_confusion_matrix():
    # TP=3, FN=2, FP=1, TN=4
    labels = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    predicted = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    m = compute_metrics("mrpc", logits_for(predicted), np.array(labels))
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    assert m["mcc"] == pytest.approx((3 * 4 - 1 * 2) / math.sqrt(4 * 5 * 5 * 6))
    assert m["main"] == m["f1"]  # MRPC is judged by F1


def test_binary_auc_ranks_positive_class_probability():
    # positive-class margins 3, 1, -1, -2 for labels 1, 0, 1, 0: pairs (pos, neg) ordered right:
    # (3>1), (3>-2), (-1>-2) but not (-1<1)  ->  AUC = 3/4
    logits = np.array([[0, 3], [0, 1], [0, -1], [0, -2]], dtype=float)
    labels = np.array([1, 0, 1, 0])
    assert compute_metrics("sst2", logits, labels)["roc_auc"] == pytest.approx(0.75)
    assert compute_metrics("sst2", logits + 5.0, labels)["roc_auc"] == pytest.approx(0.75)
    assert compute_metrics("sst2", logits[:, ::-1], labels)["roc_auc"] == pytest.approx(0.25)


def test_multiclass_metrics_are_macro_averaged():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = [0, 1, 1, 1, 2, 0]
    m = compute_metrics("mnli", logits_for(predicted, 3), labels)
    # per class precision 1/2, 2/3, 1; recall 1/2, 1, 1/2
    precision = (1 / 2 + 2 / 3 + 1) / 3
    recall = (1 / 2 + 1 + 1 / 2) / 3
    f1 = (1 / 2 + 2 * (2 / 3) / (2 / 3 + 1) + 2 * 0.5 / 1.5) / 3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(precision)
    assert m["recall"] == pytest.approx(recall)
    assert m["f1"] == pytest.approx(f1)
    assert 0.5 < m["roc_auc"] <= 1.0
    assert m["main"] == m["accuracy"]


def test_perfect_multiclass_scores_have_auc_one():
    labels = np.array([0, 1, 2, 0, 1, 2])
    m = compute_metrics("mnli", logits_for(labels.tolist(), 3), labels)
    assert m["accuracy"] == m["f1"] == m["roc_auc"] == m["mcc"] == pytest.approx(1.0)


def test_cola_main_metric_is_mcc():
    labels = np.array([1, 0, 1, 0])
    m = compute_metrics("cola", logits_for([1, 1, 1, 0]), labels)
    # TP=2, FN=0, FP=1, TN=1
    assert m["main"] == m["mcc"] == pytest.approx((2 * 1 - 1 * 0) / math.sqrt(3 * 2 * 1 * 2))


def test_regression_metrics_by_hand():
    # x=[1,2,3], y=[1,3,2]: deviations (-1,0,1) and (-1,1,0): r = 1 / sqrt(2*2) = 0.5; same ranks
    m = compute_metrics("stsb", np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))
    assert m["pearson"] == pytest.approx(0.5)
    assert m["spearman"] == pytest.approx(0.5)
    assert m["mse"] == pytest.approx(2 / 3)
    assert m["main"] == m["pearson"]
    assert m["pearson_spearman_avg"] == pytest.approx(0.5)


def test_spearman_ignores_scale_and_column_vectors_are_accepted():
    predictions = np.array([[1.0], [2.0], [3.0], [100.0]])
    m = compute_metrics("stsb", predictions, np.array([1.0, 2.0, 3.0, 4.0]))
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] < 0.9


def test_undefined_metrics_are_nan_not_errors():
    m = compute_metrics("sst2", logits_for([1, 0, 1]), np.array([1, 1, 1]))  # one class only
    assert math.isnan(m["roc_auc"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    r = compute_metrics("stsb", np.array([2.0, 2.0, 2.0]), np.array([1.0, 2.0, 3.0]))
    assert math.isnan(r["pearson"]) and math.isnan(r["spearman"]) and math.isnan(r["main"])
    assert r["mse"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(("task", "predictions", "labels", "message"), [
    ("sst2", np.zeros(3), np.array([0, 1, 0]), r"shape \(n, 2\)"),
    ("sst2", np.zeros((2, 2)), np.array([0, 1, 0]), "2 predictions for 3 labels"),
    ("sst2", np.zeros((2, 2)), np.array([0, 2]), r"labels must lie in \[0, 2\)"),
    ("stsb", np.zeros((3, 2)), np.zeros(3), r"shape \(n,\) or \(n, 1\)"),
    ("stsb", np.zeros(0), np.zeros(0), "non-empty"),
])
def test_bad_shapes_are_errors(task, predictions, labels, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(task, predictions, labels)


def test_main_metric_follows_glue():
    assert [main_metric(n) for n in ("CoLA", "STS-B", "mrpc", "sst2", "rte")] == [
        "mcc", "pearson", "f1", "accuracy", "accuracy"]
    assert main_metric(get_task("qqp")) == "f1"
