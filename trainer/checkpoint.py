"""Atomic, self-checking checkpoints holding everything a run needs to continue exactly.

Layout of <run>/checkpoints/:

    step-00001234.pt    torch.save of the state: model, optimizer, scheduler, counters, RNG and
                        loader states (see trainer.state.make_state)
    step-00001234.json  {"step", "epoch", "batch", "sha256", "bytes", "time"}: written after the .pt
                        (completion marker), so a .pt without it is an unfinished write

Beside it, <run>/best.pt (the weights of the epoch with the lowest centre-crop val top-1 error so
far) and <run>/final.pt (after the last epoch): plain state dicts of trainer.model.AlexNet, 244 MB
instead of a checkpoint's twice that with the momentum, for `torch.load(..., weights_only=True)`,
alexnet-eval and `alexnet-train --init-from`.

Both files go through tools.atomic (temp name in the same folder, fsync, os.replace). A failed
write (a full disk) raises CheckpointWriteError and leaves neither a temp file nor a .pt without
its marker; temp files of a killed write are removed by `remove_temp_files` at the run's next
start. The last KEEP complete checkpoints are kept. `load_latest` verifies the sha256 and falls back to the
previous checkpoint with a warning when the newest is damaged; it never returns "nothing" when
checkpoints exist but none is usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools import atomic

KEEP = 2  # the newest and one fallback
DIRNAME = "checkpoints"
BEST, FINAL = "best.pt", "final.pt"  # weights only, in the run folder
NAME = re.compile(r"^step-(\d{8,})\.pt$")
TEMP = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]+$")  # tools.atomic.temp_name


class CheckpointError(RuntimeError):
    """No usable checkpoint, or a file that is not a valid checkpoint."""


class NotACheckpoint(CheckpointError):
    """A readable torch file without a checkpoint's "model": perhaps weights alone (best.pt, final.pt)."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, lost mount); nothing partial was left behind."""


class NonFiniteWeights(CheckpointWriteError):
    """Weights holding a NaN or an infinity (a diverged run): refused, nothing was written."""


def folder(run_dir: str | Path) -> Path:
    return Path(run_dir) / DIRNAME


def save(run_dir: str | Path, state: dict[str, Any], step: int, epoch: int, batch: int,
         keep: int = KEEP) -> Path:
    """Write `state` as the checkpoint of `step`, then drop all but the newest `keep`."""
    d = folder(run_dir)
    path = d / f"step-{step:08d}.pt"
    try:
        d.mkdir(parents=True, exist_ok=True)
        # atomic_write removes its temp file when the write fails (a full disk: ENOSPC), so the
        # previous checkpoints stay the newest complete ones.
        w = _write(path, state, state["model"])
        meta = {"step": step, "epoch": epoch, "batch": batch, "sha256": w.sha.hexdigest(), "bytes": w.size,
                "time": time.time()}
        try:
            atomic.write_json(str(path.with_suffix(".json")), meta)
        except BaseException:
            path.unlink(missing_ok=True)  # a .pt without its marker would only be skipped with a warning
            raise
    except OSError as e:
        usable = complete(run_dir)
        kept = f"{usable[0].name} is intact" if usable else "no earlier checkpoint"
        raise CheckpointWriteError(f"{path}: could not write the checkpoint "
                                   f"({e.strerror or e}); {kept}") from e
    for old in complete(run_dir)[keep:]:
        # Marker first: if we die in between, the left-over .pt reads as unfinished, not corrupt.
        old.with_suffix(".json").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return path


def save_weights(path: str | Path, model_state: dict[str, torch.Tensor]) -> Path:
    """Write a model state dict alone (CPU tensors, so it loads on a machine without the run's GPUs)."""
    path = Path(path)
    weights = {k: v.detach().cpu() for k, v in model_state.items()}
    try:
        _write(path, weights, weights)
    except OSError as e:
        raise CheckpointWriteError(f"{path}: could not write the weights ({e.strerror or e})") from e
    return path


