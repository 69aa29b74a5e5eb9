"""Validation: loss, top-1 and top-5 error, from the centre crop or the paper's ten patches (§6).

Errors are exact over all processes: every rank sums its loss, hit counts and sample counts on the
device, one all_reduce adds them up, and the error is computed once from the totals. Padding the
loader adds to fill the last batch is masked out, and `evaluate` warns when the number of samples
seen is not the split's size (torchvision's references do the same).

§6's ensembles (`evaluate_ensemble`, `alexnet-eval --checkpoint A --checkpoint B ...`) average the
members' softmax outputs over one pass of the loader, so each image is still seen once over all ranks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.loader import PAD_LABEL
from trainer import distributed
from trainer.metrics import correct_topk

TOPK = (1, 5)  # §6 reports top-1 and top-5 error rates


def unpack(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
    """(images, labels, valid) from an eval batch: a (images, labels[, valid]) tuple or a dict.

    `valid` is a bool mask of real (not padding) samples: given, or the labels that are not
    PAD_LABEL (the pipeline's marker of padding).
    """
    if isinstance(batch, dict):
        images, labels = batch["images"], batch["labels"]
        valid = batch.get("valid", batch.get("mask"))
    else:
        images, labels, *rest = batch
        valid = rest[0] if rest else None
    if isinstance(valid, int):  # a count of leading real samples
        valid = torch.arange(labels.shape[0], device=labels.device) < valid
    if valid is None:
        valid = labels != PAD_LABEL
    return images, labels, valid


def progress_bar(loader: Iterable[Any], progress: bool) -> Iterable[Any]:
    # disable= only when asked: tqdm reads TQDM_DISABLE as a default, which an explicit argument overrides.
    return tqdm(loader, total=len(loader) if hasattr(loader, "__len__") else None, desc="eval", unit="batch",
                dynamic_ncols=True, leave=False, **({} if progress else {"disable": True}))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], device: torch.device | str,
             autocast: AbstractContextManager | None = None, expected: int | None = None,
             channels_last: bool = False, progress: bool = False) -> dict[str, float]:
    """Evaluate `model` once over `loader`; ten-crop batches ([B, 10, 3, H, W]) average the softmax
    over the patches, as §6 does. Returns val_loss, val_top1_err, val_top5_err, val_samples.

    `progress`: a tqdm bar (batches) on stderr, which TQDM_DISABLE=1 still turns off."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    # [loss sum, top-1 hits, top-5 hits, samples] stay on the device: no sync until the end.
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for batch in progress_bar(loader, progress):
        images, labels, w, crops = _on_device(batch, device, channels_last)
        # §6: "averaging the predictions made by the softmax layer on the ten patches".
        totals += _sums(_log_probs(model, images, crops, autocast, device), labels, w)
    distributed.all_reduce_sum(totals)
    loss_sum, top1, top5, n = totals.tolist()
    model.train(was_training)
    if expected is not None and int(n) != expected:
        warnings.warn(f"evaluated {int(n)} samples, but the split has {expected}: "
                      "some were skipped or seen twice", stacklevel=2)
    n = max(n, 1.0)
    return {"val_loss": loss_sum / n, "val_top1_err": 1 - top1 / n, "val_top5_err": 1 - top5 / n,
            "val_samples": int(totals[3].item())}


def _on_device(batch: Any, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor, Tensor, int]:
    """(images, labels, weights, crops): ten-crop batches flattened to [B*10, ...], padding labelled 0
    with weight 0."""
    images, labels, valid = unpack(batch)
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True).long()
    crops = images.shape[1] if images.dim() == 5 else 0
    if crops:
        images = images.flatten(0, 1)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    w = valid.to(device).to(torch.float32)
    return images, labels.masked_fill(w == 0, 0), w, crops


def _sums(log_probs: Tensor, labels: Tensor, w: Tensor) -> Tensor:
    """[loss sum, top-1 hits, top-5 hits, samples] of one batch, padding weighted 0."""
    loss = F.nll_loss(log_probs, labels, reduction="none")
    hits = correct_topk(log_probs, labels, TOPK)
    return torch.stack([(loss * w).sum(), (hits[0] * w).sum(), (hits[1] * w).sum(), w.sum()]).double()


