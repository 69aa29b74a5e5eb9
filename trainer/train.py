"""Training (§5): SGD, batch 128, momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 when the
validation error stops improving, ~90 epochs; then the ten-patch evaluation of §6.

    alexnet-train --shards shards/ --out runs/paper                      # the paper's recipe
    alexnet-train --shards shards/ --out runs/demo --epochs 8 --init kaiming --batch-size 32   # CPU demo
    torchrun --nproc-per-node 4 -m trainer.cli --shards shards/ --out runs/x4 --devices cuda:0,cuda:1
    alexnet-train --shards shards/ --out runs/paper --resume             # continue after a kill

The loop, in the order a run calls it: `main` (`prepare`: every check, before any work), then `run`'s
steps: `open_run` (resume point, loaders), `build` (model, optimizer, schedule), `open_logs`, and per
epoch `train_epoch` (`train_one_epoch`) and `end_epoch` (validation, best.pt, checkpoint), then
`finish` (final.pt, ten crops). What it is built from lives beside it: start-up checks in
trainer/startup.py, placement in trainer/placement.py, the parts in trainer/build.py, the step in
trainer/step.py, the checkpointed state in trainer/state.py. The run folder gets params.json
(settings, git revision, shard manifest hash), metrics.jsonl, TensorBoard events and checkpoints/
(trainer/checkpoint.py).

Faults (README, "When things go wrong"): rank 0 holds `<out>/.lock` for the whole run
(tools/lock.py); SIGTERM/SIGINT stop at the next step with a checkpoint (exit 128 + signal); no
weights file (checkpoint, best.pt, final.pt) is written with non-finite weights; --resume refuses
other shards.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.errors import PipelineError
from trainer import checkpoint, distributed, metrics, weightfile
from trainer.build import (
    build_model,
    load_data,
    load_init_weights,
    make_optimizer,
    make_scheduler,
    parallelize,
    scheduler_step,
)
from trainer.checkpoint import nonfinite_parameter
from trainer.config import ConfigError, TrainConfig, paper_differences
from trainer.evaluate import evaluate
from trainer.placement import set_precision
from trainer.startup import (
    Plan,
    find_resume,
    git_revision,
    hold_run_folder,
    prepare,
    shards_identity,
    write_params,
)
from trainer.state import (
    Position,
    hybrid_model,
    load_optimizer_state,
    make_state,
    unwrap,
    weights_state,
)
from trainer.step import to_device, train_step


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


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Dropout masks (and anything else random in the loop) from (seed, epoch, rank) alone."""
    s = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


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


