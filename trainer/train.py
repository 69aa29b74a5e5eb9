"""Training (§5): SGD, batch 128, momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 when the
validation error stops improving, ~90 epochs; then the ten-patch evaluation of §6.

    alexnet-train --shards shards/ --out runs/paper                      # the paper's recipe
    alexnet-train --shards shards/ --out runs/demo --epochs 8 --init kaiming --batch-size 32   # CPU demo
    torchrun --nproc-per-node 4 -m trainer.cli --shards shards/ --out runs/x4 --devices cuda:0,cuda:1
    alexnet-train --shards shards/ --out runs/paper --resume             # continue after a kill

Plain functions in the order a run calls them: `prepare` (every check, before any work), `load_data`,
`build_model`, `train_one_epoch`, `main`. The run folder gets params.json (settings, git revision,
shard manifest hash), metrics.jsonl, TensorBoard events and checkpoints/ (trainer/checkpoint.py).

Faults (README, "When things go wrong"): rank 0 holds `<out>/.lock` for the whole run
(tools/lock.py); SIGTERM/SIGINT stop at the next step with a checkpoint (exit 128 + signal); no
checkpoint is written with non-finite weights; --resume refuses other shards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

import paper
from pipeline.errors import PipelineError
from pipeline.loader import PAD_LABEL
from tools import atomic
from tools import manifest as manifest_lib
from tools.lock import RunLock, RunLockedError
from trainer import checkpoint, distributed, hybrid, metrics, optim, weightfile
from trainer.config import RESUME_MUST_MATCH, ConfigError, TrainConfig, flag, paper_differences
from trainer.evaluate import evaluate
from trainer.model import AlexNet

PARAMS = "params.json"
STATS = ("pca.json", "mean.npy")  # written by `alexnet-prep pca-stats`; the pipeline needs both


class StopRun(Exception):
    """Raised inside the loop when --max-steps is reached (after the checkpoint is written)."""


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the run after it wrote a checkpoint at the current step.

    `alexnet-train` exits with 128 + the signal's number (143, 130), the shell's convention, so a
    scheduler sees that the run did not finish; the same command with --resume continues it exactly.
    """

    def __init__(self, signum: int, step: int, out: str) -> None:
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step} with a checkpoint; "
                         f"continue with the same command and --resume ({out})")


# ---------------------------------------------------------------------------------------------
# Start-up checks: everything that can fail does so here, before any file is written.


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
            init_weights = checkpoint.load_weights(cfg.init_from)
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


# ---------------------------------------------------------------------------------------------
# Data, model, optimisation.


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


def augment_args(cfg: TrainConfig) -> dict[str, Any]:
    """The training loader's §4.1 augmentation under --augment and --lighting: random crops, flips
    and PCA lighting (the paper's), or the centre crop alone."""
    if cfg.augment == "none":
        return {"crop": "center", "mirror": False, "lighting": False}
    return {"crop": "random", "mirror": True, "lighting": False if cfg.lighting == "off" else cfg.lighting}


def load_data(cfg: TrainConfig, world: distributed.World, devices: tuple[str, ...],
              loader_state: str | None = None) -> tuple[Any, Callable[[bool], Iterable[Any]]]:
    """This rank's training loader (continued from `loader_state`, a `Loader.state()` string) and a
    factory of its validation loaders (centre crop, or ten crops with True), each made once per run."""
    import pipeline

    common = loader_args(cfg, world, devices)
    train = pipeline.train_loader(cfg.shards, seed=cfg.seed, checkpoint=loader_state, **common,
                                  **augment_args(cfg))

    @functools.cache  # one loader, so one DALI pipeline, per crop mode for the whole run
    def val(ten_crop: bool) -> Iterable[Any]:
        return pipeline.eval_loader(cfg.shards, crop="ten" if ten_crop else "center", **common)

    return train, val


def loader_state(loader: Any) -> str | None:
    """The loader's resumable position (`Loader.state()`: epoch, batch and DALI's checkpoint)."""
    state = getattr(loader, "state", None)
    return state() if callable(state) else None


