"""Adapter configurations as dataclasses: validated on creation, saved as JSON.

Each method has its own config class (`LoraConfig` here; dynamic LoRA and Rank-1 Sum LoRA
extend it in `dynalora.allocation`). A class registers itself under its `method` name so a
saved config comes back as the class it was written from.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dynalora.errors import ConfigError

CONFIG_CLASSES: dict[str, type[LoraConfig]] = {}
# PEFT's argument names that mean the same as ours (LoraConfig(lora_alpha=16) is alpha=16).
PEFT_ALIASES = {"lora_alpha": "alpha", "lora_dropout": "dropout"}
TASK_TYPES = ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS", "CAUSAL_LM", "SEQ_2_SEQ_LM", "FEATURE_EXTRACTION")

# Default targets per architecture (the attention query and value projections, as in the
# LoRA paper), used when `target_modules` is not given.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
    "opt": ["q_proj", "v_proj"],
}


def check(condition: bool, field_name: str, message: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{field_name}={value!r}: {message}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number (YAML reads "1e-4" as a string: that is caught here, not in a comparison)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_regex(pattern: str, field_name: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{field_name}={pattern!r}: not a valid regular expression ({err})") from None


@dataclass
class LoraConfig:
    """Plain LoRA: `h = W0 x + s * B A x` on the chosen modules.

    target_modules: a list of module names (a module matches when its full name equals an
        entry or ends with "." + entry), a regex string matched against the full name, or
        "all-linear". None picks the architecture's default (query/value projections).
    exclude_modules: modules left out of target_modules' choice: names (an entry that excludes
        nothing is warned about: a typo) or a regex string, as in PEFT.
    modules_to_save: modules trained in full and saved with the adapter (e.g. the
        classification head), matched like a target_modules list; one name may be a string.
    "all-linear" takes every linear layer except the output layers (lm_head, a classifier or
        score head) and, unlike PEFT, any module inside a head: a path through `lm_head`,
        `classifier`, `score`, `qa_outputs`, `cls` or `pooler` (HEAD_NAMES in inject.py). alpha defaults to 16 (PEFT: 8).
    rank_pattern / alpha_pattern: per-layer overrides; as in PEFT, a key is a regex matched
        against the full module name or a dotted suffix of it.
    task_type: as in PEFT, "SEQ_CLS" / "TOKEN_CLS" also train the task head (`classifier` or
        `score`), "QUESTION_ANS" trains `qa_outputs`; "CAUSAL_LM" and the others add nothing.
    lora_alpha / lora_dropout: PEFT's names for alpha / dropout, accepted so PEFT code runs
        unchanged; they are folded into alpha / dropout and never saved.
    """

    method: ClassVar[str] = "lora"

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    init: str = "kaiming"
    gating: str = "none"
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    task_type: str | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CONFIG_CLASSES[cls.method] = cls

    def __post_init__(self) -> None:
        for alias, name in PEFT_ALIASES.items():
            value = getattr(self, alias)
            if value is not None:
                default = type(self).__dataclass_fields__[name].default
                check(getattr(self, name) in (default, value), alias, f"contradicts {name}={getattr(self, name)!r}; "
                      "give one of the two", value)
                setattr(self, name, value)
                setattr(self, alias, None)
        check(self.task_type is None or self.task_type in TASK_TYPES, "task_type", f"must be one of {TASK_TYPES}",
              self.task_type)
        check(is_int(self.r) and self.r > 0, "r", "must be a positive integer", self.r)
        check(is_number(self.alpha) and self.alpha > 0, "alpha", "must be a number > 0", self.alpha)
        check(is_number(self.dropout) and 0.0 <= self.dropout < 1.0, "dropout", "must be a number in [0, 1)", self.dropout)
        check(self.init in ("kaiming", "gaussian"), "init", "must be 'kaiming' or 'gaussian'", self.init)
        check(self.gating in ("none", "scalar", "input"), "gating", "must be 'none', 'scalar' or 'input'", self.gating)
        check(isinstance(self.use_rslora, bool), "use_rslora", "must be true or false", self.use_rslora)
        self.check_module_lists()
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            check_regex(self.target_modules, "target_modules")
        for name in ("rank_pattern", "alpha_pattern"):
            if getattr(self, name) is None:  # a saved `null`, or PEFT code passing None
                setattr(self, name, {})
            check(isinstance(getattr(self, name), dict), name, "must be a mapping of module-name regex to value "
                  """(on the command line as JSON: '{"query": 4}')""", getattr(self, name))
            for key in getattr(self, name):
                check_regex(key, f"{name} key")
        for key, r in self.rank_pattern.items():
            check(is_int(r) and r >= 0, f"rank_pattern[{key!r}]", "must be an integer >= 0", r)
        for key, a in self.alpha_pattern.items():
            check(is_number(a) and a > 0, f"alpha_pattern[{key!r}]", "must be a number > 0", a)

    def check_module_lists(self) -> None:
        """target_modules / exclude_modules: a list of names or one regex string;
        modules_to_save: a list of names, or one name. Tuples become lists."""
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        for name in ("target_modules", "exclude_modules", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, name, value)
            ok = value is None or (isinstance(value, str) and name != "modules_to_save") or (
                isinstance(value, list) and all(isinstance(v, str) for v in value))
            what = "a list of module names" if name == "modules_to_save" else "a list of module names or one regex string"
            check(ok, name, f"must be {what}", value)

    def scaling_for(self, r: int, alpha: float | None = None) -> float:
        """alpha/r (or rsLoRA's alpha/sqrt(r)); fixed per adapter at creation.

        A layer created with rank 0 adds nothing, but dynamic allocation may grow it later:
        it gets the scaling of the global rank `self.r`, so grown components count like the
        others' instead of being multiplied by 0 forever.
        """
        alpha = self.alpha if alpha is None else alpha
        r = r if r > 0 else self.r
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in PEFT_ALIASES}
        return {"method": self.method, **values}

    def replace(self, **changes: Any) -> LoraConfig:
        return dataclasses.replace(self, **changes)


CONFIG_CLASSES["lora"] = LoraConfig


# Fields a training run fills from its own settings (--rank, --alpha, ...), not method_options.
RUN_SETTINGS = ("r", "alpha", "dropout", "target_modules", "modules_to_save")


def method_option_names(cls: type[LoraConfig]) -> list[str]:
    """The fields of adapter config `cls` a run may set through `method_options`."""
    return [f.name for f in dataclasses.fields(cls) if f.name not in (*RUN_SETTINGS, *PEFT_ALIASES, "task_type")]


def config_from_dict(data: dict[str, Any]) -> LoraConfig:
    """Rebuild a config saved by `to_dict()`; unknown keys are an error naming them."""
    data = dict(data)
    method = data.pop("method", "lora")
    if method not in CONFIG_CLASSES:
        # Subclasses register when their module is imported (`import dynalora` imports
        # dynalora.allocation, home of "dynamic" and "rank1"); this module never imports them.
        raise ConfigError(f"method={method!r}: unknown; known methods: {sorted(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES[method]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown field(s) for {cls.__name__}: {unknown}")
    return cls(**data)
