"""Files written atomically and read with errors that say what is wrong.

Everything dynalora writes goes to a temporary name in the same folder and is renamed into
place, so a crash or a failed save never leaves a half-written file or folder behind.
Tensors are read from safetensors only; pickle is refused unless explicitly allowed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dynalora.errors import AdapterFileError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Temporary files and folders are created private (0600 / 0700); what we publish is readable.
FILE_MODE, DIR_MODE = 0o644, 0o755


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    tmp.chmod(FILE_MODE)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name; on success move it into place as `path`.

    A new folder appears whole, in one rename. Into an existing folder the files move one by
    one (each an atomic rename), and files the new folder does not replace are kept: a run
    folder may hold logs beside the adapter.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(DIR_MODE)
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
            return
        for item in tmp.iterdir():
            target = path / item.name
            if item.is_dir() and target.exists():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "file", error: type[Exception] = AdapterFileError) -> Any:
    """The JSON in `path`; a missing or broken file raises `error` (a run folder's files say
    RunFolderError) naming the file and `what` it should have been."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid JSON ({err})") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a pickle file only with `allow_pickle=True` (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"adapter weights not found: {path}")
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise AdapterFileError(
                f"{path}: refusing to load a pickle file (it can run arbitrary code). Convert it "
                "to safetensors, or pass allow_pickle=True if you trust its source"
            )
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        size = path.stat().st_size
        raise AdapterFileError(
            f"{path}: not a valid safetensors file ({size} bytes; truncated or corrupt?): {err}"
        ) from None


def find_weights(folder: Path, stem: str) -> Path:
    """`stem.safetensors` in `folder`, or a pickle twin (refused later unless allowed)."""
    candidate = folder / f"{stem}.safetensors"
    if candidate.is_file():
        return candidate
    for suffix in PICKLE_SUFFIXES:
        pickled = folder / f"{stem}{suffix}"
        if pickled.is_file():
            return pickled
    raise AdapterFileError(f"no {stem}.safetensors in {folder}")
