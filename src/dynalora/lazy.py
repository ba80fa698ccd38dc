"""Package attributes loaded on first use (PEP 562), so `import dynalora` stays cheap.

`dynalora --help` must answer in well under two seconds, and importing torch and
transformers alone takes 10-20 s on a small machine. The packages therefore name their
public objects here and import the module holding one only when it is first used;
`from dynalora import get_lora_model` works as before.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`, where `exports` maps a public name to the
    module that defines it. A loaded name is cached in the package, so this runs once per name."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
