"""Real multi-process runs for the distributed tests: torch.multiprocessing workers that join a
gloo process group through the same environment variables torchrun sets, and a torchrun
command line for `python -m dynalora`."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KillAt:
    """A step hook: rank 0 kills itself (SIGKILL, no clean-up) once step `step` is done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step: int) -> None:
        if step == self.step and os.environ.get("RANK") == "0":
            os.kill(os.getpid(), signal.SIGKILL)


def record_every_step(log: list[dict[str, Any]]) -> None:
    """After each optimizer step (and any reallocation), note a fingerprint of this process's
    trainable tensors and ranks, so the test can compare the processes step by step."""
    from dynalora.distributed import rank_digest, tensor_digest
    from dynalora.training.loop import TrainingLoop

    original = TrainingLoop.optimizer_step

    def optimizer_step(self: TrainingLoop) -> float:
        grad_norm = original(self)
        trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        wrapper = self.prepared.wrapper
        log.append({"step": self.state["step"], "tensors": tensor_digest(trainable),
                    "ranks": rank_digest(wrapper.ranks()) if wrapper is not None else None})
        return grad_norm

    TrainingLoop.optimizer_step = optimizer_step


def worker(rank: int, world_size: int, port: int, jobs: list[dict[str, Any]], record_dir: str) -> None:
    """One process of a run: each job is (config fields, kill step or None, name)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from dynalora.training import TrainConfig, train

    steps: list[dict[str, Any]] = []
    record_every_step(steps)
    for job in jobs:
        steps.clear()
        callbacks = [KillAt(job["kill_at"])] if job.get("kill_at") else []
        train(TrainConfig(**job["config"]), callbacks=callbacks)
        Path(record_dir, f"{job['name']}-rank{rank}.json").write_text(json.dumps(steps))


def spawn(jobs: list[dict[str, Any]], record_dir: Path, world_size: int = 2) -> None:
    """Run `jobs` in `world_size` fresh processes (spawned: nothing inherited from pytest)."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(world_size, free_port(), jobs, str(record_dir)), nprocs=world_size, join=True)


def cli_flags(fields: dict[str, Any]) -> list[str]:
    """`dynalora train` flags that rebuild a TrainConfig with these fields."""
    flags = []
    for key, value in fields.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            flags += [flag, *(f"{k}={v}" for k, v in value.items())] if value else []
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def torchrun_command(fields: dict[str, Any], nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "dynalora", "train", *cli_flags(fields)]