def _write(path: Path, obj: Any, weights: dict[str, torch.Tensor]) -> atomic.HashingWriter:
    """torch.save `obj` to `path` through tools.atomic, unless `weights` (the model state it holds)
    has a NaN or an infinity: then NonFiniteWeights, and nothing is written. Every weights file goes
    through here (checkpoints, best.pt, final.pt, any format added later), so none ever holds a
    diverged model: a NaN best.pt would poison alexnet-eval and --init-from, a NaN checkpoint every
    later --resume. Returns the writer, for the file's sha256 and size."""
    bad = nonfinite_parameter(weights)
    if bad is not None:
        raise NonFiniteWeights(f"{path}: non-finite weights ({bad}); not written")
    with atomic.atomic_write(str(path)) as f:
        w = atomic.HashingWriter(f)
        torch.save(obj, w)
    return w


def nonfinite_parameter(weights: dict[str, torch.Tensor]) -> str | None:
    """The first tensor of a state dict holding a NaN or an infinity, or None. One host sync per
    tensor: run at checkpoint time only, where it costs nothing next to writing ~700 MB."""
    for name, t in weights.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from a torch weights file (best.pt, final.pt) or from a full checkpoint (its
    "model"); raises CheckpointError naming the file. weightfile.load_weights reads .safetensors too."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # as in _read: torch raises many kinds for a file that is not a torch.save
        raise CheckpointError(f"{path}: not a readable weights file "
                              f"({type(e).__name__}: {_first_line(e)})") from e
    try:
        check_not_torchvision(state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: not a model state dict (name -> tensor)")
    return state


def remove_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the temp files of writes a killed run left (tools.atomic names them `.<name>.tmp-*`) in
    the run folder and its checkpoints/; returns them. Only the run's lock holder may call this:
    another live run's temp files look the same."""
    found = []
    for d in (Path(run_dir), folder(run_dir)):
        if d.is_dir():
            found += [d / n for n in os.listdir(d) if TEMP.match(n)]
    for p in found:
        p.unlink(missing_ok=True)
    return found


def candidates(run_dir: str | Path) -> list[Path]:
    """Every step-*.pt in the run, newest first (by step number)."""
    d = folder(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), d / n) for n in os.listdir(d) if (m := NAME.match(n))]
    return [p for _, p in sorted(found, reverse=True)]


