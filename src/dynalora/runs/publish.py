"""A run's results appear whole: the best model's folder is built aside, then swapped in.

`publish(run, write)` lets `write(folder)` fill a fresh temporary folder (adapter, its config,
dynalora_run.json), syncs it to disk and swaps it with `<run>/best` in one step: Linux's
`renameat2(RENAME_EXCHANGE)` where the file system has it, else two renames under the
publication lock. Readers (`reading(run)`) hold that lock shared while they read, so they
never see the old adapter beside the new run description. Whatever a kill leaves behind
(`.*.tmp` names) is tidied by `tidy(run)` when the next run starts; a swap cut between its two
renames is undone there, bringing the previous complete version back.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dynalora.files import fault_point, fsync_path, fsync_tree, publish_modes

BEST = "best"
PUBLISH_LOCK = ".publish.lock"
TMP_SUFFIX = ".tmp"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _libc_renameat2() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_renameat2 = _libc_renameat2()


def exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths atomically; False where the system cannot (the caller falls back)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


@contextmanager
def _flock(run: Path, mode: int, create: bool) -> Iterator[None]:
    path = run / PUBLISH_LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, publish_modes()[0]) if create else os.open(path, os.O_RDONLY)
    except OSError:
        if create:
            raise
        yield  # nothing was ever published with a lock here (or it cannot be opened): read as is
        return
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def publish(run: str | os.PathLike, write: Callable[[Path], None], name: str = BEST) -> Path:
    """Fill a fresh folder with `write(folder)` and swap it in as `run/name`, all or nothing."""
    run = Path(run)
    target = run / name
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of the results folder", str(target))
    fresh = Path(tempfile.mkdtemp(prefix=f".{name}-new.", suffix=TMP_SUFFIX, dir=run))
    try:
        write(fresh)
        fresh.chmod(publish_modes()[1])
        fsync_tree(fresh)
        with _flock(run, fcntl.LOCK_EX, create=True):
            fault_point(f"swap {target}")
            if not target.exists():
                os.rename(fresh, target)
            elif not exchange(fresh, target):
                old = run / f".{name}-old.{os.getpid()}{TMP_SUFFIX}"
                os.rename(target, old)
                fault_point(f"rename {target}")
                os.rename(fresh, target)
                fresh = old
            fsync_path(run, folder=True)
        fault_point(f"remove old {target}")
    finally:
        shutil.rmtree(fresh, ignore_errors=True)  # after a swap: the previous version
    return target


def results_folder(run: str | os.PathLike) -> Path:
    """Where a run's published results are: `run/best`, or `run` itself (an adapter folder,
    or a run written before results were published as a folder)."""
    run = Path(run)
    return run / BEST if (run / BEST).is_dir() else run


@contextmanager
def reading(run: str | os.PathLike) -> Iterator[Path]:
    """`with reading(run) as folder:` read the results from `folder`; no swap happens meanwhile."""
    run = Path(run)
    folder = results_folder(run)
    if folder == run:
        yield folder
        return
    with _flock(run, fcntl.LOCK_SH, create=False):
        yield results_folder(run)


def tidy(run: str | os.PathLike, name: str = BEST) -> list[Path]:
    """Undo what a kill left: bring back a complete previous version a cut swap removed, and
    delete every temporary `.*.tmp` in the run folder. Returns what was deleted."""
    run = Path(run)
    target = run / name
    if not target.exists():
        previous = sorted(run.glob(f".{name}-old.*{TMP_SUFFIX}"), key=lambda p: p.stat().st_mtime)
        if previous:
            os.rename(previous[-1], target)
    removed = []
    for litter in sorted(run.glob(f".*{TMP_SUFFIX}")):
        if litter.is_dir() and not litter.is_symlink():
            shutil.rmtree(litter)
        else:
            litter.unlink()
        removed.append(litter)
    return removed