@dataclass
class Run:
    """One run's working set, built by `build` and advanced by the epoch loop. Its methods are the
    loop's hooks: a checkpoint (`save`), the signal check, the per-step hook and validation."""

    plan: Plan
    stop: StopSignals
    device: torch.device  # the replica's first device: the loaders', the loss's and the collectives'
    pos: Position
    resumed: dict[str, Any] | None  # the checkpoint this run continues, if any
    mid_epoch: bool  # resumed from a mid-epoch checkpoint whose RNG states are still to be restored
    train_loader: Any
    val_loader: Callable[[bool], Iterable[Any]]
    steps_per_epoch: int
    model: nn.Module
    eval_net: nn.Module | None  # under --parallel hybrid (see `build`)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: Callable[[torch.device], AbstractContextManager]
    shards: dict[str, Any]  # shards_identity: what every checkpoint says the run trains on
    # What best/final.safetensors carry besides the weights (rank 0's): switches, classes, input statistics.
    file_meta: dict[str, str] = field(default_factory=dict)
    run_log: metrics.RunLog | None = None  # rank 0's
    best: float = math.inf  # the lowest centre-crop val top-1 error so far (best.pt's)
    last: dict[str, Any] = field(default_factory=dict)  # the last epoch's record

    @property
    def cfg(self) -> TrainConfig:
        return self.plan.cfg

    @property
    def world(self) -> distributed.World:
        return self.plan.world

    @property
    def out(self) -> Path:
        return Path(self.plan.cfg.out)

    @property
    def log(self) -> Callable[[dict[str, Any]], None] | None:
        return self.run_log.write if self.run_log else None

    def check_finite(self, weights: dict[str, Tensor]) -> None:
        """Raise FloatingPointError if `weights` hold a NaN or an infinity: before any file gets them.
        Every rank checks (DDP keeps the weights equal, and the hybrid's are gathered on every rank),
        so all stop together; trainer.checkpoint's writes refuse them too, on rank 0 alone."""
        bad = nonfinite_parameter(weights)
        if bad is not None:
            raise FloatingPointError(f"non-finite weights ({bad}) at step {self.pos.step}: diverged (try "
                                     "a lower --lr); no checkpoint written for it, earlier ones are kept")

    def save(self, weights: dict[str, Tensor] | None = None) -> None:
        """A checkpoint of the current position (`weights`: `weights_state(model)`, if at hand)."""
        pos = self.pos
        weights = weights if weights is not None else weights_state(self.model)
        self.check_finite(weights)
        s = make_state(self.model, self.optimizer, self.scheduler, pos, self.train_loader, self.cfg,
                       self.plan.num_classes, self.world, self.plan.devices, self.shards, weights)
        if s is not None:
            checkpoint.save(self.out, s, pos.step, pos.epoch, pos.batch)

    def check_stop_signal(self) -> None:
        signum = self.stop.requested(self.world, self.device)
        if signum:
            self.save()
            raise Interrupted(signum, self.pos.step, self.cfg.out)

    def every_step(self, p: Position) -> None:
        """After each training step: the signal check, periodic checkpoints and --max-steps."""
        cfg = self.cfg
        if p.batch == self.steps_per_epoch:
            return  # the epoch's end: evaluation and the epoch checkpoint come next
        # Under torchrun the ranks agree on a signal with one collective per log interval;
        # alone, the flag is read after every step for free.
        if not self.world.distributed or p.step % cfg.log_every == 0:
            self.check_stop_signal()
        due = cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0
        stop_now = cfg.max_steps and p.step >= cfg.max_steps
        if due or stop_now:
            self.save()
        if stop_now:
            raise StopRun

    def validate(self, ten_crop: bool, weights: dict[str, Tensor] | None = None) -> dict[str, Any]:
        net = self.model
        if self.eval_net is not None:
            self.eval_net.load_state_dict(weights if weights is not None else weights_state(self.model))
            net = self.eval_net
        return evaluate(net, self.val_loader(ten_crop), self.device, self.autocast(self.device),
                        self.plan.manifest["splits"]["val"]["samples"], self.cfg.channels_last)


def main(cfg: TrainConfig, world: distributed.World | None = None) -> dict[str, Any]:
    """Run (or continue) training; returns the last epoch's metrics (and the 10-crop ones).

    Raises ConfigError, before anything is written, on any bad input.
    """
    plan = prepare(cfg, world)
    with hold_run_folder(plan), StopSignals() as stop:
        return run(plan, stop)


def run(plan: Plan, stop: StopSignals) -> dict[str, Any]:
    """The run itself, with the folder's lock held (`main`): the steps below, in this order."""
    find_resume(plan)
    state, pos, loaders = open_run(plan)
    device = torch.device(plan.devices[0])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    distributed.init(plan.world, "nccl" if device.type == "cuda" else "gloo")
    r = None
    try:
        r = build(plan, stop, state, pos, loaders)
        open_logs(r)
        while pos.epoch < plan.cfg.epochs:
            end_epoch(r, *train_epoch(r))
        return finish(r)
    except StopRun:
        if plan.world.main:
            tqdm.write(f"stopped after step {pos.step} (--max-steps); continue with --resume",
                       file=sys.stderr)
        return r.last if r else {}
    finally:
        if r and r.run_log:
            r.run_log.close()
        distributed.shutdown()


