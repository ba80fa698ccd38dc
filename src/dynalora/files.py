"""Files written atomically and read with errors that say what is wrong.

Everything dynalora writes goes to a temporary name in the same folder and is renamed into
place, so a crash or a failed save never leaves a half-written file or folder behind.
Tensors are read from safetensors only; pickle is refused unless explicitly allowed.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as tensor_bytes

from dynalora.errors import AdapterFileError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Test hook for fault injection: the process dies (as if killed) at its N-th write or rename
# point; DYNALORA_FAULT_LOG names a file that receives one line per point passed.
FAULT_AT_ENV, FAULT_LOG_ENV = "DYNALORA_FAULT_AT", "DYNALORA_FAULT_LOG"
FAULT_EXIT = 86
_fault_count = [0]


def fault_point(label: str) -> None:
    """A point where a kill must leave consistent files (tests inject one; see FAULT_AT_ENV)."""
    at, log = os.environ.get(FAULT_AT_ENV), os.environ.get(FAULT_LOG_ENV)
    if not at and not log:
        return
    _fault_count[0] += 1
    if log:
        with open(log, "a") as handle:
            handle.write(f"{_fault_count[0]}\t{label}\n")
    if at and _fault_count[0] == int(at):
        os._exit(FAULT_EXIT)  # no cleanup, no flush: what kill -9 leaves behind


def reset_fault_points() -> None:
    _fault_count[0] = 0


def publish_modes() -> tuple[int, int]:
    """(file mode, folder mode) for what we publish: 0666 / 0777 less the umask, as `open`
    and `mkdir` would give (temporary names are created private: 0600 / 0700)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask, 0o777 & ~mask


def fsync_path(path: str | os.PathLike, folder: bool = False) -> None:
    """Flush a file's (or a folder's entries') data to disk, so a rename publishes whole data."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF):  # folders on some filesystems refuse fsync
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (what another library wrote there too)."""
    for item in sorted(folder.rglob("*")):
        if not item.is_symlink():
            fsync_path(item, folder=item.is_dir())
    fsync_path(folder, folder=True)


# Errors about where data goes, not where it comes from: they name the file being written.
DESTINATION_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def with_filename(err: OSError, path: str | os.PathLike) -> OSError:
    """`err` naming `path` when the failing call did not say which file it was (write, fsync),
    or named its source (a copy into a full disk names the file copied from)."""
    if err.filename is not None and err.errno not in DESTINATION_ERRORS:
        return err
    named = type(err)(err.errno, err.strerror or str(err), str(path))
    named.__traceback__ = err.__traceback__
    return named


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success sync it and rename it onto `path`,
    else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way of a file", str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        fault_point(f"write {path}")
        try:
            yield tmp
            tmp.chmod(publish_modes()[0])
            fsync_path(tmp)
        except OSError as err:
            raise with_filename(err, path) from None
        fault_point(f"rename {path}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_kinds(source: Path, target: Path) -> None:
    """Refuse, before anything moves, a file in `target` where `source` has a folder (or the
    reverse): a merge must not stop half-way because `model.safetensors` is a folder."""
    for item in source.iterdir():
        there = target / item.name
        if not there.exists() and not there.is_symlink():
            continue
        if item.is_dir() and not there.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of a folder", str(there))
        if not item.is_dir() and there.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way of a file", str(there))
        if item.is_dir():
            check_kinds(item, there)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name; on success move it into place as `path`.

    A new folder appears whole, in one rename. Into an existing folder the files move one by
    one (each an atomic rename), and files the new folder does not replace are kept: a run
    folder may hold logs beside the adapter. Every name is checked first, so a folder where
    a file goes (or the reverse) fails before anything moves.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of a folder", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        try:
            yield tmp
        except OSError as err:
            raise with_filename(err, path) from None
        tmp.chmod(publish_modes()[1])
        fsync_tree(tmp)
        if not path.exists():
            fault_point(f"rename {path}")
            os.replace(tmp, path)
            return
        check_kinds(tmp, path)
        for item in tmp.iterdir():
            target = path / item.name
            if item.is_dir() and target.exists():
                shutil.rmtree(target)
            fault_point(f"rename {target}")
            os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finite_json(data: Any) -> Any:
    """`data` as strict JSON allows: NaN/inf become None, and a top-level mapping that had
    any gains "nonfinite": the dotted paths of those values, so a reader can tell an
    undefined metric (e.g. ROC AUC on one class) from a missing one."""
    found: list[str] = []

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found.append(where)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    cleaned = clean(data, "")
    if found and isinstance(cleaned, dict):
        cleaned["nonfinite"] = sorted(set(cleaned.get("nonfinite") or []) | set(found))
    return cleaned


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Strict JSON, written atomically (NaN/inf as null, see finite_json)."""
    text = json.dumps(finite_json(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


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
    data = tensor_bytes(tensors, metadata)  # serialised first: a disk error is then a plain OSError
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


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