def complete(run_dir: str | Path) -> list[Path]:
    return [p for p in candidates(run_dir) if p.with_suffix(".json").exists()]


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint file, checking it against its .json marker when there is one."""
    try:
        return _read(Path(path), map_location)
    except CheckpointError as e:
        raise type(e)(f"{path}: {e}") from e


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError("no such checkpoint file")
    marker = path.with_suffix(".json")
    if marker.exists():
        try:
            expected = json.loads(marker.read_text())["sha256"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"unreadable marker {marker.name} ({e})") from e
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                sha.update(block)
        if sha.hexdigest() != expected:
            raise CheckpointError(f"sha256 does not match {marker.name} (damaged file)")
    try:
        # weights_only: a checkpoint is data; RNG states are stored as tensors/ints for this reason.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle/zip errors, EOFError... for bad files
        raise CheckpointError(f"not a readable checkpoint ({type(e).__name__}: {_first_line(e)})") from e
    check_not_torchvision(state)
    if not isinstance(state, dict) or "model" not in state:
        raise NotACheckpoint("not an alexnet-train checkpoint (no model state)")
    return state


# torchvision.models.alexnet follows the one-GPU "One weird trick" variant (Krizhevsky 2014), not
# the 2012 paper's two columns: its tensors have other shapes, so no key mapping could load them.
TORCHVISION = ("a torchvision AlexNet state dict (features.*, classifier.*), which cannot load here: "
               "torchvision's is one column of 64/192/384/256/256 kernels with 61,100,840 parameters, the "
               "paper's two columns of 2x48/2x128/2x192/2x192/2x128 with 60,965,224 (trainer/model.py)")


def check_not_torchvision(state: Any) -> None:
    """Raise CheckpointError (TORCHVISION) for a torchvision AlexNet state dict, bare or as the "model"
    of a torchvision references checkpoint."""
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        return
    keys = [k.removeprefix("module.") for k in state if isinstance(k, str)]  # DDP-saved ones too
    if any(k.startswith("features.") for k in keys) and any(k.startswith("classifier.") for k in keys):
        raise CheckpointError(TORCHVISION)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu",
                ) -> tuple[dict[str, Any], Path] | None:
    """The newest usable checkpoint of a run; None only if the run has no checkpoint files at all."""
    found = candidates(run_dir)
    if not found:
        return None
    problems = []
    for path in found:
        if not path.with_suffix(".json").exists():
            problems.append(f"{path.name}: unfinished write (no {path.with_suffix('.json').name})")
            continue
        try:
            state = _read(path, map_location)
        except CheckpointError as e:
            problems.append(f"{path.name}: {e}")
            continue
        if problems:
            warnings.warn(f"skipped damaged checkpoint(s) [{'; '.join(problems)}]; "
                          f"resuming from {path.name}", stacklevel=2)
        return state, path
    raise CheckpointError(f"{folder(run_dir)}: no usable checkpoint ({'; '.join(problems)})")


def _cuda(devices: Sequence[str | torch.device]) -> list[torch.device]:
    """The replica's GPUs, in replica (column) order, each with its index ("cuda" means cuda:0, as
    for trainer.distributed.replica_devices)."""
    out = []
    for d in map(torch.device, devices):
        if d.type == "cuda" and torch.device("cuda", d.index or 0) not in out:
            out.append(torch.device("cuda", d.index or 0))
    return out


def rng_state(devices: Sequence[str | torch.device] = ()) -> dict[str, Any]:
    """This process's RNG states, as tensors and ints so weights_only loading accepts them.

    "cuda" holds the generators of this replica's GPUs only, keyed by device name in replica order:
    a process that saved every visible GPU's (torch.cuda.get_rng_state_all) could not be resumed
    where fewer GPUs are visible.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": {str(d): torch.cuda.get_rng_state(d) for d in _cuda(devices)},
    }


def set_rng_state(s: dict[str, Any], devices: Sequence[str | torch.device] = ()) -> None:
    """Restore `s` (from rng_state) into this process, the GPU states into this replica's `devices`.

    A GPU state goes to the device of the same name when every replica GPU has one; otherwise (the
    replica moved, e.g. to other indices) column by column. States without a GPU to go to, or GPUs
    without a state, are reported in one warning: dropout masks then differ from an uninterrupted run.
    """
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(s["torch"])
    saved, targets = s.get("cuda") or {}, _cuda(devices)
    # Checkpoints written before the per-replica format: a list over every visible GPU, by index.
    # Its extra entries belong to other processes' GPUs, so only missing ones are worth a warning.
    every_visible = isinstance(saved, (list, tuple))
    if every_visible:
        saved = {f"cuda:{i}": state for i, state in enumerate(saved)}
    if all(str(d) in saved for d in targets):
        pairs = [(d, saved[str(d)]) for d in targets]
    else:
        pairs = list(zip(targets, saved.values()))
    for device, state in pairs:
        torch.cuda.set_rng_state(state, device)
    if len(pairs) < len(targets) or (len(pairs) < len(saved) and not every_visible):
        here, there = ", ".join(map(str, targets)) or "the CPU", ", ".join(saved) or "none"
        warnings.warn(f"the checkpoint holds RNG states for {len(saved)} GPU(s) ({there}), "
                      f"this replica runs on {here}: restored {len(pairs)}; dropout masks differ from an "
                      "uninterrupted run's from here on",
                      stacklevel=2)
