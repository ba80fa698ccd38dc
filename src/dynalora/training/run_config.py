"""`RunConfig`: the settings every fine-tuning run shares, declared and validated once.

`TrainConfig` (classification) and `SftConfig` (instruction tuning) extend it with their own
fields only. The CLI builds one flag per field (name, type and the `help` in its metadata),
so a new field is a new flag with no further code; a YAML file gives values for any field.

Validation happens here, for every field of every run config, from the field's type hint:
YAML hands over "1e-4" as a string and `true` as a boolean, so values are coerced (a number
written as a string becomes the number) or refused with a one-line `ConfigError` naming the
field (a boolean is never an integer, a string is never a boolean, NaN and infinities are
never numbers). Ranges come from each field's metadata (`positive`, `above`, `min`, `max`,
`below`, `choices`), so a subclass declares a bound beside its field instead of in code.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dynalora.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")  # dynalora.training.tracking
R = TypeVar("R", bound="RunConfig")

# The names users bring from transformers' TrainingArguments, PEFT and LLaMA-Factory, for the
# same settings as our fields: accepted in YAML files and as flags (`--learning_rate` or
# `--learning-rate`), mapped here and nowhere else. An alias may name a field only some
# run configs have (max_seq_length: SFT's and classification's max_length alike).
ALIASES: dict[str, str] = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "lora_r": "rank",
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "output_dir": "output",
    "model_name_or_path": "model",
    "max_seq_length": "max_length",
    "cutoff_len": "max_length",
    "eval_steps": "eval_every",
    "save_steps": "checkpoint_every",
    "max_samples": "max_train_samples",
    "dataset_dir": "data_dir",
}


def resolve_aliases(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` with alias keys renamed to our field names; an alias and its field both given
    with different values is an error naming both."""
    resolved: dict[str, Any] = {}
    for key, value in data.items():
        name = ALIASES.get(key, key)
        if name in resolved and resolved[name] != value:
            raise ConfigError(f"{source}: {key}={value!r} and {name}={resolved[name]!r} set the same thing; "
                              "give one of them")
        resolved[name] = value
    return resolved