def model_args(cfg: TrainConfig) -> dict[str, Any]:
    """The architecture switches of a run, as AlexNet's keyword arguments (also for alexnet-eval)."""
    return {"norm": cfg.norm, "pool": cfg.pool, "columns": cfg.columns, "dropout": cfg.dropout,
            "activation": cfg.activation, "conv6": cfg.conv6}


def build_model(cfg: TrainConfig, num_classes: int, devices: tuple[str, ...]) -> nn.Module:
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and every placement
    model = AlexNet(num_classes=num_classes, devices=devices, init=cfg.init, lrn_variant=cfg.lrn,
                    **model_args(cfg))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def load_init_weights(model: nn.Module, weights: dict[str, Tensor], source: str) -> str | None:
    """Copy --init-from's weights into a freshly built `model` (fine-tuning). When only the last
    layer's shapes differ (another class count), that layer keeps its fresh initialisation; the
    returned line says so. Any other difference raises ConfigError naming the first one."""
    own = model.state_dict()
    head = next(reversed(own)).rsplit(".", 1)[0]  # the classifier: "fc8" in AlexNet
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    if missing or extra:
        raise ConfigError(f"--init-from: {source} does not fit this model ("
                          + ", ".join(filter(None, [f"missing {missing[0]}" if missing else "",
                                                    f"unexpected {extra[0]}" if extra else ""]))
                          + f"; {len(missing)} missing, {len(extra)} unexpected keys)")
    differ = [k for k in own if weights[k].shape != own[k].shape]
    if any(k.rsplit(".", 1)[0] != head for k in differ):
        k = next(k for k in differ if k.rsplit(".", 1)[0] != head)
        raise ConfigError(f"--init-from: {source}: {k} has shape {tuple(weights[k].shape)}, "
                          f"this model's is {tuple(own[k].shape)}")
    model.load_state_dict({k: (own[k] if k in differ else weights[k]) for k in own})
    if not differ:
        return None
    classes = weights[differ[0]].shape[0]
    return (f"--init-from: {source} has {classes} classes, these shards {own[differ[0]].shape[0]}: "
            f"{head} is replaced by a freshly initialised layer, every other layer is loaded")


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay covers every parameter of the paper's net, biases included: §5's rule names no
    exception. BatchNorm's scale and shift (--norm batch) are not decayed: LRN, which they replace,
    has no learned parameters, so decaying them would add a regulariser the paper's net does not
    have, and the ablation would change two things (torchvision's classification references expose
    the same choice as --norm-weight-decay). One param group otherwise, so the optimizer state of
    existing checkpoints is unchanged."""
    bn = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    if not bn:
        return optim.make(cfg.sgd, model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    bn_ids = {id(p) for p in bn}
    groups = [{"params": [p for p in model.parameters() if id(p) not in bn_ids]},
              {"params": bn, "weight_decay": 0.0}]
    return optim.make(cfg.sgd, groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    if cfg.lr_policy == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones()),
                                                    gamma=paper.LR_DROP_FACTOR)
    # min_lr caps the drops at lr_drops (§5: three); eps (1e-8 absolute, torch's default) absorbs
    # the rounding between 0.01*0.1*0.1*0.1 and 0.01*0.1**3.
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=paper.LR_DROP_FACTOR, patience=cfg.lr_patience,
        threshold=cfg.lr_threshold, threshold_mode="abs",
        min_lr=cfg.lr * paper.LR_DROP_FACTOR ** cfg.lr_drops)


def scheduler_step(scheduler: Any, val_top1_err: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_top1_err)
    else:
        scheduler.step()


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


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Dropout masks (and anything else random in the loop) from (seed, epoch, rank) alone."""
    s = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclass
