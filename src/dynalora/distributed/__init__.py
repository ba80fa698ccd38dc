"""Data-parallel training over torch.distributed (torchrun, accelerate launch): which process
this is, each process's shard of every batch, and keeping gradients, parameters and
allocation statistics identical across processes (see sync.py for why not DDP's wrapper)."""

from dynalora.distributed.context import (
    ProcessInfo,
    backend_for,
    barrier,
    current,
    join_process_group,
    launcher_info,
)
from dynalora.distributed.sharding import LOSS_SHARE, ShardedBatches, loss_units, shard_batch
from dynalora.distributed.sync import (
    all_reduce_gradients,
    broadcast_object,
    broadcast_parameters,
    gather_objects,
    rank_digest,
    tensor_digest,
)

__all__ = [
    "LOSS_SHARE",
    "ProcessInfo",
    "ShardedBatches",
    "all_reduce_gradients",
    "backend_for",
    "barrier",
    "broadcast_object",
    "broadcast_parameters",
    "current",
    "gather_objects",
    "join_process_group",
    "launcher_info",
    "loss_units",
    "rank_digest",
    "shard_batch",
    "tensor_digest",
]
