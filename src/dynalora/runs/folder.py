"""Claiming a run folder: check the path, take the lock, refuse to mix two runs, tidy up.

A run goes through these steps, and nothing in the folder changes before the last one:

    run = RunFolder(config.output)
    run.check_path()                 # a folder (or one can be made there), writable
    ...every other input checked: config, data, model...
    with run.claim(resume=..., overwrite=...):
        ...read and check the checkpoint (resume)...
        run.start(fresh=...)         # tidy litter; a fresh run clears the previous outputs
        ...train; run.publish(write) for each new best...

`claim` refuses a new run into a folder holding another run's results unless `overwrite`
(or `resume`, which continues that run). In a multi-process run only the main process
claims and writes; the others get a RunFolder whose writing methods do nothing.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dynalora.runs.errors import RunFolderError
from dynalora.runs.lock import RunLock, is_main_process
from dynalora.runs.pointers import LATEST, tidy_checkpoints
from dynalora.runs.publish import BEST, PUBLISH_LOCK, publish, tidy

CHECKPOINTS = "checkpoints"
# What a run (classification or SFT) writes; these make a folder "another run's". The
# adapter files at the top level are where results lived before the `best/` folder.
RESULTS = (BEST, CHECKPOINTS, "metrics.json", "log.jsonl", "dynalora_run.json", "dynalora_sft_run.json",
           "dynalora_config.json", "dynalora_adapter.safetensors", "trained_state.safetensors")
OUTPUTS = (*RESULTS, "curves.png", "allocation.json", "allocation.png", "samples.jsonl", "report.md",
           "allocation_controller.json", PUBLISH_LOCK)
FOLDERS = (BEST, CHECKPOINTS)  # every other output is a file


def check_writable_folder(path: str | os.PathLike) -> None:
    """`path` is a folder, or can be created: no file in the way, nearest existing parent
    writable on a writable file system. Changes nothing."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file is where the output folder should be", str(path))
    existing = path
    while not existing.exists():
        if existing.is_symlink():  # a dangling link
            raise FileNotFoundError(errno.ENOENT, "a broken symbolic link is in the output path", str(existing))
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the output path", str(existing))
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, "read-only file system", str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "permission denied", str(existing))


def check_output_folder(path: str | os.PathLike, overwrite: bool = False) -> None:
    """An output folder for a result written whole (merge, export): new or empty, unless
    `overwrite` lets the result replace files of the same names there. Changes nothing."""
    check_writable_folder(path)
    path = Path(path)
    present = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if present and not overwrite:
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise RunFolderError(f"{path} is not empty ({shown}); choose a new or empty folder, or pass --overwrite "
                             "to replace the files of the same names")


class RunFolder:
    """One run's hold on its output folder (see the module doc for the order of steps)."""

    def __init__(self, path: str | os.PathLike, main_process: bool | None = None,
                 command: str | None = None) -> None:
        self.path = Path(path)
        self.main_process = is_main_process() if main_process is None else main_process
        self.lock = RunLock(self.path, command)

    def check_path(self) -> None:
        if self.main_process:
            check_writable_folder(self.path)

    def results(self) -> list[str]:
        """The names of run outputs already in the folder."""
        return [n for n in RESULTS if (self.path / n).exists()] if self.path.is_dir() else []

    @contextmanager
    def claim(self, resume: bool = False, overwrite: bool = False) -> Iterator[RunFolder]:
        """Hold the folder for the block: the lock, then the checks that need it."""
        if not self.main_process:
            yield self
            return
        self.check_path()
        self.check_resumable(resume)  # before the lock: a folder that is not there stays so
        with self.lock:
            self.check_resumable(resume)
            self.check_kinds()
            found = self.results()
            if found and not (resume or overwrite):
                raise RunFolderError(f"{self.path} holds another run's results ({', '.join(found)}); pass "
                                     "--resume to continue it, --overwrite to replace it, or choose another --output")
            yield self

    def check_resumable(self, resume: bool) -> None:
        if resume and not self.has_checkpoint():
            raise RunFolderError(f"resume: there is no checkpoint in {self.path / CHECKPOINTS} to resume "
                                 "from; drop --resume to start a new run")

    def check_kinds(self) -> None:
        """No folder where the run writes a file, no file where it needs a folder: found now,
        not when the run writes its last file."""
        for name in OUTPUTS:
            path = self.path / name
            if name in FOLDERS and path.exists() and not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "a file is where the run keeps a folder", str(path))
            if name not in FOLDERS and path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "a folder is where the run writes a file", str(path))

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINTS / LATEST).is_file()

    def start(self, fresh: bool, keep: Sequence[str] = ()) -> None:
        """Tidy what a killed run left; a `fresh` run also clears the previous run's outputs
        (all of them, so nothing from it stays beside the new results)."""
        if not self.main_process:
            return
        self.require_lock()
        tidy(self.path)
        tidy_checkpoints(self.path / CHECKPOINTS)
        if fresh:
            for name in OUTPUTS:
                if name in keep:
                    continue
                target = self.path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()

    def publish(self, write: Callable[[Path], None]) -> Path | None:
        """The best model so far, written by `write(folder)`, swapped in whole as `best/`."""
        if not self.main_process:
            return None
        self.require_lock()
        return publish(self.path, write)

    def require_lock(self) -> None:
        if not self.lock.held:
            raise RuntimeError(f"{self.path}: claim() the run folder before writing to it")
