"""Which process this is in a data-parallel run, and the process group that joins them.

Launchers (`torchrun`, `accelerate launch --multi_gpu`, `torch.multiprocessing` with the
variables set by hand) describe the run in the environment: RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT. `accelerate launch --cpu` starts several processes only through mpirun
(`--mpirun_hostfile`), which names them in MPI's own variables (PMI_RANK, OMPI_COMM_WORLD_RANK,
...): they are read as accelerate reads them. `join_process_group()` joins torch.distributed's
process group (gloo on CPU, NCCL when the process drives a GPU); without a launcher it is a
no-op and everything below behaves as one process of a world of one, so the training loop has
a single code path.
"""

from __future__ import annotations

import atexit
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from dynalora.errors import ConfigError

# A process that waits this long on the others (one of them crashed or hangs) gives up.
DEFAULT_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in the run: rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one process that writes the run folder, logs, plots and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# Where each launcher puts a process's place, first match wins: torchrun (and accelerate's
# --multi_gpu, which is torchrun), then mpirun's as accelerate reads them on CPU (Intel MPI /
# MPICH, Open MPI, MVAPICH2).
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
WORLD_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
LOCAL_VARIABLES = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")


def launcher_info(environ: dict[str, str] | None = None) -> ProcessInfo:
    """The rank / world size / local rank a launcher put in the environment (1 process if none)."""
    env = os.environ if environ is None else environ

    def number(names: tuple[str, ...], default: int) -> int:
        for name in names:
            text = env.get(name)
            if text is None or text == "":
                continue
            try:
                return int(text)
            except ValueError:
                raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None
        return default

    world = number(WORLD_VARIABLES, 1)
    rank = number(RANK_VARIABLES, 0)
    local = number(LOCAL_VARIABLES, rank)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"environment: rank {rank} does not fit world size {world} (RANK / WORLD_SIZE or "
                          "the MPI launcher's variables)")
    return ProcessInfo(rank, world, local)


def single_accelerate_process(environ: dict[str, str] | None = None) -> bool:
    """Whether `accelerate launch` was asked for several processes but started only this one.

    Without --multi_gpu (or mpirun through --mpirun_hostfile) accelerate's "simple" launcher
    runs the command once, even with --num_processes 2 --cpu; it marks that process with
    ACCELERATE_USE_CPU and sets MASTER_ADDR only when more processes were asked for.
    """
    env = os.environ if environ is None else environ
    described = any(env.get(name) for name in WORLD_VARIABLES)
    return "ACCELERATE_USE_CPU" in env and bool(env.get("MASTER_ADDR")) and not described


def current() -> ProcessInfo:
    """This process's place in the initialised process group (rank 0 of 1 without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return ProcessInfo()
    return ProcessInfo(dist.get_rank(), dist.get_world_size(), launcher_info().local_rank)


def backend_for(device: str) -> str:
    """NCCL for GPU processes (the collective library GPUs are built for), gloo on CPU."""
    wants_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if wants_gpu and dist.is_nccl_available() else "gloo"


def join_process_group(device: str = "auto", timeout: timedelta = DEFAULT_TIMEOUT) -> ProcessInfo:
    """Join the launcher's process group, once per process (nothing to do alone).

    A group that already exists (a user's script called init_process_group, or an earlier
    run in this process) is used as it is. One created here stays open for later runs of
    the same process (re-creating a group on the launcher's port can hang) and is closed
    when the interpreter exits. Each GPU process drives the GPU of its LOCAL_RANK.
    """
    info = launcher_info()
    if single_accelerate_process():
        warnings.warn("accelerate launch started one process: on CPUs it starts several only with "
                      "--multi_gpu --num_processes N (gloo is used without GPUs) or through mpirun; "
                      "this run trains in one process", UserWarning, stacklevel=2)
    if not info.distributed or dist.is_initialized():
        return current()
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={info.world_size} but this torch build has no torch.distributed")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"WORLD_SIZE={info.world_size} but {name} is not set; start the run with "
                              "torchrun or accelerate launch")
    # mpirun's processes: name them as torchrun would, for everything that reads RANK later
    os.environ.update(RANK=str(info.rank), WORLD_SIZE=str(info.world_size), LOCAL_RANK=str(info.local_rank))
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size, timeout=timeout)
    atexit.register(_close_group)
    return current()


def _close_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op alone)."""
    if current().distributed:
        dist.barrier()
