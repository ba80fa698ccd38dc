"""Scoring a table of new text with a trained run: a prediction and probabilities per row, and
the task's metrics when the table has labels (`dynalora predict`, `dynalora eval --dev-file`).

The columns default to those the run was trained with: `text_columns`/`label_column` for a
run on its own files, the task's field names (e.g. sentence1, sentence2) and `label` for a
GLUE run. The rows are scored with the same tokenisation, batches and precision as
`evaluate`, so a labelled file gives exactly the metrics `dynalora eval` reports on it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from dynalora.data import BucketBatcher, DataError, Example, TaskSpec, encode, get_task, load_table
from dynalora.data.base import RowProblems
from dynalora.data.tables import (
    TABLE_SUFFIXES,
    delimited_file_rows,
    json_records,
    read_csv,
    read_tsv,
    record_rows,
)
from dynalora.files import atomic_path
from dynalora.training.api import load_trained, own_task
from dynalora.training.evaluation import predict
from dynalora.training.metrics import compute_metrics
from dynalora.training.optim import pick_dtype

OUTPUT_SUFFIXES = (".jsonl", ".csv", ".tsv")


def run_task(meta: dict[str, Any]) -> tuple[TaskSpec, tuple[str, ...] | None]:
    """The run's task and the label values as they are written in files (None: regression)."""
    if meta.get("dev_file") or meta.get("text_columns"):
        labels = tuple(meta["labels"]) if meta["labels"] else None
        return own_task(meta["task"], meta["text_columns"], labels), labels
    spec = get_task(meta["task"])
    return spec, (tuple(spec.label_values or spec.labels) if spec.labels else None)


def default_columns(meta: dict[str, Any]) -> tuple[list[str], str]:
    if meta.get("text_columns"):
        return list(meta["text_columns"]), meta.get("label_column") or "label"
    return list(meta["text_fields"]), "label"


def has_column(path: Path, column: str) -> bool:
    """Whether the table has `column` (a header name, or a key of its first JSON record)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records = json_records(path, RowProblems(path))
        return bool(records) and isinstance(records[0][1], dict) and column in records[0][1]
    header = read_csv(path)[0] if suffix == ".csv" else read_tsv(path, has_header=True)[0]
    return column in (header or [])


def read_unlabelled(path: Path, text_columns: list[str], regression: bool) -> list[Example]:
    """Rows of texts only. The table readers expect a label column last; the first text column
    stands in for it and its value is dropped (every example gets a placeholder label)."""
    problems = RowProblems(path)
    columns = [*text_columns, text_columns[0]]
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = record_rows(json_records(path, problems), columns, problems)
    else:
        rows = delimited_file_rows(path, columns, problems)
    placeholder = 0.0 if regression else 0
    return problems.finish([Example(row.texts, placeholder) for row in rows])


def score_file(adapter_dir: str | Path, path: str | Path, text_columns: list[str] | None = None,
               label_column: str | None = None, base_model: str | Path | None = None,
               device: str = "auto") -> dict[str, Any]:
    """{"n_examples", "labelled", "predictions": one dict per row, "metrics" (labelled only)}."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")
    model, tokenizer, meta = load_trained(adapter_dir, base_model, device)
    spec, file_labels = run_task(meta)
    default_text, default_label = default_columns(meta)
    text_columns = list(text_columns or default_text)
    if len(text_columns) != len(meta["text_fields"]):
        raise DataError(f"the run reads {len(meta['text_fields'])} text column(s) per example; "
                        f"--text-columns names {len(text_columns)}: {text_columns}")
    label_column = label_column or default_label
    labelled = has_column(path, label_column)
    if labelled:
        examples, _ = load_table(path, text_columns, label_column, labels=file_labels, regression=spec.is_regression)
    else:
        examples = read_unlabelled(path, text_columns, spec.is_regression)
    batches = BucketBatcher(encode(examples, tokenizer, meta["max_length"]), meta["eval_batch_size"],
                            shuffle=False, pad_token_id=tokenizer.pad_token_id or 0)
    where = next(model.parameters()).device
    logits, labels = predict(model, batches, where, pick_dtype(meta["precision"], where))
    result: dict[str, Any] = {"file": str(path), "n_examples": len(examples), "labelled": labelled,
                              "predictions": row_predictions(logits, spec)}
    if labelled:
        result["metrics"] = compute_metrics(spec, logits, labels)
    return result


def row_predictions(logits: np.ndarray, spec: TaskSpec) -> list[dict[str, Any]]:
    if spec.is_regression:
        return [{"prediction": float(row[0])} for row in logits]
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    names = list(spec.labels or [])
    return [{"prediction": names[int(p.argmax())],
             "probabilities": {name: round(float(v), 6) for name, v in zip(names, p)}} for p in probs]


def write_predictions(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """One line per row: JSON Lines, or a CSV/TSV with a column per label's probability."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise DataError(f"--output {path}: unsupported file type {suffix!r}; use one of {', '.join(OUTPUT_SUFFIXES)}")
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        if suffix == ".jsonl":
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            names = list(rows[0].get("probabilities", {})) if rows else []
            writer = csv.writer(handle, delimiter="," if suffix == ".csv" else "\t")
            writer.writerow(["prediction", *(f"p_{n}" for n in names)])
            for row in rows:
                writer.writerow([row["prediction"], *(row["probabilities"][n] for n in names)])
    return path
