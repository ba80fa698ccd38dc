"""`TrainConfig`: every setting of a fine-tuning run, one dataclass field per CLI flag.

The CLI builds its `dynalora train` flags from these fields (name, type and the `help` in
each field's metadata), so a new field is a new flag with no further code. A YAML file
(`--config run.yaml`) gives values for any fields; flags given on the command line win.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dynalora.adapters.config import ConfigError, check

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
POOLINGS = ("mean", "cls", "pooler")
DEVICES = ("auto", "cpu", "cuda")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its CLI help text."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


C = TypeVar("C", bound="RunConfigMixin")


class RunConfigMixin:
    """Dict/YAML round trips shared by the run configs (TrainConfig, SftConfig); a dataclass mixin."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}; known fields: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, **overrides: Any) -> C:
        """Fields from a YAML mapping, then `overrides` (e.g. the CLI flags) on top."""
        return cls.from_dict({**read_yaml(path), **overrides}, source=str(path))


@dataclass
class TrainConfig(RunConfigMixin):
    """One fine-tuning run of a sequence classifier (GLUE task or your own CSV/JSONL)."""

    task: str = _f("mrpc", "GLUE task (sst2, mrpc, rte, cola, stsb, qnli, ...) or a name for your own data")
    method: str = _f("lora", "what trains: lora, dynamic, rank1, full, head, adapter, bitfit")
    model: str | None = _f(None, "base model folder (a Hugging Face BERT-style encoder); default: the packaged MiniLM")
    data_dir: str | None = _f(None, "folder holding the GLUE task folders (e.g. ../shared/data/glue)")
    output: str = _f("runs/out", "run folder: adapter, metrics.json, log.jsonl, curves.png, checkpoints/")
    epochs: float = _f(3.0, "training epochs (fractions allowed)")
    batch_size: int = _f(32, "examples per micro-batch")
    eval_batch_size: int = _f(64, "examples per evaluation batch")
    lr: float | None = _f(None, "peak learning rate; default: the method's measured default")
    head_lr: float | None = _f(None, "learning rate of the classification head; default: same as lr")
    weight_decay: float = _f(0.01, "AdamW weight decay (never applied to biases and LayerNorm)")
    warmup_ratio: float = _f(0.06, "share of optimizer steps spent warming the learning rate up linearly")
    grad_accum: int = _f(1, "micro-batches per optimizer step (gradient accumulation)")
    max_grad_norm: float | None = _f(1.0, "clip the gradient norm to this; none to disable")
    max_train_samples: int | None = _f(None, "use a random subset of this many training examples")
    max_eval_samples: int | None = _f(None, "use a random subset of this many evaluation examples")
    seed: int = _f(0, "random seed (data order, initialisation, dropout)")
    eval_every: int | None = _f(None, "evaluate every N optimizer steps; default: after every epoch")
    early_stopping_patience: int | None = _f(None, "stop after this many evaluations without improvement")
    max_length: int = _f(128, "truncate inputs to this many tokens")
    pooling: str = _f("mean", "sentence vector for the head: mean (masked mean of tokens), cls, or pooler")
    rank: int = _f(8, "LoRA rank (dynamic: base rank; adapter: bottleneck size)")
    alpha: float = _f(16.0, "LoRA alpha (scaling alpha/rank)")
    dropout: float = _f(0.0, "dropout on the adapter input")
    backbone_dropout: float | None = _f(0.0, "dropout inside the backbone while training; none keeps the model's own")
    head_dropout: float = _f(0.1, "dropout before the classification head")
    target_modules: list[str] | None = _f(None, "modules to adapt (names, or 'all-linear'); default: query and value")
    precision: str = _f("auto", "auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16 or fp16")
    device: str = _f("auto", "auto, cpu or cuda")
    method_options: dict[str, Any] = _f({}, "extra options for the method's config, KEY=VALUE (e.g. beta=0.5)")
    train_file: str | None = _f(None, "your own training data (.csv, .tsv or .jsonl) instead of a GLUE task")
    dev_file: str | None = _f(None, "your own evaluation data, same columns as train_file")
    text_columns: list[str] | None = _f(None, "text column(s) of train_file/dev_file (one or two)")
    label_column: str = _f("label", "label column of train_file/dev_file")
    regression: bool = _f(False, "own data: the label is a number (MSE loss, Pearson/Spearman)")
    checkpoint_every: int | None = _f(None, "also write a resumable checkpoint every N optimizer steps")
    resume: bool = _f(False, "continue the run in --output from its last checkpoint")
    progress: bool = _f(True, "show a progress bar")

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = self.target_modules if self.target_modules == "all-linear" else [self.target_modules]
        if isinstance(self.text_columns, str):
            self.text_columns = [self.text_columns]
        self.method_options = dict(self.method_options or {})
        positive_int = "must be a positive integer"
        for name in ("batch_size", "eval_batch_size", "grad_accum", "max_length", "rank"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value > 0, name, positive_int, value)
        for name in ("max_train_samples", "max_eval_samples", "eval_every", "early_stopping_patience",
                     "checkpoint_every"):
            value = getattr(self, name)
            check(value is None or (isinstance(value, int) and value > 0), name, positive_int + " (or unset)", value)
        check(self.epochs > 0, "epochs", "must be > 0", self.epochs)
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            check(value is None or value > 0, name, "must be > 0", value)
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)", self.warmup_ratio)
        check(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "must be > 0", self.max_grad_norm)
        check(self.alpha > 0, "alpha", "must be > 0", self.alpha)
        for name in ("dropout", "head_dropout"):
            check(0 <= getattr(self, name) < 1, name, "must be in [0, 1)", getattr(self, name))
        check(self.backbone_dropout is None or 0 <= self.backbone_dropout < 1, "backbone_dropout",
              "must be in [0, 1)", self.backbone_dropout)
        check(self.pooling in POOLINGS, "pooling", f"must be one of {POOLINGS}", self.pooling)
        check(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}", self.precision)
        check(self.device in DEVICES, "device", f"must be one of {DEVICES}", self.device)
        from dynalora.training.methods import known_methods

        check(self.method in known_methods(), "method", f"must be one of {known_methods()}", self.method)
        if self.train_file is not None:
            check(self.dev_file is not None, "dev_file", "is needed with train_file", self.dev_file)
            check(bool(self.text_columns) and len(self.text_columns) <= 2, "text_columns",
                  "must name one or two columns of train_file", self.text_columns)
        else:
            from dynalora.data import get_task

            get_task(self.task)  # unknown task names fail here, listing the known ones



def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value, got {type(data).__name__}")
    # YAML keys may be written as on the command line (max-length) or as fields (max_length).
    return {str(k).replace("-", "_"): v for k, v in data.items()}
