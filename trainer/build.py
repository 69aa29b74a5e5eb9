"""What a run is built from: its loaders, model, optimizer and lr schedule, and the wrapping for
torchrun (DDP or the 2014 hybrid scheme). Each is a plain function of the run's settings, shared by
alexnet-train, the figures and the benchmarks, so all of them build the very same network.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

import paper
from trainer import distributed, hybrid, optim
from trainer.config import ConfigError, TrainConfig
from trainer.model import AlexNet
from trainer.startup import loader_args, model_args


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
