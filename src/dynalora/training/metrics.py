"""Evaluation metrics for classification and regression tasks, GLUE conventions included.

Classification takes raw logits. F1 / precision / recall are binary (positive class = index
1) for two classes and macro-averaged otherwise; ROC AUC uses softmax probabilities (the
positive-class column for two classes, macro one-vs-rest otherwise). A metric that is
undefined for the inputs (AUC with a single class present, correlation of a constant) is
NaN rather than an exception, so one odd evaluation batch cannot end a run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats
from scipy.special import softmax
from sklearn import metrics as skm

from dynalora.data.tasks import TaskSpec, get_task


def main_metric(task: str | TaskSpec) -> str:
    """The metric a task is judged by (GLUE: CoLA mcc, STS-B pearson, MRPC/QQP f1, else accuracy)."""
    return get_task(task).main_metric


def compute_metrics(task: str | TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All metrics of the task kind, plus "main" (the task's main metric) and "glue" (its GLUE score)."""
    spec = get_task(task)
    predictions = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(labels)
    n = labels.shape[0] if labels.ndim else 0
    if labels.ndim != 1 or n == 0:
        raise ValueError(f"labels must be a non-empty 1-d array, got shape {labels.shape}")
    if predictions.shape[0] != n:
        raise ValueError(f"{predictions.shape[0]} predictions for {n} labels")
    if spec.is_regression:
        result = regression_metrics(predictions, labels.astype(np.float64))
    else:
        result = classification_metrics(predictions, labels.astype(np.int64), spec.num_labels)
    result["main"] = result[spec.main_metric]
    result["glue"] = glue_score(spec, result)
    return result


def glue_score(task: str | TaskSpec, metrics: dict[str, float]) -> float:
    """The task's score on the GLUE leaderboard: the mean of its official metrics.

    MRPC / QQP: mean of accuracy and F1; STS-B (any regression): mean of Pearson and
    Spearman; CoLA: MCC; the others: accuracy. Checkpoints are chosen on this score: F1
    alone rewards predicting the majority class (MRPC's "always equivalent" scores F1 0.81).
    """
    spec = get_task(task)
    if spec.is_regression:
        return (metrics["pearson"] + metrics["spearman"]) / 2
    if spec.main_metric == "f1":
        return (metrics["accuracy"] + metrics["f1"]) / 2
    if spec.main_metric == "mcc":
        return metrics["mcc"]
    return metrics["accuracy"]


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    if logits.ndim != 2 or logits.shape[1] != num_labels:
        raise ValueError(f"expected logits of shape (n, {num_labels}), got {logits.shape}")
    if labels.min() < 0 or labels.max() >= num_labels:
        raise ValueError(f"labels must lie in [0, {num_labels}); found {labels.min()}..{labels.max()}")
    predicted = logits.argmax(axis=1)
    probs = softmax(logits, axis=1)
    average = "binary" if num_labels == 2 else "macro"
    every_class = list(range(num_labels))
    prf = {"average": average, "zero_division": 0}
    if average == "macro":
        prf["labels"] = every_class
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "f1": float(skm.f1_score(labels, predicted, **prf)),
        "precision": float(skm.precision_score(labels, predicted, **prf)),
        "recall": float(skm.recall_score(labels, predicted, **prf)),
        "roc_auc": undefined_as_nan(lambda: roc_auc(labels, probs)),
        "mcc": float(skm.matthews_corrcoef(labels, predicted)),
    }


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    if probs.shape[1] == 2:
        return skm.roc_auc_score(labels, probs[:, 1])
    return skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro",
                             labels=list(range(probs.shape[1])))


def regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    if predictions.ndim != 1:
        raise ValueError(f"expected scores of shape (n,) or (n, 1), got {predictions.shape}")
    pearson = undefined_as_nan(lambda: stats.pearsonr(predictions, labels)[0])
    spearman = undefined_as_nan(lambda: stats.spearmanr(predictions, labels)[0])
    return {
        "pearson": pearson,
        "spearman": spearman,
        "pearson_spearman_avg": (pearson + spearman) / 2,
        "mse": float(np.mean((predictions - labels) ** 2)),
    }


def undefined_as_nan(metric: Callable[[], float]) -> float:
    """The metric's value, or NaN where it is undefined (sklearn raises, scipy warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = float(metric())
        except ValueError:
            return math.nan
    return value