def _log_probs(model: nn.Module, images: Tensor, crops: int, autocast: AbstractContextManager | None,
               device: torch.device) -> Tensor:
    """log softmax of `model` on `images`, averaged in probability over `crops` patches (§6) when > 0."""
    with autocast if autocast is not None else torch.autocast(device.type, enabled=False):
        logits = model(images)
    logits = logits.float().to(device)
    if crops:
        return F.softmax(logits, 1).view(-1, crops, logits.shape[1]).mean(1).log()
    return F.log_softmax(logits, 1)


@torch.no_grad()
def evaluate_ensemble(models: Sequence[nn.Module], loader: Iterable[Any], device: torch.device | str,
                      autocast: AbstractContextManager | None = None, expected: int | None = None,
                      channels_last: bool = False, progress: bool = False) -> dict[str, Any]:
    """§6: "averaging the predictions of five similar CNNs". One pass over `loader`; each batch goes
    through every model, and the ensemble's prediction is the mean of their softmax outputs (each
    already averaged over the ten patches when the batches are ten-crop ones).

    Returns {"members": [one dict per model, as `evaluate` returns], "ensemble": the same for the mean}.
    """
    device = torch.device(device)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    # One row of [loss sum, top-1 hits, top-5 hits, samples] per model, the last row the ensemble's.
    totals = torch.zeros(len(models) + 1, 4, dtype=torch.float64, device=device)
    for batch in progress_bar(loader, progress):
        images, labels, w, crops = _on_device(batch, device, channels_last)
        members = torch.stack([_log_probs(m, images, crops, autocast, device) for m in models])
        # log of the mean probability, without leaving log space: logsumexp - log(number of models)
        mean = torch.logsumexp(members, 0) - math.log(len(models))
        for row, log_probs in enumerate([*members, mean]):
            totals[row] += _sums(log_probs, labels, w)
    distributed.all_reduce_sum(totals)
    for m, training in zip(models, was_training, strict=True):
        m.train(training)
    rows = []
    for loss_sum, top1, top5, n in totals.tolist():
        seen = int(n)
        n = max(n, 1.0)
        rows.append({"val_loss": loss_sum / n, "val_top1_err": 1 - top1 / n, "val_top5_err": 1 - top5 / n,
                     "val_samples": seen})
    if expected is not None and rows[-1]["val_samples"] != expected:
        warnings.warn(f"evaluated {rows[-1]['val_samples']} samples, but the split has {expected}: "
                      "some were skipped or seen twice", stacklevel=2)
    return {"members": rows[:-1], "ensemble": rows[-1]}


def weights_state(path: Any) -> dict[str, Any]:
    """A weights-only file (a run's best.pt or final.pt) as a checkpoint-like state: the settings the
    model needs (LRN variant, switches, input normalisation) come from the run's params.json beside it."""
    from trainer import startup, weightfile
    from trainer.config import ConfigError

    weights = weightfile.load_weights(path)
    if not (path.parent / startup.PARAMS).exists():
        raise ConfigError(f"--checkpoint: {path} holds weights only, and {path.parent / startup.PARAMS} (the "
                          "run's LRN and input normalisation) is not beside it")
    if "fc8.weight" not in weights:
        raise ConfigError(f"--checkpoint: {path} is not an AlexNet state dict (no fc8.weight)")
    return {"model": weights, "config": startup.read_params(path.parent)["config"],
            "num_classes": weights["fc8.weight"].shape[0]}


def load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint file (step-*.pt), a run's weights (best.pt, final.pt, best/final.safetensors), or a
    run folder's latest good checkpoint. Raises ConfigError."""
    from pathlib import Path

    from trainer import checkpoint, weightfile
    from trainer.config import ConfigError

    try:
        if weightfile.is_safetensors(path):  # carries its switches and input normalisation itself
            return weightfile.load(path).checkpoint_state()
        if Path(path).is_dir():
            found = checkpoint.load_latest(Path(path))
            if found is None:
                raise ConfigError(f"--checkpoint: {path} holds no checkpoint")
            return found[0]
        try:
            return checkpoint.load(Path(path))
        except checkpoint.NotACheckpoint:  # a run's best.pt / final.pt
            return weights_state(Path(path))
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"--checkpoint: {e}") from e


