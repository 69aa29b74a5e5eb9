"""Data parallelism over model replicas with torch.distributed, as torchrun sets it up.

    torchrun --nproc-per-node 4 -m trainer.cli --shards shards/ --devices cuda:0,cuda:1

Each process owns one replica (one or two GPUs; the two-column split is in trainer/model.py) wrapped
in DistributedDataParallel; the pipeline reads shard_id=rank of num_shards=world. A single process
(no torchrun) is world size 1 and never touches torch.distributed.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def from_env() -> World:
    """The process's place in the job, from torchrun's environment variables."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")), local_size)


def restart_count() -> int:
    """How often torchrun has restarted this job's workers (they then resume from the checkpoint)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def init(world: World, backend: str) -> None:
    if world.distributed and not dist.is_initialized():
        dist.init_process_group(backend, rank=world.rank, world_size=world.size)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def leave(code: int = 0) -> NoReturn:
    """End a spawned worker now, its output flushed, without finalizing the interpreter. Call it last,
    after `shutdown`, with every result written and closed.

    For workers whose DDP model has a Python communication hook (`alexnet-bench comm`'s counter): in
    torch 2.13 a DDP model keeps the gloo process group, and its threads, alive after
    destroy_process_group, and finalizing the interpreter while those threads still hold the hook's
    Python futures aborts the process (SIGABRT, "terminate called without an active exception"): 14 of
    150 two-process runs on a loaded 2-core CPU, 0 of 150 when the worker leaves this way
    (tests/test_distributed.py checks that the group outlives destroy_process_group)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def free_port() -> int:
    """A free TCP port on this machine, for the MASTER_PORT of workers spawned here."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over ranks (in place); counts, not averages of averages, so metrics are exact."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (e.g. loader and RNG states for rank 0's checkpoint)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (e.g. a stop decision, so all ranks leave the loop together)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def replica_devices(devices: tuple[str, ...], world: World) -> tuple[str, ...]:
    """This process's devices: `devices` names local rank 0's; local rank r shifts every GPU index by
    r * len(devices), so 4 processes with --devices cuda:0,cuda:1 use GPUs 0-1, 2-3, 4-5, 6-7."""
    out = []
    for d in devices:
        dev = torch.device(d)
        if dev.type == "cuda":
            index = (dev.index or 0) + world.local_rank * len(devices)
            out.append(f"cuda:{index}")
        else:
            out.append(str(dev))
    return tuple(out)
