"""dynalora: LoRA, Dynamic LoRA and Rank-1 Sum LoRA for Hugging Face transformers models."""

from typing import TYPE_CHECKING

# Importing dynalora.allocation registers its adapter configs ("dynamic", "rank1") with
# adapters.config, so a saved adapter of any method loads back while adapters.config never
# imports its subclasses' modules (no import cycle).
from dynalora import allocation  # noqa: F401
from dynalora.errors import (
    AdapterFileError,
    DataError,
    DynaLoraError,
    MergeError,
    MissingDependencyError,
    RunFolderError,
)
from dynalora.lazy import lazy_exports

__version__ = "0.1.0"

# The adapter classes load on first use (dynalora.lazy): `import dynalora` needs no torch.
__getattr__, __dir__ = lazy_exports(__name__, {
    "ConfigError": "dynalora.adapters.config", "LoraConfig": "dynalora.adapters.config",
    "TargetError": "dynalora.adapters.inject", "LoraAdapter": "dynalora.adapters.layer",
    "LoraLayer": "dynalora.adapters.layer", "DynaLoraModel": "dynalora.adapters.model",
    "get_lora_model": "dynalora.adapters.model",
})

if TYPE_CHECKING:  # what type checkers and editors see
    from dynalora.adapters import (
        ConfigError,
        DynaLoraModel,
        LoraAdapter,
        LoraConfig,
        LoraLayer,
        TargetError,
        get_lora_model,
    )

__all__ = [
    "AdapterFileError",
    "ConfigError",
    "DataError",
    "DynaLoraError",
    "DynaLoraModel",
    "LoraAdapter",
    "LoraConfig",
    "LoraLayer",
    "MergeError",
    "MissingDependencyError",
    "RunFolderError",
    "TargetError",
    "get_lora_model",
]