class Position:
    """Where the run is: optimizer steps done, current epoch, batches done in it, and the epoch's
    training loss and top-1 hits so far: reduced (loss sum, samples, hits) of past log intervals, and
    this rank's unreduced [loss sum, samples, hits] of the current interval, kept on the device. All
    of it goes into checkpoints, so a resumed run logs the very numbers an uninterrupted one would.
    (Checkpoints from before the hits were counted restore them as NaN: that epoch's train error is
    then not logged rather than wrong.)"""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    samples: float = 0.0
    hits: float = 0.0
    pending: Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))

    def add(self, loss_sum: float, samples: float, hits: float) -> None:
        """Fold one reduced log interval into the epoch's totals."""
        self.loss_sum += loss_sum
        self.samples += samples
        self.hits += hits


def to_device(images: Tensor, labels: Tensor, device: torch.device,
              channels_last: bool) -> tuple[Tensor, Tensor]:
    if device.type == "cuda" and images.device.type == "cpu":
        images, labels = images.pin_memory(), labels.pin_memory()  # pinned: the copy can be asynchronous
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True).long()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
               autocast: Callable[[torch.device], AbstractContextManager]) -> Tensor:
    """One SGD step; returns [loss sum, real samples, top-1 hits] on the device (no host sync). The
    hits are those of the training forward pass (dropout and augmentation on), as the field logs them.

    Padding (label PAD_LABEL) adds nothing: the loss is the sum over real samples divided by the
    nominal batch, so with n processes DDP's gradient average equals one process's on the global batch.
    """
    with autocast(labels.device):
        logits = model(images)
    loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=PAD_LABEL, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    (loss_sum / labels.shape[0]).backward()
    optimizer.step()
    hits = (logits.detach().argmax(1) == labels).sum()  # PAD_LABEL (-1) never equals a class
    return torch.stack([loss_sum.detach(), (labels != PAD_LABEL).sum(), hits]).double()


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: Iterable[tuple[Tensor, Tensor]], pos: Position, device: torch.device, *,
                    global_batch: int, log_every: int,
                    autocast: Callable[[torch.device], AbstractContextManager] | None = None,
                    channels_last: bool = False, log: Callable[[dict[str, Any]], None] | None = None,
                    every_step: Callable[[Position], None] | None = None, total: int | None = None,
                    progress: bool = False) -> dict[str, float]:
    """One pass over `loader` (the rest of it after a resume); advances `pos`.

    `loader` is this epoch's batches; labels PAD_LABEL mark padding (see train_step).

    The loss stays on the device between log intervals; every `log_every` steps one all_reduce of
    (loss sum, sample count) gives the exact mean over all ranks, and that `.item()` is the only host
    sync. `every_step` runs after each step (checkpoints, --max-steps) and may raise StopRun.
    """
    model.train()
    autocast = autocast or (lambda d: torch.autocast(d.type, enabled=False))
    wait = metrics.DataWait()
    pos.pending = pos.pending.to(device)
    images_done, t_log = 0, time.perf_counter()
    # disable= only when asked: tqdm reads TQDM_DISABLE as a default, which an explicit argument overrides.
    bar = tqdm(total=total, initial=pos.batch, desc=f"epoch {pos.epoch}", dynamic_ncols=True, leave=False,
               **({} if progress else {"disable": True}))
    try:
        for images, labels in wait.wrap(loader):
            images, labels = to_device(images, labels, device, channels_last)
            pos.pending += train_step(model, optimizer, images, labels, autocast)
            pos.step, pos.batch = pos.step + 1, pos.batch + 1
            images_done += global_batch
            bar.update()
            if pos.step % log_every == 0:
                # The interval's one sync.
                loss_sum, n, hits = distributed.all_reduce_sum(pos.pending).tolist()
                pos.pending.zero_()
                if not math.isfinite(loss_sum):
                    raise FloatingPointError(f"training loss is {loss_sum / n} at step {pos.step} "
                                             "(diverged; try a lower --lr)")
                pos.add(loss_sum, n, hits)
                now = time.perf_counter()
                record = {"kind": "train", "epoch": pos.epoch, "step": pos.step, "loss": loss_sum / n,
                          **_top1_err(hits, n),
                          "lr": optimizer.param_groups[0]["lr"], "images_per_s": images_done / (now - t_log),
                          **wait.interval()}
                images_done, t_log = 0, now
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2g}",
                                img_s=f"{record['images_per_s']:.0f}", wait=f"{record['data_wait']:.0%}")
                if log:
                    log(record)
            if every_step:
                every_step(pos)
    finally:
        bar.close()
    loss_sum, n, hits = distributed.all_reduce_sum(pos.pending).tolist()
    pos.pending.zero_()
    pos.add(loss_sum, n, hits)
    epoch_err = {f"train_{k}": v for k, v in _top1_err(pos.hits, pos.samples).items()}
    return {"train_loss": pos.loss_sum / max(pos.samples, 1), **epoch_err, **wait.summary()}


