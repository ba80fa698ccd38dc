"""The errors a user can fix, in one place; the CLI prints each as one line (exit status 2).

Each names what is wrong and where (the field, the file, the folder). They are `ValueError`s
(`MissingDependencyError` an `ImportError`), so code written against the builtin kinds keeps
working, and all of them are `DynaLoraError`s, so one `except` catches them all.
"""

from __future__ import annotations


class DynaLoraError(Exception):
    """Something the user can fix; the message is one line and says what to change."""


class ConfigError(DynaLoraError, ValueError):
    """A configuration value of the wrong type or out of range; the message names the field."""


class DataError(DynaLoraError, ValueError):
    """A data file or split that is missing, unreadable, or does not fit the task."""


class AdapterFileError(DynaLoraError, ValueError):
    """A missing, corrupt, mismatched or refused adapter (or other model weights) file."""


class RunFolderError(DynaLoraError, ValueError):
    """A run folder (or one of its checkpoints) that is missing, incomplete or inconsistent."""


class MissingDependencyError(DynaLoraError, ImportError):
    """A package a feature needs is not installed; the message says what to install."""


class TargetError(DynaLoraError, ValueError):
    """A target or module name (target_modules, modules_to_save) that matches nothing in the model."""


class MergeError(DynaLoraError, ValueError):
    """A trained model whose update cannot be folded into the base weights."""


class ModelLoadError(DynaLoraError, ValueError):
    """A model path or file that cannot be loaded; the message says what was looked for."""


__all__ = [
    "AdapterFileError",
    "ConfigError",
    "DataError",
    "DynaLoraError",
    "MergeError",
    "MissingDependencyError",
    "ModelLoadError",
    "RunFolderError",
    "TargetError",
]