def open_run(plan: Plan) -> tuple[dict[str, Any] | None, Position,
                                  tuple[Any, Callable[[bool], Iterable[Any]]]]:
    """The checkpoint to continue (if any), the position in it, and this rank's loaders."""
    cfg, world = plan.cfg, plan.world
    if world.main:
        removed = checkpoint.remove_temp_files(cfg.out)
        if removed:
            warnings.warn(f"removed {len(removed)} temp file(s) of an interrupted write in {cfg.out}: "
                          f"{', '.join(p.name for p in removed)}", stacklevel=1)
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
        loaders = load_data(cfg, world, plan.devices, state["loader"][world.rank] if mid_epoch else None)
    except PipelineError as e:
        raise ConfigError(f"--shards: {e}") from e
    return state, pos, loaders


def build(plan: Plan, stop: StopSignals, state: dict[str, Any] | None, pos: Position,
          loaders: tuple[Any, Callable[[bool], Iterable[Any]]]) -> Run:
    """The model (fresh, from --init-from or from the checkpoint) as torchrun trains it, and its
    optimizer and lr schedule (restored when resuming). The process group is up."""
    cfg, world, devices = plan.cfg, plan.world, plan.devices
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
    train_loader, val_loader = loaders
    return Run(plan, stop, torch.device(devices[0]), pos, state,
               mid_epoch=state is not None and pos.batch > 0, train_loader=train_loader,
               val_loader=val_loader, steps_per_epoch=len(train_loader), model=model, eval_net=eval_net,
               optimizer=optimizer, scheduler=scheduler, autocast=autocast, shards=shards_identity(plan),
               file_meta=weightfile.run_metadata(cfg, plan.manifest, git_revision()) if world.main else {})


def open_logs(r: Run) -> None:
    """Rank 0: the run folder, its params.json and metrics log (cut back to the checkpoint a resumed
    run continues), and the val error best.pt holds so far."""
    plan, pos, state, out = r.plan, r.pos, r.resumed, r.out
    if not r.world.main:
        return
    out.mkdir(parents=True, exist_ok=True)
    resumed = state is not None or plan.resumed_by_restart or plan.restart_empty
    if resumed:
        # Lines the killed run logged after its checkpoint (all of them if it had none).
        metrics.truncate(out, pos.step, pos.epoch)
    if state is None and resumed:
        warnings.warn(f"{out} holds a run stopped before its first checkpoint: starting it again "
                      "from step 0", stacklevel=1)
    params = write_params(plan, resumed=state is not None)
    r.run_log = metrics.RunLog(out, purge_step=pos.step + 1 if resumed else None)
    r.run_log.settings(params, paper_differences(params["config"]), pos.step)
    if state is not None:
        tqdm.write(f"resuming {out} from {plan.resume_from[1]} (step {pos.step}, epoch {pos.epoch}, "
                   f"batch {pos.batch} of it); logs in {out / metrics.METRICS}", file=sys.stderr)
        r.run_log.write({"kind": "resume", "step": pos.step, "epoch": pos.epoch, "batch": pos.batch,
                         "checkpoint": str(plan.resume_from[1]), "restart": plan.resumed_by_restart})
    # best.pt follows the lowest centre-crop val top-1 error; a resumed run knows the past
    # epochs' from metrics.jsonl (already cut back to its checkpoint above).
    r.best = min((rec["val_top1_err"] for rec in metrics.read(out) if rec["kind"] == "epoch"),
                 default=math.inf)


