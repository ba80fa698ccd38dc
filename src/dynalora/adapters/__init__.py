"""LoRA adapters: the layer, the config, injection, and the files they live in."""

from dynalora.adapters.config import ConfigError, LoraConfig, config_from_dict
from dynalora.adapters.inject import TargetError, inject_adapters, resolve_targets
from dynalora.adapters.layer import LoraAdapter, LoraLayer
from dynalora.adapters.model import DynaLoraModel, get_lora_model

__all__ = [
    "ConfigError",
    "DynaLoraModel",
    "LoraAdapter",
    "LoraConfig",
    "LoraLayer",
    "TargetError",
    "config_from_dict",
    "get_lora_model",
    "inject_adapters",
    "resolve_targets",
]
