"""Start-up checks and resume planning: everything that can fail does so here, before any file is
written, with a one-line ConfigError.

    plan = prepare(cfg)             # settings, devices, shards, --init-from; writes nothing
    with hold_run_folder(plan):     # rank 0 holds <out>/.lock
        find_resume(plan)           # what the folder holds, and how this run continues it

Also the run folder's params.json (`write_params` once the run starts, `read_params` for
--resume and alexnet-eval), and the loader and model arguments a run's settings give, which
alexnet-eval shares.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tools import atomic
from tools import manifest as manifest_lib
from tools.lock import RunLock, RunLockedError
from trainer import checkpoint, distributed, metrics, weightfile
from trainer.config import RESUME_MUST_MATCH, ConfigError, TrainConfig, flag
from trainer.placement import replica

PARAMS = "params.json"
STATS = ("pca.json", "mean.npy")  # written by `alexnet-prep pca-stats`; the pipeline needs both


@dataclass
class Plan:
    """What `prepare` found: the checked inputs of a run."""

    cfg: TrainConfig
    world: distributed.World
    devices: tuple[str, ...]  # this process's replica
    manifest: dict[str, Any]
    num_classes: int
    resume_from: tuple[dict[str, Any], Path] | None = None
    resumed_by_restart: bool = False
    # The folder holds an attempt killed before its first checkpoint: start at step 0 over its logs.
    restart_empty: bool = False
    init_weights: dict[str, Tensor] | None = None  # --init-from's state dict, read before any write


def check_shards(shards: str) -> dict[str, Any]:
    try:
        m = manifest_lib.load(shards)
    except manifest_lib.ManifestError as e:
        raise ConfigError(f"--shards: {e}") from e
    for split in ("train", "val"):
        if not m["splits"].get(split, {}).get("shards"):
            raise ConfigError(f"--shards: {shards} has no {split} shards (run `alexnet-prep shard`)")
    for name in STATS:
        if not (Path(shards) / name).exists():
            raise ConfigError(f"--shards: {shards}/{name} is missing "
                              f"(run `alexnet-prep pca-stats --shards {shards}`)")
    if not m["classes"]:
        raise ConfigError(f"--shards: {shards}/manifest.json lists no classes")
    return m


def prepare(cfg: TrainConfig, world: distributed.World | None = None) -> Plan:
    """Every start-up check that needs no lock; raises ConfigError (one line), writes nothing."""
    world = world or distributed.from_env()
    cfg.check(world.size)
    # --parallel hybrid: one device per process (its default too), as the 2014 scheme runs
    devices = replica(cfg.devices, world, 1 if cfg.parallel == "hybrid" else cfg.columns)
    m = check_shards(cfg.shards)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file")
    init_weights = None
    if cfg.init_from and not cfg.resume:  # a resumed run continues from its checkpoint instead
        try:
            init_weights = weightfile.load_weights(cfg.init_from)
        except checkpoint.CheckpointError as e:
            raise ConfigError(f"--init-from: {e}") from e
    return Plan(cfg, world, devices, m, len(m["classes"]), init_weights=init_weights)


def shards_identity(plan: Plan) -> dict[str, Any]:
    """What names the data a run trains on (kept in params.json and in every checkpoint)."""
    m = plan.manifest
    return {"path": str(Path(plan.cfg.shards).resolve()),
            "train_hash": manifest_lib.shard_list_hash(m, "train"),
            "val_hash": manifest_lib.shard_list_hash(m, "val"),
            "classes": plan.num_classes}


def read_params(out: Path) -> dict[str, Any]:
    try:
        params = json.loads((out / PARAMS).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--out: {out / PARAMS} is unreadable ({e})") from e
    if not isinstance(params, dict) or not isinstance(params.get("config"), dict):
        raise ConfigError(f"--out: {out / PARAMS} is not an alexnet-train params.json")
    return params


def git_revision() -> str:
    """HEAD of the checkout (with -dirty), or $GIT_REVISION where there is no .git (the Docker image)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return os.environ.get("GIT_REVISION", "unknown")
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("-dirty" if dirty else "")


def write_params(plan: Plan, resumed: bool) -> dict[str, Any]:
    m = plan.manifest
    params = {
        "config": plan.cfg.to_dict(),
        "git": git_revision(),
        "shards": {**shards_identity(plan),
                   "manifest_sha256": hashlib.sha256((Path(plan.cfg.shards) / manifest_lib.MANIFEST)
                                                     .read_bytes()).hexdigest(),
                   "train_samples": m["splits"]["train"]["samples"],
                   "val_samples": m["splits"]["val"]["samples"]},
        "world_size": plan.world.size,
        "devices": list(plan.devices),
        "machine": metrics.machine(),
        "argv": sys.argv,
        "resumed": resumed,
        "time": time.time(),
    }
    atomic.write_json(str(Path(plan.cfg.out) / PARAMS), params)
    return params


