"""Validation of the loaders' arguments (before any DALI work) and the seeds and thread counts they use."""

from __future__ import annotations

import os

import numpy as np

from paper import STORED_SIZE
from pipeline.errors import PipelineError
from pipeline.graph import DTYPES
from pipeline.stats import MEAN_MODES


def check_device(device: str, device_id: int | None) -> int | None:
    """The CUDA device to use (None on the CPU), or a one-line error before any DALI work."""
    if device == "cpu":
        return None
    if device != "gpu":
        raise PipelineError(f"device must be 'cpu' or 'gpu', got {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise PipelineError("device='gpu' but CUDA is not available on this machine (use device='cpu')")
    return torch.cuda.current_device() if device_id is None else device_id


def default_dtype(device: str) -> str:
    # float16 halves what the GPU reads; on the CPU, DALI converts to half in software (measured
    # +0.4 ms of CPU per 224x224 image, ~+65%), and CPU training computes in float32 anyway.
    return "float16" if device == "gpu" else "float32"


def local_ranks() -> int:
    """Processes sharing this node: torchrun's LOCAL_WORLD_SIZE, 1 outside torchrun (or if unreadable)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_threads(device: str) -> int:
    """DALI worker threads for one process: the cores this process may use (its CPU affinity), divided
    among the node's local ranks, each of which runs its own pipelines; at least one. Without the
    division 8 ranks on a node would each start a thread per core, 8x oversubscribing it. A launcher
    that already pins each rank to its own cores should pass `num_threads` instead."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // local_ranks())
    # CPU path: one DALI worker per core (decode is the bottleneck); GPU path: the threads only do
    # Huffman decoding and small per-sample work for one GPU.
    return share if device == "cpu" else min(share, 8)


def derive_seed(*parts: int) -> int:
    """A 31-bit DALI seed from integers, e.g. (seed, epoch, rank)."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def check_common(batch_size: int, shard_id: int, num_shards: int, dtype: str, mean: str, crop_size: int,
                 num_threads: int | None, prefetch: int) -> None:
    """The options both loaders share; a one-line PipelineError before any file is opened."""
    if batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1, got {batch_size}")
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise PipelineError(f"need 0 <= shard_id < num_shards, got shard_id={shard_id} "
                            f"num_shards={num_shards}")
    if dtype not in DTYPES:
        raise PipelineError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if mean not in MEAN_MODES:
        raise PipelineError(f"mean must be one of {MEAN_MODES}, got {mean!r}")
    if not 1 <= crop_size <= STORED_SIZE:
        raise PipelineError(f"crop_size must be in 1..{STORED_SIZE}, got {crop_size}")
    if num_threads is not None and num_threads < 1:
        raise PipelineError(f"num_threads must be >= 1, got {num_threads}")
    if prefetch < 1:
        raise PipelineError(f"prefetch must be >= 1, got {prefetch}")