def train_epoch(r: Run) -> tuple[dict[str, float], float, float]:
    """The training part of an epoch (the rest of it after a mid-epoch resume): its metrics, seconds
    and images/s, for `end_epoch`."""
    cfg, pos, world = r.cfg, r.pos, r.world
    if r.mid_epoch:
        checkpoint.set_rng_state(r.resumed["rng"][world.rank], r.plan.devices)
        pos.pending = r.resumed["pending"][world.rank].clone()
        if len(pos.pending) == 2:  # written before the hits were counted: unknown, not zero
            pos.pending = torch.cat([pos.pending, torch.tensor([math.nan], dtype=torch.float64)])
        r.mid_epoch = False
    else:
        seed_everything(cfg.seed, pos.epoch, world.rank)
    t0, batch0 = time.perf_counter(), pos.batch
    train = train_one_epoch(
        r.model, r.optimizer, r.train_loader.epoch(pos.epoch), pos, r.device, global_batch=cfg.batch_size,
        log_every=cfg.log_every, autocast=r.autocast, channels_last=cfg.channels_last, log=r.log,
        every_step=r.every_step, total=r.steps_per_epoch, progress=cfg.progress and world.main)
    epoch_s = time.perf_counter() - t0
    return train, epoch_s, (pos.batch - batch0) * cfg.batch_size / epoch_s


def end_epoch(r: Run, train: dict[str, float], epoch_s: float, images_per_s: float) -> None:
    """Validation, the lr schedule, the epoch's log line, best.pt and the epoch's checkpoint."""
    cfg, pos, world = r.cfg, r.pos, r.world
    weights = weights_state(r.model)  # a collective under --parallel hybrid: every rank
    val = r.validate(False, weights)
    scheduler_step(r.scheduler, val["val_top1_err"])
    r.last = {"kind": "epoch", "epoch": pos.epoch, "step": pos.step, **train, **val,
              "lr": r.optimizer.param_groups[0]["lr"], "epoch_s": epoch_s, "images_per_s": images_per_s}
    if r.log:
        r.log(r.last)
        tqdm.write(f"epoch {pos.epoch}: train loss {train['train_loss']:.4f}, val top-1 err "
                   f"{val['val_top1_err']:.4f}, top-5 err {val['val_top5_err']:.4f}, "
                   f"{images_per_s:.0f} img/s, data wait {train['data_wait']:.0%}", file=sys.stderr)
    r.check_finite(weights)  # validation takes NaN weights too: none may reach best.pt
    if world.main and val["val_top1_err"] < r.best:
        r.best = val["val_top1_err"]
        weightfile.save(r.out / weightfile.BEST, weights, r.file_meta)
        checkpoint.save_weights(r.out / checkpoint.BEST, weights)
    pos.epoch, pos.batch, pos.loss_sum, pos.samples, pos.hits = pos.epoch + 1, 0, 0.0, 0.0, 0.0
    r.save(weights)
    signum = r.stop.requested(world, r.device)
    if signum:  # arrived during the epoch's last step or its validation: checkpoint just written
        raise Interrupted(signum, pos.step, cfg.out)
    if cfg.max_steps and pos.step >= cfg.max_steps and pos.epoch < cfg.epochs:
        raise StopRun


def finish(r: Run) -> dict[str, Any]:
    """final.pt, and under --ten-crop the §6 evaluation; returns the last epoch's record."""
    cfg, pos, out = r.cfg, r.pos, r.out
    weights = weights_state(r.model)
    if r.world.main:
        weightfile.save(out / weightfile.FINAL, weights, r.file_meta)
        checkpoint.save_weights(out / checkpoint.FINAL, weights)
        tqdm.write(f"weights: {out / checkpoint.FINAL} (last epoch), {out / checkpoint.BEST} (lowest val "
                   f"top-1 error, {r.best:.4f}), each also as {weightfile.SUFFIX}; full checkpoints in "
                   f"{checkpoint.folder(out)}", file=sys.stderr)
    if cfg.ten_crop:
        ten = r.validate(True, weights)
        final = {"kind": "final", "epoch": pos.epoch - 1, "step": pos.step,
                 **{k.replace("val_", "ten_crop_"): v for k, v in ten.items()}}
        if r.log:
            r.log(final)
            tqdm.write(f"10-crop: top-1 err {ten['val_top1_err']:.4f}, "
                       f"top-5 err {ten['val_top5_err']:.4f}", file=sys.stderr)
        r.last = {**r.last, **final}
    return r.last
