"""dynalora: LoRA, Dynamic LoRA and Rank-1 Sum LoRA for Hugging Face transformers models."""

from dynalora.adapters import (
    ConfigError,
    DynaLoraModel,
    LoraAdapter,
    LoraConfig,
    LoraLayer,
    TargetError,
    get_lora_model,
)
from dynalora.files import AdapterFileError

__version__ = "0.1.0"

__all__ = [
    "AdapterFileError",
    "ConfigError",
    "DynaLoraModel",
    "LoraAdapter",
    "LoraConfig",
    "LoraLayer",
    "TargetError",
    "get_lora_model",
]
