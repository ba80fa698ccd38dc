"""Operating-system errors a user can fix, as one line naming the path and what to do."""

from __future__ import annotations

import errno
import os

ADVICE = {
    errno.ENOSPC: ("no space left on the device", "free some space or write somewhere else"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write somewhere else"),
    errno.EROFS: ("read-only file system", "choose a folder on a writable file system"),
    errno.EACCES: ("permission denied", "choose a path you may use, or change its permissions"),
    errno.EPERM: ("operation not permitted", "choose a path you may use, or change its permissions"),
    errno.ENOTDIR: ("a file is where a folder is needed", "move the file away or choose another path"),
    errno.EISDIR: ("a folder is where a file is needed", "move the folder away or choose another path"),
    errno.EEXIST: ("already exists", "move it away or choose another path"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
    errno.ELOOP: ("too many symbolic links (a loop?)", "fix the links or choose another path"),
    errno.ENOTEMPTY: ("the folder is not empty", "move it away or choose another path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or close other programs"),
}


def describe_os_error(err: OSError) -> str | None:
    """"PATH: what happened (detail); what to do", or None for an error we cannot explain
    (the caller lets it raise: a traceback is then the honest report)."""
    if err.errno not in ADVICE:
        return None
    what, advice = ADVICE[err.errno]
    path = err.filename2 if err.errno == errno.EEXIST and err.filename2 else err.filename
    if err.strerror and err.strerror != os.strerror(err.errno):
        what = err.strerror  # our own, more precise wording (e.g. "a file is where the output folder should be")
    where = f"{path}: " if path is not None else ""
    return f"{where}{what}; {advice}"
