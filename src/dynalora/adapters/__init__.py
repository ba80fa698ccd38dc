"""LoRA adapters: the layer, the config, injection, and the files they live in.

The public names load on first use (dynalora.lazy): the config is plain Python, the rest needs torch.
"""

from typing import TYPE_CHECKING

from dynalora.lazy import lazy_exports

_EXPORTS = {
    "ConfigError": "dynalora.adapters.config",
    "LoraConfig": "dynalora.adapters.config",
    "config_from_dict": "dynalora.adapters.config",
    "TargetError": "dynalora.adapters.inject",
    "inject_adapters": "dynalora.adapters.inject",
    "resolve_targets": "dynalora.adapters.inject",
    "LoraAdapter": "dynalora.adapters.layer",
    "LoraLayer": "dynalora.adapters.layer",
    "DynaLoraModel": "dynalora.adapters.model",
    "get_lora_model": "dynalora.adapters.model",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and editors see
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