def find_resume(plan: Plan) -> None:
    """What the run folder holds and how this run continues it. Called with the folder's lock held,
    so no other run changes it meanwhile; raises ConfigError."""
    cfg, out = plan.cfg, Path(plan.cfg.out)
    restarted = distributed.restart_count() > 0
    has_checkpoint = bool(checkpoint.candidates(out))
    if not has_checkpoint and (out / PARAMS).exists():
        # Killed before its first checkpoint: nothing to resume, nothing worth keeping but the
        # settings. The same command (with or without --resume) starts it again from step 0.
        saved = read_params(out)
        check_same_run(cfg, TrainConfig.from_dict(saved["config"]),
                       "--out: {out} holds a run stopped before its first checkpoint, started with other "
                       "settings: {flag} {saved}, not {now}; rerun it with those or choose another --out")
        check_same_shards(plan, saved.get("shards", {}), out / PARAMS)
        plan.restart_empty = True
        return
    if has_checkpoint and not (cfg.resume or restarted):
        raise ConfigError(f"--out: {out} already holds a run; pass --resume to continue it "
                          "or choose another --out")
    if cfg.resume or restarted:
        try:
            found = checkpoint.load_latest(out)
        except checkpoint.CheckpointError as e:
            raise ConfigError(f"--resume: {e}") from e
        if found is None and cfg.resume and not restarted:
            raise ConfigError(f"--resume: {out} has no checkpoint to resume from")
        if found is not None:
            check_resumable(plan, found[0], found[1])
        plan.resume_from, plan.resumed_by_restart = found, restarted


RESUME_MISMATCH = ("--resume: {flag} is {now} but the run in {out} used {saved}; "
                   "a resumed run must keep it")


def check_same_run(cfg: TrainConfig, saved: TrainConfig, message: str = RESUME_MISMATCH) -> None:
    for name in RESUME_MUST_MATCH:
        if getattr(saved, name) != getattr(cfg, name):
            raise ConfigError(message.format(flag=f"--{flag(name)}", now=getattr(cfg, name), out=cfg.out,
                                             saved=getattr(saved, name)))


def check_same_shards(plan: Plan, saved: dict[str, Any], source: Path) -> None:
    """A run continues on the shards it started on: same train shard list (names + sha256) and the
    same class count (else the classifier does not even load)."""
    now = shards_identity(plan)
    if all(saved.get(k) in (None, now[k]) for k in ("train_hash", "classes")):
        return
    raise ConfigError(f"--resume: {source} was trained on {saved.get('path', '?')} (train shards "
                      f"{str(saved.get('train_hash'))[:12]}, {saved.get('classes')} classes), not on "
                      f"{now['path']} (train shards {now['train_hash'][:12]}, {now['classes']} classes); "
                      "resume with the same --shards or choose another --out")


def check_resumable(plan: Plan, state: dict[str, Any], path: Path) -> None:
    cfg, world = plan.cfg, plan.world
    check_same_run(cfg, TrainConfig.from_dict(state["config"]))
    saved = state.get("shards")
    if saved is None:  # checkpoints written before they carried it: the run's params.json
        params = Path(cfg.out) / PARAMS
        saved = read_params(Path(cfg.out)).get("shards", {}) if params.exists() else {}
        saved = {**saved, "classes": state.get("num_classes", saved.get("classes"))}
    check_same_shards(plan, saved, path)
    if state["batch"] and state["world_size"] != world.size:
        raise ConfigError(f"--resume: {path.name} was written mid-epoch by {state['world_size']} "
                          f"process(es); resume it with the same number (not {world.size})")


def loader_args(cfg: TrainConfig, world: distributed.World, devices: tuple[str, ...]) -> dict[str, Any]:
    """What the train and eval loaders of this rank share: its 1/world share of the data
    (shard_id=rank), on the replica's first GPU (DALI's GPU pipeline) or on the CPU."""
    device = torch.device(devices[0])
    gpu = device.type == "cuda"
    return {"batch_size": cfg.batch_size // world.size, "device": "gpu" if gpu else "cpu",
            "device_id": (device.index or 0) if gpu else None, "shard_id": world.rank,
            "num_shards": world.size, "channels_last": cfg.channels_last, "mean": cfg.mean,
            # bf16 runs take bf16 input; otherwise fp32, the paper's input precision.
            "dtype": "bfloat16" if cfg.precision == "bf16" else "float32"}


def model_args(cfg: TrainConfig) -> dict[str, Any]:
    """The architecture switches of a run, as AlexNet's keyword arguments (also for alexnet-eval)."""
    return {"norm": cfg.norm, "pool": cfg.pool, "columns": cfg.columns, "dropout": cfg.dropout,
            "activation": cfg.activation, "conv6": cfg.conv6}


LOCK_NAME = ".lock"  # in the run folder, while a run writes into it


@contextmanager
def hold_run_folder(plan: Plan) -> Iterator[None]:
    """Rank 0 holds `--out`'s lock for the whole run (tools.lock): a second run into the same folder
    stops at once instead of interleaving its checkpoints and logs with this one's. A folder this
    call created is removed again if the run stops before writing anything into it."""
    out = Path(plan.cfg.out)
    if not plan.world.main:
        yield
        return
    created = not out.exists()
    try:
        lock = RunLock(out / LOCK_NAME, "alexnet-train", log=lambda m: warnings.warn(m, stacklevel=2))
        lock.acquire()
    except RunLockedError as e:
        raise ConfigError(f"--out: {e}") from None
    except OSError as e:  # read-only folder, a path under a file, no space for even the lock
        raise ConfigError(f"--out: cannot write into {out} ({e.strerror or e})") from None
    try:
        yield
    finally:
        lock.release()
        if created:
            try:
                out.rmdir()  # only if empty: a failed start leaves nothing behind
            except OSError:
                pass
