"""dynalora: LoRA, Dynamic LoRA and Rank-1 Sum LoRA for Hugging Face transformers models."""

# Importing dynalora.allocation registers its adapter configs ("dynamic", "rank1") with
# adapters.config, so a saved adapter of any method loads back while adapters.config never
# imports its subclasses' modules (no import cycle).
from dynalora import allocation  # noqa: F401
from dynalora.adapters import (
    ConfigError,
    DynaLoraModel,
    LoraAdapter,
    LoraConfig,
    LoraLayer,
    TargetError,
    get_lora_model,
)
from dynalora.errors import (
    AdapterFileError,
    DataError,
    DynaLoraError,
    MissingDependencyError,
    RunFolderError,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterFileError",
    "ConfigError",
    "DataError",
    "DynaLoraError",
    "DynaLoraModel",
    "LoraAdapter",
    "LoraConfig",
    "LoraLayer",
    "MissingDependencyError",
    "RunFolderError",
    "TargetError",
    "get_lora_model",
]
