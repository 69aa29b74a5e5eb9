"""Shard discovery and validation, the per-epoch shard order, and the split across ranks.

Everything that can be checked before DALI starts is checked here, so a bad folder fails at once
with a one-line message instead of deep inside a pipeline: the shards exist and are readable, each
has its DALI index, the index agrees with the tar's size and with `manifest.json` (when present).
DALI reads local files only (no fsspec URLs).
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from pipeline.errors import PipelineError

MANIFEST = "manifest.json"
INDEX_VERSION = "v1.2"  # the text format of DALI's wds2idx (and tools/index.py)


@dataclass(frozen=True)
class Shard:
    path: str  # the tar
    index: str  # its DALI index file
    samples: int  # from the index header


def _tail(path: str, size: int = 4096) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - size))
        return f.read().decode("utf-8", "replace")


def _check_shard(tar: str) -> Shard:
    if not os.path.lexists(tar):
        raise PipelineError(f"{tar}: shard missing")
    try:
        with open(tar, "rb") as f:
            f.read(512)
        tar_size = os.path.getsize(tar)
    except OSError as e:
        raise PipelineError(f"{tar}: shard cannot be read ({e.strerror or e})") from e
    index = tar[: -len(".tar")] + ".idx"
    if not os.path.isfile(index):
        raise PipelineError(f"{tar}: no index file {os.path.basename(index)} beside it "
                            "(write it with `alexnet-prep index`)")
    try:
        with open(index, encoding="utf-8") as f:
            header = f.readline().split()
        last = [ln for ln in _tail(index).splitlines() if ln.strip()][-1].split()
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise PipelineError(f"{index}: index cannot be read ({e})") from e
    if len(header) != 2 or header[0] != INDEX_VERSION or not header[1].isdigit():
        raise PipelineError(f"{index}: not a DALI {INDEX_VERSION} index (header {' '.join(header)!r})")
    # Each sample line is groups of `<ext> <offset> <size> <name>`: the furthest byte must lie in the tar,
    # else the tar was truncated or rewritten after indexing (DALI would fail mid-epoch).
    try:
        end = max(int(last[i + 1]) + int(last[i + 2]) for i in range(0, len(last) - 3, 4))
    except (ValueError, IndexError):
        raise PipelineError(f"{index}: malformed last line") from None
    if end > tar_size:
        raise PipelineError(f"{tar}: shard is {tar_size} bytes but its index points to byte {end} "
                            "(truncated or rewritten after indexing)")
    return Shard(tar, index, int(header[1]))


def _check_manifest(root: str, split: str, shards: list[Shard]) -> None:
    path = os.path.join(root, MANIFEST)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            listed = json.load(f)["splits"][split]["shards"]
        counts = {s["name"]: int(s["samples"]) for s in listed}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"{path}: cannot read the {split} shard list ({e})") from e
    found = {os.path.basename(s.path): s for s in shards}
    missing = sorted(set(counts) - set(found))
    if missing:
        raise PipelineError(f"{os.path.join(root, missing[0])}: shard missing "
                            f"({len(missing)} of {len(counts)} listed in {MANIFEST})")
    extra = sorted(set(found) - set(counts))
    if extra:
        raise PipelineError(f"{found[extra[0]].path}: shard not listed in {MANIFEST}")
    for name, n in counts.items():
        if found[name].samples != n:
            raise PipelineError(f"{found[name].path}: index lists {found[name].samples} samples, "
                                f"{MANIFEST} {n}")


def discover(root: str, split: str) -> list[Shard]:
    """The `<split>-*.tar` shards of a folder, sorted by name, each validated (see module doc)."""
    if not os.path.isdir(root):
        raise PipelineError(f"{root}: shard folder missing")
    tars = sorted(glob.glob(os.path.join(glob.escape(root), f"{split}-*.tar")))
    if not tars:
        raise PipelineError(f"{root}: no {split}-*.tar shards")
    shards = [_check_shard(t) for t in tars]
    _check_manifest(root, split, shards)
    return shards


def epoch_order(shards: list[Shard], seed: int, epoch: int) -> list[Shard]:
    """The shard order of one training epoch: a pure function of (seed, epoch), equal on every rank."""
    perm = np.random.default_rng([seed, epoch]).permutation(len(shards))
    return [shards[i] for i in perm]


def rank_range(total: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """The samples [start, stop) DALI's readers give to `shard_id`: floor(total * i / num_shards)."""
    return total * shard_id // num_shards, total * (shard_id + 1) // num_shards


def batches_per_epoch(total: int, num_shards: int, batch_size: int) -> int:
    """Batches every rank runs per epoch: enough for the largest rank share, so ranks stay in step."""
    return math.ceil(math.ceil(total / num_shards) / batch_size)
