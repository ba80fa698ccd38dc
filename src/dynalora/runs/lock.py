"""One writer per run folder: an advisory `flock` on `<run>/.lock`.

The kernel drops a `flock` when its process ends, however it ends, so a lock left by a
killed run never blocks the next one: there is no stale-lock guessing. The file holds who
has it (pid, host, start time, command), so the refusal can name the holder. In a
multi-process run only the main process takes it; the others write nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from dynalora.files import publish_modes
from dynalora.runs.errors import RunFolderBusy

LOCK_FILE = ".lock"


def is_main_process() -> bool:
    """True unless a launcher (torchrun, accelerate) says this is a secondary process."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def holder_line(command: str | None = None) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}"


class RunLock:
    """`with RunLock(folder):` holds the folder's lock; a second holder gets RunFolderBusy."""

    def __init__(self, folder: str | os.PathLike, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command
        self.fd: int | None = None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, publish_modes()[0])
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = self.path.read_text(errors="replace").strip() or "holder unknown"
            raise RunFolderBusy(f"{self.folder} is in use by another run ({holder}); wait for it to "
                                "finish, or choose another --output") from None
        os.ftruncate(fd, 0)
        os.write(fd, (holder_line(self.command) + "\n").encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # an empty lock file: nobody holds it
        os.close(self.fd)  # closing the last descriptor drops the flock
        self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
