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

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora.errors import RunFolderError
from dynalora.files import load_tensors, read_json, save_tensors, write_json

LATEST = "latest.json"


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
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".step-", suffix=".tmp", dir=root))
    try:
        save_tensors(tmp / "model.safetensors", trainable_state(model))
        torch.save(trainer, tmp / "trainer.pt")
        write_json(tmp / "progress.json", {**progress, "step": step})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(root / LATEST, {"folder": final.name, "step": step})
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The checkpoint `latest.json` names, or None when the run has none yet."""
    if not (root / LATEST).is_file():
        return None
    folder = root / read_json(root / LATEST, "checkpoint pointer", RunFolderError)["folder"]
    if not folder.is_dir():
        raise RunFolderError(f"{root / LATEST} names {folder.name}, which does not exist")
    try:
        trainer = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for unreadable or refused content
        raise RunFolderError(f"{folder / 'trainer.pt'}: cannot be read ({err})") from None
    return Checkpoint(folder, read_json(folder / "progress.json", "checkpoint progress", RunFolderError),
                      load_tensors(folder / "model.safetensors"), trainer)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    _, unexpected = model.load_state_dict(state, strict=False)
    expected = trainable_state(model)
    lost = sorted(set(expected) - set(state))
    if unexpected or lost:
        raise RunFolderError(f"{where}: checkpoint does not fit the model "
                               f"(missing {lost[:5]}, unexpected {list(unexpected)[:5]})")
