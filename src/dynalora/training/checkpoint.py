"""Resumable checkpoints: everything needed to continue a run as if it never stopped.

A checkpoint is a folder `checkpoints/step-00000123/` holding
    model.safetensors   the trainable tensors and the buffers (allocation weights, ...)
    trainer.pt          optimizer, scheduler, grad scaler, hook (controller) states, RNG states
    progress.json       step, epoch, position in the epoch, best-so-far, the run's config
It is built under a temporary name and renamed into place in one step, then
`checkpoints/latest.json` is pointed at it (also an atomic rename) and older ones are
removed, so a run killed at any moment leaves the previous checkpoint intact.

trainer.pt is read with `torch.load(weights_only=True)`: tensors and plain containers only,
no arbitrary code.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora.errors import RunFolderError
from dynalora.files import (
    atomic_path,
    fault_point,
    fsync_path,
    load_tensors,
    publish_modes,
    read_json,
    save_tensors,
    write_json,
)
from dynalora.runs.pointers import LATEST, latest_folder, step_folder_name, tidy_checkpoints

PROGRESS_KEYS = ("step", "epoch", "position", "best", "config")
TRAINER_KEYS = ("optimizer", "scheduler", "hooks", "rng")


@dataclass
class Checkpoint:
    folder: Path
    progress: dict[str, Any]
    model: dict[str, torch.Tensor]
    trainer: dict[str, Any]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and all buffers; frozen base weights are left out (they never change)."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def save_checkpoint(root: Path, step: int, model: nn.Module, trainer: dict[str, Any],
                    progress: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_folder_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=".step-", suffix=".tmp", dir=root))
    try:
        save_tensors(tmp / "model.safetensors", trainable_state(model))
        buffer = io.BytesIO()  # serialised first: a disk error is then a plain OSError naming the file
        torch.save(trainer, buffer)
        with atomic_path(tmp / "trainer.pt") as target:
            target.write_bytes(buffer.getbuffer())
        write_json(tmp / "progress.json", {**progress, "step": step})
        tmp.chmod(publish_modes()[1])
        fsync_path(tmp, folder=True)
        if final.exists():
            shutil.rmtree(final)
        fault_point(f"rename {final}")
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(root / LATEST, {"folder": final.name, "step": step})
    fault_point(f"remove checkpoints older than {final}")
    tidy_checkpoints(root)
    return final


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The checkpoint `latest.json` names, or None when the run has none yet."""
    folder = latest_folder(root)
    if folder is None:
        return None
    try:
        with warnings.catch_warnings():  # torch's notes on refused content: the error below says it
            warnings.simplefilter("ignore")
            trainer = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for unreadable or refused content
        raise RunFolderError(f"{folder / 'trainer.pt'}: cannot be read ({err})") from None
    progress = read_json(folder / "progress.json", "checkpoint progress", RunFolderError)
    missing = [k for k in PROGRESS_KEYS if k not in progress] if isinstance(progress, dict) else list(PROGRESS_KEYS)
    if missing or not isinstance(progress.get("config"), dict):
        raise RunFolderError(f"{folder / 'progress.json'}: not a checkpoint's progress (missing {missing or ['config']})")
    if not isinstance(trainer, dict) or not set(TRAINER_KEYS) <= set(trainer):
        raise RunFolderError(f"{folder / 'trainer.pt'}: not a checkpoint's trainer state (needs {list(TRAINER_KEYS)})")
    return Checkpoint(folder, progress, load_tensors(folder / "model.safetensors"), trainer)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    _, unexpected = model.load_state_dict(state, strict=False)
    expected = trainable_state(model)
    lost = sorted(set(expected) - set(state))
    if unexpected or lost:
        raise RunFolderError(f"{where}: checkpoint does not fit the model "
                               f"(missing {lost[:5]}, unexpected {list(unexpected)[:5]})")
