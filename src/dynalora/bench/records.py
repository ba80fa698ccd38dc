"""runs.jsonl: one JSON line per finished protocol run, the only input of the report.

Appending is one `write` of one complete line, flushed and fsynced, so a run killed at any
moment leaves either its whole line or (killed inside the write) a torn last line without
its newline. Readers skip a torn line with a warning; the next append starts on a fresh line,
so a torn line never swallows a good record. One bench process per records file.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import warnings
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: appends are not locked
    fcntl = None  # type: ignore[assignment]

# The fields that say which run a record is: a run whose key is recorded is not run again.
KEY_FIELDS = ("task", "method", "targets", "seed", "lr", "method_options", "settings")


def lr_text(lr: float) -> str:
    """A learning rate as the key and the tables spell it (3e-4 and 0.0003 are one value)."""
    return f"{float(lr):.6g}"


def run_key(record: dict[str, Any]) -> str:
    values = [lr_text(record[k]) if k == "lr" else record.get(k) for k in KEY_FIELDS]
    return json.dumps(values, sort_keys=True)


def read_jsonl(path: str | Path) -> tuple[list[tuple[int, Any]], list[int]]:
    """The parsed lines of `path` as (line number, value), and the numbers of the lines that do
    not parse (a torn last line, typically); blank lines are neither. No file: nothing."""
    path = Path(path)
    if not path.is_file():
        return [], []
    values, broken = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError:
            broken.append(number)
    return values, broken


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of `path` (none if it does not exist); torn or broken lines are skipped."""
    values, broken = read_jsonl(path)
    records = []
    for number, record in values:
        if isinstance(record, dict) and all(k in record for k in KEY_FIELDS):
            records.append(record)
        else:
            broken.append(number)
    if broken:
        warnings.warn(f"{path}: skipped {len(broken)} unreadable line(s) ({', '.join(map(str, sorted(broken)[:5]))}); "
                      "a run killed while writing leaves one; that run will run again", stacklevel=2)
    return records


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Add one record as one line: a single write, flushed and fsynced, under an exclusive lock
    on the file, so that benches running side by side on one records file (one per tier, as the
    protocol is run here) never interleave their lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, allow_nan=True) + "\n"
    with open(path, "ab+") as handle:
        if fcntl is not None:  # released when the file closes
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":  # a torn last line: end it, so this record stays whole
                line = "\n" + line
        handle.write(line.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def git_commit() -> str | None:
    """The dynalora source commit the run used (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


def machine_info(device: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    libraries = {}
    for name in ("transformers", "peft", "numpy", "scipy", "safetensors"):
        try:
            libraries[name] = version(name)
        except PackageNotFoundError:  # peft is an extra
            libraries[name] = None
    return {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": device,
            "dynalora_commit": git_commit(), "libraries": libraries}


# AdaLoRA's schedule, which the bench derives from each run's length: not a setting
PER_RUN_SCHEDULE = ("total_step", "tinit", "tfinal", "deltaT")


def settings_only(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded adapter config without what differs between runs of one arm for reasons
    other than its settings: where the base lay, PEFT's version (in `machine`), AdaLoRA's
    per-run schedule, and the order of a module list PEFT writes from a set."""
    drop = ("base_model_name_or_path", "peft_version", *PER_RUN_SCHEDULE)
    return {k: sorted(v) if k == "target_modules" and isinstance(v, list) else v
            for k, v in config.items() if k not in drop}
