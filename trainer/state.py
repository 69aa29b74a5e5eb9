"""The run state that goes into a checkpoint: where the run is (`Position`), the weights and momentum
in the one-device AlexNet's layout whatever the placement, and the full state `make_state` assembles
for trainer/checkpoint.py to write.

The names are the checkpoint format: a checkpoint is the dict `make_state` returns, and its "model"
is `weights_state`'s state dict (the names every placement loads). Changing either breaks --resume,
alexnet-eval and --init-from of older runs (tests/test_compat.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from trainer import checkpoint, distributed, hybrid
from trainer.config import TrainConfig


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


def loader_state(loader: Any) -> str | None:
    """The loader's resumable position (`Loader.state()`: epoch, batch and DALI's checkpoint)."""
    state = getattr(loader, "state", None)
    return state() if callable(state) else None


def unwrap(model: nn.Module) -> nn.Module:
    """The AlexNet (or HybridAlexNet) inside DDP / torch.compile wrappers: its state dict has no wrapper
    prefixes."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


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