def _top1_err(hits: float, n: float) -> dict[str, float]:
    """{"top1_err": ...}, or nothing where the hits are unknown (NaN: resumed from an older checkpoint)."""
    return {"top1_err": 1 - hits / n} if n and math.isfinite(hits) else {}


# ---------------------------------------------------------------------------------------------
# The run.


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


def unwrap(model: nn.Module) -> nn.Module:
    """The AlexNet (or HybridAlexNet) inside DDP / torch.compile wrappers: its state dict has no wrapper
    prefixes."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def parallelize(model: nn.Module, cfg: TrainConfig, world: distributed.World,
                devices: tuple[str, ...]) -> nn.Module:
    """`model` (weights equal on every rank) as this run's torchrun job trains it: DDP over replicas,
    or the 2014 hybrid scheme (trainer/hybrid.py); alone, `model` itself."""
    if not world.distributed:
        return model
    device = torch.device(devices[0])
    if cfg.parallel == "hybrid":
        return hybrid.parallelize(model, hybrid.mesh(world.size, device), device)
    # Multi-device replicas (and the CPU) take device_ids=None. DDP averages the gradients over
    # ranks, so each rank's loss over its batch / world reproduces the global batch's.
    single_gpu = len(devices) == 1 and device.type == "cuda"
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if single_gpu else None)


def hybrid_model(model: nn.Module) -> hybrid.HybridAlexNet | None:
    """The HybridAlexNet inside `model` (DDP, torch.compile), or None if the run is not a hybrid one."""
    inner = unwrap(model)
    return inner if isinstance(inner, hybrid.HybridAlexNet) else None


def weights_state(model: nn.Module) -> dict[str, Tensor]:
    """The one-device AlexNet's state dict (the names every placement loads). Under --parallel
    hybrid it gathers fc6/fc7 from all ranks: a collective, so every rank calls it."""
    split = hybrid_model(model)
    return hybrid.full_state_dict(split) if split is not None else unwrap(model).state_dict()


def optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """The optimizer's state dict in the one-device AlexNet's layout (a collective under hybrid)."""
    split = hybrid_model(model)
    return hybrid.full_optimizer_state(optimizer, split) if split is not None else optimizer.state_dict()


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, saved: dict[str, Any]) -> None:
    split = hybrid_model(model)
    if split is not None:
        hybrid.load_optimizer_state(optimizer, split, saved)
    else:
        optimizer.load_state_dict(saved)


def make_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, pos: Position, loader: Any,
               cfg: TrainConfig, num_classes: int, world: distributed.World,
               devices: tuple[str, ...], shards: dict[str, Any] | None = None,
               weights: dict[str, Tensor] | None = None) -> dict[str, Any] | None:
    """The checkpoint state on rank 0 (None elsewhere). Every rank must call it: it gathers each
    rank's RNG (of its replica's `devices`) and loader states, which differ (dropout masks, shard_id),
    and under --parallel hybrid the split layers and their momentum. `weights`: `weights_state(model)`,
    if already at hand."""
    per_rank = distributed.all_gather({"rng": checkpoint.rng_state(devices), "loader": loader_state(loader),
                                       "pending": pos.pending.cpu()})
    weights = weights if weights is not None else weights_state(model)
    momentum = optimizer_state(optimizer, model)
    if not world.main:
        return None
    return {
        "model": weights,
        "optimizer": momentum,
        "scheduler": scheduler.state_dict(),
        "step": pos.step, "epoch": pos.epoch, "batch": pos.batch,
        "epoch_loss": (pos.loss_sum, pos.samples),
        "epoch_hits": pos.hits,
        "world_size": world.size,
        "rng": [r["rng"] for r in per_rank],
        "loader": [r["loader"] for r in per_rank],
        "pending": [r["pending"] for r in per_rank],
        "config": cfg.to_dict(),
        "num_classes": num_classes,
        "shards": shards,  # what --resume checks the new --shards against (shards_identity)
    }


def nonfinite_parameter(weights: dict[str, Tensor]) -> str | None:
    """The first tensor of a state dict holding a NaN or an infinity, or None. One host sync per
    tensor: run at checkpoint time only, where it costs nothing next to writing ~700 MB."""
    for name, t in weights.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


class StopSignals:
    """SIGTERM and SIGINT (a scheduler's preemption, `docker compose stop`, Ctrl-C) ask the loop to
    stop at the next step with a checkpoint, instead of killing it wherever it is. A second signal
    acts at once (the previous handlers are back after the first)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal.signal's own restriction
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def __exit__(self, *_exc: object) -> None:
        self._restore()

    def requested(self, world: distributed.World, device: torch.device) -> int:
        """The signal to stop for (0: none), agreed by all ranks: a collective, so every rank must
        call it at the same step."""
        if not world.distributed:
            return self.signum
        ranks = distributed.all_reduce_sum(torch.tensor([1 if self.signum else 0], device=device)).item()
        return (self.signum or signal.SIGTERM) if ranks else 0


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


def main(cfg: TrainConfig, world: distributed.World | None = None) -> dict[str, Any]:
    """Run (or continue) training; returns the last epoch's metrics (and the 10-crop ones).

    Raises ConfigError, before anything is written, on any bad input.
    """
    plan = prepare(cfg, world)
    with hold_run_folder(plan), StopSignals() as stop:
        return run(plan, stop)


def run(plan: Plan, stop: StopSignals) -> dict[str, Any]:
    """The run itself, with the folder's lock held (`main`)."""
    find_resume(plan)
    cfg, world, devices = plan.cfg, plan.world, plan.devices
    if world.main:
        removed = checkpoint.remove_temp_files(cfg.out)
        if removed:
            warnings.warn(f"removed {len(removed)} temp file(s) of an interrupted write in {cfg.out}: "
                          f"{', '.join(p.name for p in removed)}", stacklevel=1)
    device = torch.device(devices[0])
    state = plan.resume_from[0] if plan.resume_from else None
    pos = Position()
    if state is not None:
        pos = Position(state["step"], state["epoch"], state["batch"], *state["epoch_loss"],
                       hits=state.get("epoch_hits", math.nan))
    mid_epoch = state is not None and pos.batch > 0
    # A mid-epoch checkpoint continues the loader where it stopped; an end-of-epoch one starts the
    # next epoch from (seed, epoch), which is what the loader would produce anyway. Built first:
    # the loaders check the shards too, and a bad one must fail before anything is written.
    try:
        train_loader, val_loader = load_data(cfg, world, devices,
                                             state["loader"][world.rank] if mid_epoch else None)
    except PipelineError as e:
        raise ConfigError(f"--shards: {e}") from e

    if device.type == "cuda":
        torch.cuda.set_device(device)
    distributed.init(world, "nccl" if device.type == "cuda" else "gloo")
    run_log = None
    try:
        autocast = set_precision(cfg.precision)
        model = build_model(cfg, plan.num_classes, devices)
        if state is None and plan.init_weights is not None:
            said = load_init_weights(unwrap(model), plan.init_weights, cfg.init_from)
            if said and world.main:
                tqdm.write(said, file=sys.stderr)
        if state is not None:
            model.load_state_dict(state["model"])  # every placement's checkpoint: the one-device names
        model = parallelize(model, cfg, world, devices)
        # The hybrid's split layers run collectives in their forward; evaluation, where the ranks'
        # batch counts may differ, uses a plain copy with the gathered weights instead (built now,
        # before the loop's RNG is seeded).
        eval_net = build_model(cfg, plan.num_classes, devices) if hybrid_model(model) else None
        optimizer = make_optimizer(cfg, model)
        scheduler = make_scheduler(cfg, optimizer)
        if state is not None:
            load_optimizer_state(optimizer, model, state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        if cfg.compile:
            model = torch.compile(model)

        out = Path(cfg.out)
        if world.main:
            out.mkdir(parents=True, exist_ok=True)
            resumed = state is not None or plan.resumed_by_restart or plan.restart_empty
            if resumed:
                # Lines the killed run logged after its checkpoint (all of them if it had none).
                metrics.truncate(out, pos.step, pos.epoch)
            if state is None and resumed:
                warnings.warn(f"{out} holds a run stopped before its first checkpoint: starting it again "
                              "from step 0", stacklevel=1)
            params = write_params(plan, resumed=state is not None)
            run_log = metrics.RunLog(out, purge_step=pos.step + 1 if resumed else None)
            run_log.settings(params, paper_differences(params["config"]), pos.step)
            if state is not None:
                tqdm.write(f"resuming {out} from {plan.resume_from[1]} (step {pos.step}, epoch {pos.epoch}, "
                           f"batch {pos.batch} of it); logs in {out / metrics.METRICS}", file=sys.stderr)
                run_log.write({"kind": "resume", "step": pos.step, "epoch": pos.epoch, "batch": pos.batch,
                               "checkpoint": str(plan.resume_from[1]), "restart": plan.resumed_by_restart})
        log = run_log.write if run_log else None
        steps_per_epoch = len(train_loader)

        shards = shards_identity(plan)
        # What best/final.safetensors carry besides the weights: switches, classes, input statistics.
        file_meta = weightfile.run_metadata(cfg, plan.manifest, git_revision()) if world.main else {}

        def save(weights: dict[str, Tensor] | None = None) -> None:
            # Every rank checks (DDP keeps the weights equal, and the hybrid's are gathered on every
            # rank, so all stop together): a checkpoint with NaN weights would make every later
            # --resume diverge from the start.
            weights = weights if weights is not None else weights_state(model)
            bad = nonfinite_parameter(weights)
            if bad is not None:
                raise FloatingPointError(f"non-finite weights ({bad}) at step {pos.step}: diverged (try "
                                         "a lower --lr); no checkpoint written for it, earlier ones are kept")
            s = make_state(model, optimizer, scheduler, pos, train_loader, cfg, plan.num_classes, world,
                           devices, shards, weights)
            if s is not None:
                checkpoint.save(out, s, pos.step, pos.epoch, pos.batch)

        def check_stop_signal() -> None:
            signum = stop.requested(world, device)
            if signum:
                save()
                raise Interrupted(signum, pos.step, cfg.out)

        def every_step(p: Position) -> None:
            if p.batch == steps_per_epoch:
                return  # the epoch's end: evaluation and the epoch checkpoint come next
            # Under torchrun the ranks agree on a signal with one collective per log interval;
            # alone, the flag is read after every step for free.
            if not world.distributed or p.step % cfg.log_every == 0:
                check_stop_signal()
            due = cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0
            stop_now = cfg.max_steps and p.step >= cfg.max_steps
            if due or stop_now:
                save()
            if stop_now:
                raise StopRun

        def validate(ten_crop: bool, weights: dict[str, Tensor] | None = None) -> dict[str, Any]:
            net = model
            if eval_net is not None:
                eval_net.load_state_dict(weights if weights is not None else weights_state(model))
                net = eval_net
            return evaluate(net, val_loader(ten_crop), device, autocast(device),
                            plan.manifest["splits"]["val"]["samples"], cfg.channels_last)

        # best.pt follows the lowest centre-crop val top-1 error; a resumed run knows the past
        # epochs' from metrics.jsonl (already cut back to its checkpoint above).
        best = min((r["val_top1_err"] for r in metrics.read(out) if r["kind"] == "epoch"),
                   default=math.inf) if world.main else math.inf
        last: dict[str, Any] = {}
        while pos.epoch < cfg.epochs:
            if mid_epoch:
                checkpoint.set_rng_state(state["rng"][world.rank], devices)
                pos.pending = state["pending"][world.rank].clone()
                if len(pos.pending) == 2:  # written before the hits were counted: unknown, not zero
                    pos.pending = torch.cat([pos.pending, torch.tensor([math.nan], dtype=torch.float64)])
                mid_epoch = False
            else:
                seed_everything(cfg.seed, pos.epoch, world.rank)
            t0, batch0 = time.perf_counter(), pos.batch
            train = train_one_epoch(
                model, optimizer, train_loader.epoch(pos.epoch), pos, device, global_batch=cfg.batch_size,
                log_every=cfg.log_every, autocast=autocast, channels_last=cfg.channels_last, log=log,
                every_step=every_step, total=steps_per_epoch, progress=cfg.progress and world.main)
            epoch_s = time.perf_counter() - t0
            weights = weights_state(model)  # a collective under --parallel hybrid: every rank
            val = validate(False, weights)
            scheduler_step(scheduler, val["val_top1_err"])
            last = {"kind": "epoch", "epoch": pos.epoch, "step": pos.step, **train, **val,
                    "lr": optimizer.param_groups[0]["lr"], "epoch_s": epoch_s,
                    "images_per_s": (pos.batch - batch0) * cfg.batch_size / epoch_s}
            if log:
                log(last)
                tqdm.write(f"epoch {pos.epoch}: train loss {train['train_loss']:.4f}, val top-1 err "
                           f"{val['val_top1_err']:.4f}, top-5 err {val['val_top5_err']:.4f}, "
                           f"{last['images_per_s']:.0f} img/s, data wait {train['data_wait']:.0%}",
                           file=sys.stderr)
            # Non-finite weights can still score a finite error (argmax of NaNs): no best file of them;
            # save() below stops the run with the reason.
            if world.main and val["val_top1_err"] < best and nonfinite_parameter(weights) is None:
                best = val["val_top1_err"]
                weightfile.save(out / weightfile.BEST, weights, file_meta)
                checkpoint.save_weights(out / checkpoint.BEST, weights)
            pos.epoch, pos.batch, pos.loss_sum, pos.samples, pos.hits = pos.epoch + 1, 0, 0.0, 0.0, 0.0
            save(weights)
            signum = stop.requested(world, device)
            if signum:  # arrived during the epoch's last step or its validation: checkpoint just written
                raise Interrupted(signum, pos.step, cfg.out)
            if cfg.max_steps and pos.step >= cfg.max_steps and pos.epoch < cfg.epochs:
                raise StopRun
        weights = weights_state(model)
        if world.main:
            weightfile.save(out / weightfile.FINAL, weights, file_meta)
            checkpoint.save_weights(out / checkpoint.FINAL, weights)
            tqdm.write(f"weights: {out / checkpoint.FINAL} (last epoch), {out / checkpoint.BEST} (lowest val "
                       f"top-1 error, {best:.4f}), each also as {weightfile.SUFFIX}; full checkpoints in "
                       f"{checkpoint.folder(out)}",
                       file=sys.stderr)
        if cfg.ten_crop:
            ten = validate(True, weights)
            final = {"kind": "final", "epoch": pos.epoch - 1, "step": pos.step,
                     **{k.replace("val_", "ten_crop_"): v for k, v in ten.items()}}
            if log:
                log(final)
                tqdm.write(f"10-crop: top-1 err {ten['val_top1_err']:.4f}, "
                           f"top-5 err {ten['val_top5_err']:.4f}", file=sys.stderr)
            last = {**last, **final}
        return last
    except StopRun:
        if world.main:
            tqdm.write(f"stopped after step {pos.step} (--max-steps); continue with --resume",
                       file=sys.stderr)
        return last
    finally:
        if run_log:
            run_log.close()
        distributed.shutdown()


