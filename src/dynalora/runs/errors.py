"""What can go wrong with a run folder itself (its data and settings have their own errors)."""

from __future__ import annotations

from dynalora.errors import RunFolderError

__all__ = ["RunFolderBusy", "RunFolderError"]


class RunFolderBusy(RunFolderError):
    """Another process holds the run folder's lock; the message names the holder."""
