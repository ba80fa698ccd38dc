"""Real multi-process runs for the distributed tests: torch.multiprocessing workers that join a
gloo process group through the environment variables a launcher sets (torchrun's, or those of
mpirun under `accelerate launch --cpu`), and torchrun / accelerate command lines for
`python -m dynalora`."""

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


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
CHANGE_EVENTS = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.link", "os.symlink",
                 "os.truncate", "shutil.rmtree", "tempfile.mkstemp", "tempfile.mkdtemp")


def record_writes(folders: list[str], writes: list[str]) -> None:
    """Note every change this process makes under `folders` (files opened for writing, renames,
    removals, new folders), through Python's audit hooks: whatever library call made it."""
    roots = tuple(os.path.realpath(f) + os.sep for f in folders)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            if not isinstance(args[0], (str, os.PathLike)) or not (args[2] or 0) & WRITE_FLAGS:
                return
        elif event not in CHANGE_EVENTS:
            return
        paths = [str(a) for a in args[:2] if isinstance(a, (str, os.PathLike))]
        if any(os.path.realpath(p).startswith(roots) for p in paths):
            writes.append(f"{event} {paths[-1]}")

    sys.addaudithook(hook)


def launcher_variables(style: str, rank: int, world_size: int, port: int) -> dict[str, str]:
    """What a launcher tells each process: torchrun's variables, or those of mpirun (Open MPI)
    started by `accelerate launch --cpu --mpirun_hostfile ...`, which also sets these three."""
    where = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if style == "torchrun":
        return {**where, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)}
    return {**where, "ACCELERATE_USE_CPU": "True", "OMPI_COMM_WORLD_RANK": str(rank),
            "OMPI_COMM_WORLD_SIZE": str(world_size), "OMPI_COMM_WORLD_LOCAL_RANK": str(rank)}


def worker(rank: int, world_size: int, port: int, jobs: list[dict[str, Any]], record_dir: str,
           style: str = "torchrun") -> None:
    """One process of a run. A job: name, config fields, "task" ("train" or "sft") and an
    optional "kill_at" step. Writes <name>-rank<r>.json (per step) and -writes.json per job."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(name, None)
    os.environ.update(launcher_variables(style, rank, world_size, port))
    torch.set_num_threads(1)
    from dynalora.llm.sft import SftConfig, train_sft
    from dynalora.training import TrainConfig, train

    steps: list[dict[str, Any]] = []
    writes: list[str] = []
    record_every_step(steps)
    record_writes([job["config"]["output"] for job in jobs], writes)
    for job in jobs:
        steps.clear()
        writes.clear()
        callbacks = [KillAt(job["kill_at"])] if job.get("kill_at") else []
        if job.get("task") == "sft":
            train_sft(SftConfig(**job["config"]), callbacks=callbacks)
        else:
            train(TrainConfig(**job["config"]), callbacks=callbacks)
        Path(record_dir, f"{job['name']}-rank{rank}.json").write_text(json.dumps(steps))
        Path(record_dir, f"{job['name']}-rank{rank}-writes.json").write_text(json.dumps(writes))


def spawn(jobs: list[dict[str, Any]], record_dir: Path, world_size: int = 2, style: str = "torchrun") -> None:
    """Run `jobs` in `world_size` fresh processes (spawned: nothing inherited from pytest),
    described to them as `style` ("torchrun" or "mpirun") describes its processes."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(world_size, free_port(), jobs, str(record_dir), style), nprocs=world_size, join=True)


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


def torchrun_command(fields: dict[str, Any], nproc: int = 2, command: str = "train") -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "dynalora", command, *cli_flags(fields)]


def accelerate_command(fields: dict[str, Any], nproc: int = 2, command: str = "train") -> list[str]:
    """`accelerate launch` as a CPU user runs it: --multi_gpu is what makes it start N processes
    (through torchrun); our code picks gloo since no GPU is there. Port 0: a free one."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={nproc}",
            "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "--main_process_port=0",
            "-m", "dynalora", command, *cli_flags(fields)]


def launch_environment(tmp_path: Path) -> dict[str, str]:
    """The environment for a launcher subprocess: this checkout's source, one thread per process,
    no user accelerate config (HF_HOME in `tmp_path`)."""
    src = str(Path(__file__).parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf-home"),
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
