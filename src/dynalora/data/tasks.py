"""The GLUE task registry: where each task's fields live in the TSV files and on the Hub.

Label indices follow the Hugging Face `glue` dataset, so a model trained from local files and
one trained from the Hub agree on what class 0 means.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynalora.data.base import DataError

CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc", "mcc")
REGRESSION_METRICS = ("pearson", "spearman", "mse")
# (split name, file in the task folder, split on the Hub)
STANDARD_SPLITS = (("train", "train.tsv", "train"), ("dev", "dev.tsv", "validation"))


@dataclass(frozen=True)
class TaskSpec:
    """One task: GLUE's, or a user's own (only name, text_fields and labels are needed then).

    text_fields are the logical field names (those of the Hub dataset). labels are the class
    names in index order (None: regression). metrics / main_metric default to the full set for
    the task kind and accuracy / pearson. The TSV layout is given by file_text_columns /
    file_label_column: header names, or positions when the file has no header (CoLA).
    label_values are the labels as written in the files, in index order (default: labels).
    """

    name: str
    text_fields: tuple[str, ...]
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...] = ()
    main_metric: str = ""
    dir_name: str = ""
    file_text_columns: tuple[str | int, ...] = ()
    file_label_column: str | int = "label"
    label_values: tuple[str, ...] | None = None
    has_header: bool = True
    n_columns: int | None = None  # fixed column count of a headerless file
    aliases: tuple[str, ...] = ()
    splits: tuple[tuple[str, str, str], ...] = STANDARD_SPLITS

    def __post_init__(self) -> None:
        # frozen: defaults that depend on other fields are filled in with object.__setattr__
        fill = {
            "metrics": self.metrics or (REGRESSION_METRICS if self.labels is None else CLASSIFICATION_METRICS),
            "main_metric": self.main_metric or ("pearson" if self.labels is None else "accuracy"),
            "dir_name": self.dir_name or self.name,
            "file_text_columns": self.file_text_columns or self.text_fields,
            "label_values": self.label_values or self.labels,
        }
        for key, value in fill.items():
            object.__setattr__(self, key, value)
        if not 1 <= len(self.text_fields) <= 2:
            raise DataError(f"task {self.name!r}: text_fields must hold one or two names, got {self.text_fields}")
        if self.labels is not None and len(self.labels) < 2:
            raise DataError(f"task {self.name!r}: a classification task needs at least two labels")
        if self.main_metric not in self.metrics:
            raise DataError(f"task {self.name!r}: main_metric {self.main_metric!r} is not one of {self.metrics}")

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def hub_name(self) -> str:
        return self.name

    def split_source(self, split: str) -> tuple[str, str]:
        """(file name, Hub split) for a split name; unknown split -> DataError listing the valid ones."""
        for name, file_name, hub_split in self.splits:
            if name == split:
                return file_name, hub_split
        known = ", ".join(name for name, _, _ in self.splits)
        raise DataError(f"task {self.name!r} has no split {split!r}; use one of: {known}")


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", ("sentence",), ("unacceptable", "acceptable"), main_metric="mcc", dir_name="CoLA",
                 file_text_columns=(3,), file_label_column=1, label_values=BINARY,
                 has_header=False, n_columns=4),
        TaskSpec("sst2", ("sentence",), ("negative", "positive"), dir_name="SST-2",
                 label_values=BINARY, aliases=("sst",)),
        TaskSpec("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), main_metric="f1",
                 dir_name="MRPC", file_text_columns=("#1 String", "#2 String"),
                 file_label_column="Quality", label_values=BINARY),
        TaskSpec("stsb", ("sentence1", "sentence2"), None, dir_name="STS-B", file_label_column="score",
                 aliases=("sts",)),
        TaskSpec("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), main_metric="f1",
                 dir_name="QQP", file_label_column="is_duplicate", label_values=BINARY),
        TaskSpec("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                 dir_name="MNLI", file_text_columns=("sentence1", "sentence2"),
                 file_label_column="gold_label",
                 splits=(("train", "train.tsv", "train"),
                         ("dev", "dev_matched.tsv", "validation_matched"),
                         ("dev_matched", "dev_matched.tsv", "validation_matched"),
                         ("dev_mismatched", "dev_mismatched.tsv", "validation_mismatched"))),
        TaskSpec("qnli", ("question", "sentence"), NLI2, dir_name="QNLI"),
        TaskSpec("rte", ("sentence1", "sentence2"), NLI2, dir_name="RTE"),
        TaskSpec("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"),
                 dir_name="WNLI", label_values=BINARY),
    )
}


def normalize_name(name: str) -> str:
    """Lower case without separators, so "SST-2", "sst_2" and "sst2" are the same name."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The task for a name or alias (case and "-"/"_" ignored); unknown -> DataError."""
    if isinstance(name, TaskSpec):
        return name
    wanted = normalize_name(name)
    for spec in TASKS.values():
        if wanted in {normalize_name(n) for n in (spec.name, spec.dir_name, *spec.aliases)}:
            return spec
    raise DataError(f"unknown GLUE task {name!r}; known tasks: {', '.join(TASKS)}")
