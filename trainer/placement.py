"""Placement and precision: which devices this process's replica runs on, and with what arithmetic.

    devices = replica(cfg.devices, world)      # checked, shifted to the local rank under torchrun
    autocast = set_precision("bf16")           # a factory of the autocast context for a device

Shared by alexnet-train (trainer/startup.py), alexnet-eval and the benchmarks, so that every
command places a replica and picks its arithmetic the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

import paper
from trainer import distributed
from trainer.config import ConfigError


def own_gpus(world: distributed.World) -> bool:
    """True when this process sees fewer GPUs than there are processes on its node: a launcher
    (Slurm's --gpus-per-task, a per-process CUDA_VISIBLE_DEVICES) gave each process its own, so
    device indices are not shifted by the local rank."""
    return 0 < torch.cuda.device_count() < world.local_size


def default_devices(world: distributed.World) -> tuple[str, ...]:
    """Two GPUs per replica as in the paper when every local process can have two, else one (both
    columns as grouped kernels on it), else the CPU. A process given its own GPUs (`own_gpus`) uses
    them from cuda:0: one visible GPU is never a reason to fall back to the CPU."""
    visible = torch.cuda.device_count()
    n = visible if own_gpus(world) else visible // max(world.local_size, 1)
    if n == 0:
        return ("cpu",)
    return tuple(f"cuda:{i}" for i in range(min(n, paper.COLUMNS)))


def check_devices(devices: tuple[str, ...], name: str = "--devices") -> None:
    present = torch.cuda.device_count()
    types = set()
    for d in devices:
        try:
            dev = torch.device(d)
        except RuntimeError as e:
            raise ConfigError(f"{name}: {d!r} is not a device name (e.g. cpu, cuda:0)") from e
        if dev.type not in ("cpu", "cuda"):
            raise ConfigError(f"{name}: {d} is not supported (use cpu or cuda:N)")
        if dev.type == "cuda" and (dev.index or 0) >= present:
            raise ConfigError(f"{name}: {d} is not available (this machine has {present} CUDA device(s))")
        types.add(dev.type)
    if len(types) > 1:
        raise ConfigError(f"{name}: cannot mix the CPU and GPUs in one replica ({','.join(devices)})")


def replica(devices: tuple[str, ...], world: distributed.World,
            columns: int = paper.COLUMNS) -> tuple[str, ...]:
    """This process's checked devices: `devices` (or the default) shifted to its local rank, unless a
    launcher gave the process its own GPUs (`own_gpus`). `columns`=1 (the one-column net) takes one
    device by default."""
    name = "--devices" if devices else "default devices"
    if not devices and torch.cuda.device_count() == 0:
        warnings.warn(f"no GPU visible (torch {torch.__version__}, CUDA build {torch.version.cuda}): "
                      "running on the CPU", stacklevel=2)
    devices = devices or default_devices(world)[:columns]
    check_devices(devices, name)  # the names first, so a typo is reported as such
    if not own_gpus(world):
        devices = distributed.replica_devices(devices, world)
    check_devices(devices, f"{name} of local rank {world.local_rank}" if world.local_rank else name)
    return devices


def set_precision(precision: str) -> Callable[[torch.device], AbstractContextManager]:
    """Select the arithmetic; returns a factory of the autocast context for a device.

    Storage stays fp32 in every mode. tf32 lets cuDNN/cuBLAS use TF32 tensor cores (PyTorch's own
    default for convolutions); bf16 autocasts matmuls/convs to bfloat16.
    """
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
    return lambda device: torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