def setting(default: Any, help: str, **bounds: Any) -> Any:
    """A dataclass field carrying its CLI help text and its bounds (see the module doc)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **bounds})
    return field(default=default, metadata={"help": help, **bounds})


def override(name: str, default: Any, help: str | None = None) -> Any:
    """A `RunConfig` field with another default (and help) in a subclass; bounds are kept."""
    metadata = dict(RunConfig.__dataclass_fields__[name].metadata)
    return setting(default, help or metadata.pop("help"), **{k: v for k, v in metadata.items() if k != "help"})


# -- coercion by type hint -------------------------------------------------------------------
def _fail(name: str, value: Any, expected: str) -> typing.NoReturn:
    raise ConfigError(f"{name}={value!r}: must be {expected}")


def coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` as the type `hint` names, or a ConfigError naming the field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return coerce(name, value, option)
            except ConfigError:
                pass
        return coerce(name, value, options[-1])
    if hint is Any:
        return value
    if hint is bool:
        # Only a real boolean: YAML's "false" in quotes is a (true) string, 1 is a count.
        return value if isinstance(value, bool) else _fail(name, value, "true or false")
    if hint is int:
        return _to_int(name, value)
    if hint is float:
        return _to_float(name, value)
    if hint is str:
        return value if isinstance(value, str) else _fail(name, value, "a string")
    if origin is list:
        if isinstance(value, str):  # `target_modules: query` means the one-name list
            value = [value]
        if not isinstance(value, (list, tuple)):
            _fail(name, value, "a list")
        return [coerce(f"{name}[{i}]", v, args[0] if args else Any) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            _fail(name, value, "a mapping of KEY: VALUE")
        key_hint, value_hint = args or (Any, Any)
        return {coerce(f"{name} key", k, key_hint): coerce(f"{name}[{k!r}]", v, value_hint)
                for k, v in value.items()}
    raise TypeError(f"{name}: no coercion for the type {hint!r}")  # a new field type: teach coerce()


def _to_int(name: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    _fail(name, value, "an integer")


def _to_float(name: str, value: Any) -> float:
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            _fail(name, value, "a number")
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        _fail(name, value, "a number")
    if not math.isfinite(number):
        _fail(name, value, "a finite number")
    return float(number)


def check_bounds(name: str, value: Any, bounds: dict[str, Any], given: Any) -> None:
    """The range rules of a field's metadata for the coerced `value` (the message shows the
    value as `given`); None (unset) passes them all."""
    if value is None:
        return
    if bounds.get("positive") and value <= 0:
        _fail(name, given, "a positive integer" + (" (or unset)" if bounds.get("optional") else ""))
    if "min" in bounds and value < bounds["min"]:
        _fail(name, given, f">= {bounds['min']}")
    if "max" in bounds and value > bounds["max"]:
        _fail(name, given, f"<= {bounds['max']}")
    if "above" in bounds and value <= bounds["above"]:
        _fail(name, given, f"> {bounds['above']}")
    if "below" in bounds and value >= bounds["below"]:
        _fail(name, given, f"in [{bounds.get('min', 0)}, {bounds['below']})")
    if "choices" in bounds and value not in bounds["choices"]:
        _fail(name, given, f"one of {tuple(bounds['choices'])}")


# -- the shared fields -----------------------------------------------------------------------
@dataclass
class RunConfig:
    """The settings every run has; see `TrainConfig` and `SftConfig` for the rest."""

    method: str = setting("lora", "what trains (see the task's methods)")
    model: str | None = setting(None, "base model folder; default: the packaged one")
    output: str = setting("runs/out", "run folder: adapter, metrics.json, log.jsonl, curves.png, checkpoints/")
    epochs: float = setting(3.0, "training epochs (fractions allowed)", above=0)
    batch_size: int = setting(32, "examples per micro-batch", positive=True)
    eval_batch_size: int = setting(64, "examples per evaluation batch", positive=True)
    lr: float | None = setting(None, "peak learning rate; default: the method's default", above=0)
    weight_decay: float = setting(0.01, "AdamW weight decay (never applied to biases and LayerNorm)", min=0)
    warmup_ratio: float = setting(0.06, "share of optimizer steps spent warming the learning rate up linearly",
                                  min=0, below=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step (gradient accumulation)", positive=True)
    max_grad_norm: float | None = setting(1.0, "clip the gradient norm to this; none to disable", above=0)
    max_train_samples: int | None = setting(None, "use a random subset of this many training examples",
                                            positive=True, optional=True)
    max_eval_samples: int | None = setting(None, "use a random subset of this many evaluation examples",
                                           positive=True, optional=True)
    seed: int = setting(0, "random seed (data order, subsets, initialisation, dropout)")
    eval_every: int | None = setting(None, "evaluate every N optimizer steps; default: after every epoch",
                                     positive=True, optional=True)
    early_stopping_patience: int | None = setting(None, "stop after this many evaluations without improvement",
                                                  positive=True, optional=True)
    max_length: int = setting(128, "truncate inputs to this many tokens", positive=True)
    rank: int = setting(8, "LoRA rank (dynamic: base rank; adapter: bottleneck size)", positive=True)
    alpha: float = setting(16.0, "LoRA alpha (scaling alpha/rank)", above=0)
    dropout: float = setting(0.0, "dropout on the adapter input", min=0, below=1)
    target_modules: list[str] | None = setting(None, "modules to adapt (names, or 'all-linear'); default: the "
                                                     "model's attention projections")
    precision: str = setting("auto", "auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16 or fp16", choices=PRECISIONS)
    device: str = setting("auto", "auto, cpu or cuda", choices=DEVICES)
    method_options: dict[str, Any] = setting({}, "extra options for the method's config, KEY=VALUE (e.g. beta=0.5)")
    checkpoint_every: int | None = setting(None, "also write a resumable checkpoint every N optimizer steps",
                                           positive=True, optional=True)
    max_skipped_share: float = setting(0.1, "stop when more than this share of a data file's rows are malformed "
                                            "(fewer are skipped with a warning); 1 never stops", min=0, max=1)
    resume: bool = setting(False, "continue the run in --output from its last checkpoint")
    overwrite: bool = setting(False, "replace the results of an earlier run in --output (default: refuse to "
                                     "mix two runs in one folder)")
    progress: bool = setting(True, "show a progress bar (on a terminal; elsewhere one line per --logging-steps)")
    logging_steps: int = setting(20, "without the progress bar (output not a terminal, or --no-progress), print "
                                     "a one-line training record every N optimizer steps", positive=True)
    report_to: str = setting("none", "also send the log to a tracker: tensorboard (<output>/runs), wandb "
                                     "(offline unless WANDB_MODE says otherwise) or mlflow (<output>/mlruns "
                                     "unless MLFLOW_TRACKING_URI is set)", choices=REPORT_TO)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            given = getattr(self, f.name)
            value = coerce(f.name, given, hints[f.name])
            check_bounds(f.name, value, dict(f.metadata), given)
            setattr(self, f.name, value)
        if self.target_modules == ["all-linear"]:  # the keyword, not a module named so
            self.target_modules = "all-linear"  # type: ignore[assignment]

    # -- dicts and YAML --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: R, **changes: Any) -> R:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any], source: str = "config") -> R:
        data = resolve_aliases(data, source)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}; known fields: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls: type[R], path: str | Path, **overrides: Any) -> R:
        """Fields from a YAML mapping, then `overrides` (e.g. the CLI flags) on top;
        `method_options` merge key by key."""
        data = resolve_aliases(read_yaml(path), str(path))
        if isinstance(overrides.get("method_options"), dict) and isinstance(data.get("method_options"), dict):
            overrides["method_options"] = {**data["method_options"], **overrides["method_options"]}
        return cls.from_dict({**data, **overrides}, source=str(path))


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
