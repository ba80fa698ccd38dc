"""Loading (or saving) a model without third-party progress bars and notes in our output.

transformers prints progress bars for loading and writing checkpoint shards, a load report of newly initialised
weights (expected: our heads are new) and, for GGUF files, a bar of its own that no
transformers switch reaches. Inside `quiet_loading()` none of them print; what they would
have said about real problems still raises as an exception.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _pass_through(iterable: Any, *args: Any, **kwargs: Any) -> Any:
    return iterable


@contextmanager
def quiet_loading() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # transformers' GGUF converter calls tqdm directly: swap in a pass-through while loading.
    gguf = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    gguf_bar = getattr(gguf, "tqdm", None)
    if gguf_bar is not None:
        gguf.tqdm = _pass_through
    try:
        yield
    finally:
        if gguf_bar is not None:
            gguf.tqdm = gguf_bar
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
    """`warnings.formatwarning` for the CLI: the warning alone, no file name or source line."""
    return f"warning: {message}\n"
