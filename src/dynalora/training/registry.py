"""The method contract and registry: what a training method hands the loop (`Prepared`),
how it is described (`Method`), and where methods register (`register_method`).

The built-in methods (dynalora.training.methods) and PEFT's (dynalora.training.peft_methods)
both build on this module, so neither imports the other's home and the registry has no
knowledge of who fills it.

Step hooks (`Prepared.make_hooks(optimizer, total_steps)`, made once the optimizer exists)
follow the protocol described in dynalora.training.methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer

from dynalora.adapters import DynaLoraModel, LoraConfig
from dynalora.adapters.config import method_option_names
from dynalora.errors import ConfigError

# The classification head's module name: trained in full and saved beside the adapters.
HEAD_MODULE = "classifier"


@dataclass
class Prepared:
    """What the training loop needs from a method."""

    model: nn.Module  # called as model(**inputs)
    classifier: nn.Module  # the task model inside `model` (a SequenceClassifier, or a causal LM)
    save: Callable[[Path, dict[str, Any]], None]  # write the trained state into a folder
    make_hooks: Callable[[Optimizer, int], list[Any]] = lambda optimizer, total_steps: []
    wrapper: DynaLoraModel | None = None  # set for the LoRA family (merge, export, inspect)
    cache_features: bool = False  # backbone frozen: pool each example once, train the head on that


@dataclass(frozen=True)
class Method:
    name: str
    default_lr: float
    prepare: Callable[[Any, Any, int], Prepared]  # (classifier, run config, total_steps)
    load: Callable[[Any, Path, dict[str, Any]], nn.Module]  # (classifier, folder, metadata)
    description: str = ""
    mergeable: bool = True  # can the trained update be folded into the base weights?


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def lora_config_for(config: Any, config_class: type[LoraConfig] = LoraConfig) -> LoraConfig:
    """The adapter config of a run: rank/alpha/dropout/targets plus the method's options."""
    valid = method_option_names(config_class)
    unknown = sorted(set(config.method_options) - set(valid))
    if unknown:
        raise ConfigError(f"method_options: {unknown} not option(s) of method {config_class.method!r}; "
                          f"its options: {', '.join(valid)}")
    try:
        return config_class(r=config.rank, alpha=config.alpha, dropout=config.dropout,
                            target_modules=config.target_modules,
                            # a run config may name its own (SFT of a causal LM: none)
                            modules_to_save=getattr(config, "modules_to_save", [HEAD_MODULE]),
                            **config.method_options)
    except TypeError as err:  # an option the config class does not have
        raise ConfigError(f"method_options: {err} (not an option of {config_class.__name__})") from None
