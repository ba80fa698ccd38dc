"""`checkpoints/latest.json`: the pointer to the newest checkpoint, kept inside its folder.

The pointer is read from a file a user (or an attacker) can edit, so the folder it names
must be a plain `step-NNNNNNNN` name directly inside `checkpoints/`: never `..`, an absolute
path or a link leading out of the run folder.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from dynalora.files import read_json
from dynalora.runs.errors import RunFolderError
from dynalora.runs.publish import TMP_SUFFIX

LATEST = "latest.json"
STEP_NAME = re.compile(r"step-\d{8}")


def step_folder_name(step: int) -> str:
    return f"step-{step:08d}"


def latest_folder(root: Path) -> Path | None:
    """The checkpoint folder `root/latest.json` names, checked to lie inside `root`; None
    when there is no pointer (no checkpoint yet)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    document = read_json(pointer, "checkpoint pointer", RunFolderError)
    name = document.get("folder") if isinstance(document, dict) else None
    if not isinstance(name, str) or not STEP_NAME.fullmatch(name):
        raise RunFolderError(f"{pointer}: 'folder' must name a step-NNNNNNNN folder inside {root}, "
                             f"found {name!r}; the checkpoint pointer was edited or is corrupt")
    folder = root / name
    if folder.is_symlink() or (folder.exists() and folder.resolve().parent != root.resolve()):
        raise RunFolderError(f"{pointer}: {name} leads outside {root}; refusing to follow it")
    if not folder.is_dir():
        raise RunFolderError(f"{pointer} names {name}, which does not exist in {root}")
    return folder


def tidy_checkpoints(root: Path) -> list[Path]:
    """Delete temporary checkpoint folders and checkpoints older than the one `latest.json`
    names (a kill between writing the pointer and removing them leaves them). Returns them."""
    if not root.is_dir():
        return []
    removed = [p for p in root.glob(f".*{TMP_SUFFIX}")]
    try:
        keep = latest_folder(root)
    except RunFolderError:
        keep = None
    if keep is not None:
        removed += [p for p in root.glob("step-*") if p.name != keep.name]
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed
