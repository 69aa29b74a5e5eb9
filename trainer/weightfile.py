"""A run's weights as `.safetensors`, with what it takes to use them: the network's switches, its
classes and the input statistics, in the file's metadata.

    best.safetensors, final.safetensors   beside best.pt and final.pt in the run folder

Safetensors is the format timm and Hugging Face publish weights in: a JSON header and raw tensor
bytes, so loading one runs no code (a pickle may), and `safetensors.torch.load_file(path)` gives
the same state dict as `torch.load("best.pt", weights_only=True)`. The header's metadata is
str -> str, so every entry that is not a plain string is JSON:

    format        "alexnet-repro/1"
    architecture  "trainer.model.AlexNet"
    num_classes   "1000"
    switches      {"lrn_variant": "paper", "norm": "lrn", "pool": "overlap", "columns": 2, "dropout": 0.5,
                   "activation": "relu", "conv6": false}
                  (trainer.model.AlexNet's keyword arguments, as the run trained it)
    git           the revision that trained it (trainer.startup.git_revision)
    classes       [{"wnid": "n01440764", "words": "tench, Tinca tinca"}, ...] by label (manifest.json)
    input         {"mean": "image" | "channel", "channel_mean": [3], "channel_std": [3],
                   "stored_size": 256, "crop": 224, "jpeg_quality": 90}
    mean_image    mean="image" only: mean.npy's float32 [256, 256, 3], little-endian, base64

So `alexnet-eval`, `alexnet-train --init-from`, `alexnet-predict` and `torch.hub.load` need neither
the run's params.json nor the shard folder. The mean image goes into the header rather than in a
tensor: an extra tensor would make a plain `model.load_state_dict(load_file(path))` fail on an
unexpected key. Base64 of the raw float32s is exact and 1 MB, against ~2.4 MB of JSON digits.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

import paper
from tools import atomic
from trainer.checkpoint import CheckpointError, CheckpointWriteError, NonFiniteWeights, nonfinite_parameter
from trainer.checkpoint import load_weights as checkpoint_load_weights

SUFFIX = ".safetensors"
BEST, FINAL = "best.safetensors", "final.safetensors"  # beside best.pt and final.pt
FORMAT = "alexnet-repro/1"
ARCHITECTURE = "trainer.model.AlexNet"
# trainer.model.AlexNet's keyword arguments that change the network a state dict belongs to. `init`
# is not one: it only sets the starting weights, which loaded weights replace.
SWITCHES = ("lrn_variant", "norm", "pool", "columns", "dropout", "activation", "conv6")


class WeightsError(CheckpointError):
    """A weights file that cannot be read or used; the message is one line naming the file."""


@dataclass(frozen=True)
class InputStats:
    """What the evaluation pipeline normalises with (pipeline/graph.py `centre` and `normalize`)."""

    mean: str  # "image": raw RGB minus the mean image (§2); "channel": (x - mean_c) / std_c
    channel_mean: tuple[float, float, float]  # pca.json "mean", 0-255
    channel_std: tuple[float, float, float]  # pca.json "std", 0-255
    mean_image: np.ndarray | None  # float32 [256, 256, 3] RGB, 0-255; mean="image" only
    jpeg_quality: int  # the quality `alexnet-prep shard` stored the images at


@dataclass(frozen=True)
class Weights:
    """A state dict of trainer.model.AlexNet and what its metadata says; None where it says nothing."""

    state: dict[str, Tensor]
    num_classes: int
    switches: dict[str, Any]  # AlexNet keyword arguments (SWITCHES)
    git: str | None = None
    classes: list[dict[str, str]] | None = None  # {"wnid", "words"} by label
    stats: InputStats | None = None

    def config(self) -> dict[str, Any]:
        """The switches as a TrainConfig dict (what alexnet-eval reads from a checkpoint's "config")."""
        s = {k: v for k, v in self.switches.items() if k != "lrn_variant"}
        mean = {"mean": self.stats.mean} if self.stats else {}
        return {"shards": "", "out": "", "lrn": self.switches.get("lrn_variant", "paper"), **s, **mean}

    def checkpoint_state(self) -> dict[str, Any]:
        """As alexnet-eval reads a checkpoint: "model", "config" and "num_classes"."""
        return {"model": self.state, "config": self.config(), "num_classes": self.num_classes}


def switches_of(cfg: Any) -> dict[str, Any]:
    """AlexNet's keyword arguments of a TrainConfig (its --lrn is the model's lrn_variant)."""
    return {"lrn_variant": cfg.lrn, "norm": cfg.norm, "pool": cfg.pool, "columns": cfg.columns,
            "dropout": cfg.dropout, "activation": cfg.activation, "conv6": cfg.conv6}


def read_stats(shards: str | Path, mean: str, quality: int) -> InputStats:
    """The input statistics of a shard folder (pca.json, and mean.npy for mean="image"), checked by
    the readers `alexnet-prep verify` and the pipeline use; raises WeightsError."""
    from tools.statfiles import MEAN_FILE, PCA_FILE, StatFileError, read_mean_image, read_pca

    root = Path(shards)
    try:
        pca = read_pca(str(root / PCA_FILE))
        image = read_mean_image(str(root / MEAN_FILE)) if mean == "image" else None
    except StatFileError as e:
        raise WeightsError(str(e)) from None
    return InputStats(mean, tuple(map(float, pca["mean"])), tuple(map(float, pca["std"])), image, quality)


def run_metadata(cfg: Any, manifest: dict[str, Any], git: str) -> dict[str, str]:
    """The metadata of a run's best/final weights: its TrainConfig `cfg`, the classes of its shards'
    `manifest` and the statistics beside it, at the JPEG quality the shards were made with."""
    from tools.resize import DEFAULT_QUALITY

    quality = int(manifest.get("options", {}).get("quality", DEFAULT_QUALITY))
    return metadata(len(manifest["classes"]), switches_of(cfg), git, manifest["classes"],
                    read_stats(cfg.shards, cfg.mean, quality))


def metadata(num_classes: int, switches: dict[str, Any], git: str | None = None,
             classes: list[dict[str, Any]] | None = None, stats: InputStats | None = None) -> dict[str, str]:
    """The str -> str header of a weights file (see the module doc)."""
    meta = {"format": FORMAT, "architecture": ARCHITECTURE, "num_classes": str(num_classes),
            "switches": json.dumps({k: switches[k] for k in SWITCHES if k in switches}, sort_keys=True)}
    if git:
        meta["git"] = git
    if classes is not None:
        # by label: a manifest's classes carry their "index" (stable for lists without one)
        ordered = sorted(classes, key=lambda c: c.get("index", 0))
        meta["classes"] = json.dumps([{"wnid": c["wnid"], "words": c.get("words", "")} for c in ordered])
    if stats is not None:
        meta["input"] = json.dumps({"mean": stats.mean, "channel_mean": list(stats.channel_mean),
                                    "channel_std": list(stats.channel_std), "stored_size": paper.STORED_SIZE,
                                    "crop": paper.CROP_SIZE, "jpeg_quality": stats.jpeg_quality})
        if stats.mean_image is not None:
            meta["mean_image"] = base64.b64encode(
                np.ascontiguousarray(stats.mean_image, dtype="<f4").tobytes()).decode("ascii")
    return meta


def save(path: str | Path, state: dict[str, Tensor], meta: dict[str, str]) -> Path:
    """Write `state` (CPU copies) and `meta` as a .safetensors file: temp name in the same folder,
    fsync, os.replace (tools.atomic). Refuses non-finite weights with NonFiniteWeights, the check of
    every checkpoint write (trainer.checkpoint), and a failed write leaves nothing behind
    (CheckpointWriteError)."""
    from safetensors.torch import save as to_bytes

    path = Path(path)
    bad = nonfinite_parameter(state)
    if bad is not None:
        raise NonFiniteWeights(f"{path}: non-finite weights ({bad}); not written")
    # safetensors stores dense row-major bytes: a channels-last run's weights are made contiguous.
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    try:
        atomic.write_bytes(str(path), to_bytes(tensors, metadata=meta))
    except OSError as e:
        raise CheckpointWriteError(f"{path}: could not write the weights ({e.strerror or e})") from e
    return path


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """A model state dict from any weights file: a .safetensors one here, else a torch one
    (checkpoint.load_weights: best.pt, final.pt, a checkpoint); raises CheckpointError naming it."""
    if Path(path).suffix == SUFFIX:
        return read(path)[0]
    return checkpoint_load_weights(path)


def read(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the metadata of any .safetensors file; raises WeightsError naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # the Rust reader raises its own SafetensorError (and others) for a bad file
        raise WeightsError(f"{path}: not a readable safetensors file ({type(e).__name__}: "
                           f"{(str(e).strip().splitlines() or [''])[0][:200]})") from None


def load(path: str | Path) -> Weights:
    """A .safetensors file of trainer.model.AlexNet with what its metadata says; raises WeightsError.

    A file without this project's metadata (a state dict saved with safetensors elsewhere) still
    loads: the class count comes from fc8, the switches are the paper's."""
    state, meta = read(path)
    try:
        return _parse(state, meta)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{path}: {e}") from None


def _parse(state: dict[str, Tensor], meta: dict[str, str]) -> Weights:
    if "fc8.weight" not in state:
        raise ValueError("not an AlexNet state dict (no fc8.weight)")
    if meta.get("format", FORMAT) != FORMAT:
        raise ValueError(f"metadata format {meta['format']!r}, this version reads {FORMAT!r}")
    num_classes = int(meta.get("num_classes", state["fc8.weight"].shape[0]))
    if num_classes != state["fc8.weight"].shape[0]:
        raise ValueError(f"metadata says {num_classes} classes, fc8 has {state['fc8.weight'].shape[0]}")
    switches = json.loads(meta["switches"]) if "switches" in meta else {}
    unknown = sorted(set(switches) - set(SWITCHES))
    if unknown:
        raise ValueError(f"unknown switches in the metadata: {', '.join(unknown)}")
    classes = json.loads(meta["classes"]) if "classes" in meta else None
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"metadata lists {len(classes)} classes for a {num_classes}-class fc8")
    stats = None
    if "input" in meta:
        given = json.loads(meta["input"])
        image = None
        if given["mean"] == "image":
            side = paper.STORED_SIZE
            raw = base64.b64decode(meta["mean_image"], validate=True)
            image = np.frombuffer(raw, dtype="<f4").reshape(side, side, 3).astype(np.float32)
        stats = InputStats(given["mean"], tuple(given["channel_mean"]), tuple(given["channel_std"]), image,
                           int(given["jpeg_quality"]))
    return Weights(state, num_classes, switches, meta.get("git"), classes, stats)


def is_safetensors(path: str | Path) -> bool:
    return str(path).endswith(SUFFIX)
