"""`TrainConfig`: every setting of a classification fine-tuning run.

The settings all runs share (epochs, learning rate, rank, ...) and their validation live in
`RunConfig` (dynalora.training.run_config); this class adds the classification task, data
and head. Each field is a `dynalora train` flag; `--config run.yaml` gives values for any.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynalora.adapters.config import check
from dynalora.training.run_config import (
    DEVICES,
    PRECISIONS,
    RunConfig,
    override,
    read_yaml,
    setting,
)

POOLINGS = ("mean", "cls", "pooler")
SELECTIONS = ("dev", "split")
# Old names of what moved to run_config (kept so existing imports keep working).
RunConfigMixin = RunConfig
_f = setting
__all__ = ["DEVICES", "POOLINGS", "PRECISIONS", "RunConfigMixin", "TrainConfig", "read_yaml"]


@dataclass
class TrainConfig(RunConfig):
    """One fine-tuning run of a sequence classifier (GLUE task or your own CSV/JSONL)."""

    method: str = override("method", "lora", "what trains: lora, dynamic, rank1, full, head, adapter, bitfit, "
                                              "peft-lora, peft-adalora")
    model: str | None = override("model", None, "base encoder (BERT-style): a local folder or a Hub id "
                                                "(sentence-transformers/all-MiniLM-L6-v2 loads from the packaged "
                                                "copy, offline); default: the packaged MiniLM")
    task: str = setting("mrpc", "GLUE task (sst2, mrpc, rte, cola, stsb, qnli, ...) or a name for your own data")
    data_dir: str | None = setting(None, "folder holding the GLUE task folders (e.g. ../shared/data/glue)")
    head_lr: float | None = setting(None, "learning rate of the classification head; default: same as lr", above=0)
    pooling: str = setting("mean", "sentence vector for the head: mean (masked mean of tokens), cls, or pooler",
                           choices=POOLINGS)
    backbone_dropout: float | None = setting(0.0, "dropout inside the backbone while training; none keeps the "
                                                  "model's own", min=0, below=1)
    head_dropout: float = setting(0.1, "dropout before the classification head", min=0, below=1)
    train_file: str | None = setting(None, "your own training data (.csv, .tsv or .jsonl) instead of a GLUE task")
    dev_file: str | None = setting(None, "your own evaluation data, same columns as train_file")
    text_columns: list[str] | None = setting(None, "text column(s) of train_file/dev_file (one or two; default: "
                                                   "sentence1/sentence2, text, sentence, ... or the columns beside the label)")
    label_column: str = setting("label", "label column of train_file/dev_file")
    regression: bool = setting(False, "own data: the label is a number (MSE loss, Pearson/Spearman)")
    selection: str = setting("dev", "where checkpoints are chosen: dev (GLUE dev, as most scripts do) or split "
                                    "(a fixed stratified slice of train; dev is then evaluated once, at the end)",
                             choices=SELECTIONS)
    min_epochs: float | None = setting(None, "no best model and no early stop before this many epochs "
                                             "(dynamic, rank1 and peft-adalora schedule their rank budgeting to end by then)", above=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.min_epochs is None or self.min_epochs <= self.epochs, "min_epochs", "must be at most epochs",
              self.min_epochs)
        from dynalora.training.methods import known_methods

        check(self.method in known_methods(), "method", f"must be one of {known_methods()}", self.method)
        if self.train_file is not None:
            check(self.dev_file is not None, "dev_file", "is needed with train_file", self.dev_file)
            if not self.text_columns:  # found from the file's columns, as transformers' run_glue does
                from dynalora.data.tables import guess_text_columns

                self.text_columns = guess_text_columns(self.train_file, self.label_column)
            check(bool(self.text_columns) and len(self.text_columns) <= 2, "text_columns",
                  "must name one or two columns of train_file", self.text_columns)
        else:
            from dynalora.data import get_task

            get_task(self.task)  # unknown task names fail here, listing the known ones