def main(checkpoint_path: str | Sequence[str], shards: str, ten_crop: bool = False, batch_size: int = 128,
         devices: tuple[str, ...] = (), precision: str = "tf32", progress: bool = True,
         split: str = "val") -> dict[str, Any]:
    """`alexnet-eval`: load a checkpoint (file, or a run folder's latest good one) onto `devices`,
    whatever placement it was trained on, and evaluate it on the `split` shards (val, or the test
    split of ILSVRC-2010, on which the paper's Table 1 is measured). Raises ConfigError.

    Several checkpoints: evaluate them as §6's ensemble, returning `evaluate_ensemble`'s dict with
    each member's "checkpoint" path; one checkpoint (a str, or a sequence of one): `evaluate`'s dict.
    """
    import pipeline
    from trainer import placement, startup
    from trainer.config import ConfigError, TrainConfig, check_local, local_path
    from trainer.model import AlexNet

    paths = [checkpoint_path] if isinstance(checkpoint_path, str) else list(checkpoint_path)
    if not paths:
        raise ConfigError("--checkpoint: give at least one")
    world = distributed.from_env()
    if batch_size < 1 or batch_size % world.size:
        raise ConfigError(f"--batch-size {batch_size} does not divide across {world.size} processes")
    shards, paths = local_path(shards), [local_path(p) for p in paths]
    check_local(shards, "--shards")
    for p in paths:
        check_local(p, "--checkpoint")
    devices = placement.replica(devices, world)
    manifest = startup.check_shards(shards)
    if not manifest["splits"].get(split, {}).get("shards"):
        raise ConfigError(f"--split {split}: {shards} has no {split} shards (only ILSVRC-2010 has a labelled "
                          "test split: `alexnet-prep shard` writes it from a source with its ground truth)")
    # The eval loader pads every rank's last batch up to the full batch size, so a batch beyond the
    # split is all padding: --batch-size 100000 on 16 images grew to 12.8 GB. At most the split,
    # rounded up to a multiple of the processes.
    samples = manifest["splits"][split]["samples"]
    batch_size = min(batch_size, -(-samples // world.size) * world.size)
    states = [load_checkpoint(p) for p in paths]
    saves = [TrainConfig.from_dict(state["config"]) for state in states]
    for path, state, saved in zip(paths, states, saves, strict=True):
        if state["num_classes"] != len(manifest["classes"]):
            raise ConfigError(f"--shards: the checkpoint {path} has {state['num_classes']} classes, "
                              f"{shards} has {len(manifest['classes'])}")
        if saved.mean != saves[0].mean:
            raise ConfigError(f"--checkpoint: {path} was trained with --mean {saved.mean}, {paths[0]} with "
                              f"--mean {saves[0].mean}; an ensemble's members must share the input")
    saved = saves[0]  # the input normalisation, shared by every member

    # The input normalisation the model was trained with.
    cfg = TrainConfig(shards=shards, out="", batch_size=batch_size, devices=devices, mean=saved.mean,
                      precision=precision, channels_last=False)
    try:
        loader = pipeline.eval_loader(shards, crop="ten" if ten_crop else "center", split=split,
                                      **startup.loader_args(cfg, world, devices))
    except pipeline.PipelineError as e:
        raise ConfigError(f"--shards: {e}") from e

    device = torch.device(devices[0])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    distributed.init(world, "nccl" if device.type == "cuda" else "gloo")
    try:
        autocast = placement.set_precision(precision)
        models = []
        for source, st, sv in zip(paths, states, saves, strict=True):
            # The run's own architecture switches; the one-column net takes the replica's first device.
            model = AlexNet(num_classes=st["num_classes"], devices=devices if sv.columns > 1 else devices[:1],
                            lrn_variant=sv.lrn, **startup.model_args(sv))
            try:
                model.load_state_dict(st["model"])
            except RuntimeError as e:  # torch lists every missing/unexpected key: the first line says enough
                raise ConfigError(f"--checkpoint: {source} does not fit trainer.model.AlexNet "
                                  f"({str(e).strip().splitlines()[0][:200]})") from None
            models.append(model)
        expected = samples
        if len(models) == 1:
            return evaluate(models[0], loader, device, autocast(device), expected=expected,
                            progress=progress and world.main)
        result = evaluate_ensemble(models, loader, device, autocast(device), expected=expected,
                                   progress=progress and world.main)
        for path, member in zip(paths, result["members"], strict=True):
            member["checkpoint"] = path
        return result
    finally:
        distributed.shutdown()
