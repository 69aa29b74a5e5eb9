"""`alexnet-predict`: the top-5 classes of image files, with the evaluation's own preprocessing.

    alexnet-predict --checkpoint runs/paper cat.jpg dog.png         # the run's best.safetensors
    alexnet-predict --checkpoint runs/paper/final.safetensors --json photos/*.jpg
    alexnet-predict --checkpoint old/final.pt --shards shards/ cat.jpg   # weights without statistics

Each image goes the way a validation image goes to `alexnet-eval`:
1. `alexnet-prep shard`'s resize (tools/resize.py `process`): decoded to RGB, shorter side scaled to
   256, the central 256x256 kept, stored as a JPEG at the shards' quality and decoded again: the
   network has only ever seen those JPEG-rounded pixels;
2. the eval pipeline's centre crop and normalisation (pipeline/eval.py, pipeline/graph.py): the
   224x224 patch at offset (256 - 224) / 2 = 16, minus the mean image (--mean image, §2), or
   (x - mean) / std per channel (--mean channel).
The statistics, class names and network switches come from the weights file's metadata
(trainer/weightfile.py). Weights written before it carried them (best.pt, final.pt, step-*.pt) take
them from the run's params.json or checkpoint, and the statistics and classes from `--shards`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import paper
from trainer import weightfile
from trainer.model import AlexNet
from trainer.weightfile import InputStats, Weights

TOP = 5  # §6 reports top-1 and top-5; the command prints the five
BATCH = 32  # images per forward pass: bounds the memory of a long list of files


class PredictError(ValueError):
    """Bad input to alexnet-predict; the message is one line naming the file."""


@dataclass(frozen=True)
class Predictor:
    model: nn.Module  # trainer.model.AlexNet in eval mode, on one device
    stats: InputStats
    classes: list[dict[str, str]]  # {"wnid", "words"} by label
    source: Path  # the weights file it came from


def find_weights(source: str | Path) -> Path:
    """A run folder's best.safetensors (else final.safetensors), or `source` itself. A run folder
    without either (a run from before them) gives the folder: its latest checkpoint is then used."""
    path = Path(source)
    if path.is_dir():
        for name in (weightfile.BEST, weightfile.FINAL):
            if (path / name).is_file():
                return path / name
    return path


def read_weights(path: Path) -> tuple[Weights, str]:
    """`path` as Weights, and the input normalisation it was trained with: a .safetensors file with
    its metadata, or anything alexnet-eval reads (a checkpoint, a run folder, best.pt / final.pt
    beside params.json), whose settings name the normalisation but hold no statistics or classes."""
    from trainer import evaluate
    from trainer.config import ConfigError, TrainConfig

    if weightfile.is_safetensors(path):
        try:
            w = weightfile.load(path)
        except weightfile.WeightsError as e:
            raise PredictError(f"--checkpoint: {e}") from None
        # A file that does not name its normalisation (not written here) gets the paper's.
        return w, w.stats.mean if w.stats else "image"
    try:
        state = evaluate.load_checkpoint(str(path))
    except ConfigError as e:
        raise PredictError(str(e)) from None
    cfg = TrainConfig.from_dict(state["config"])
    return Weights(state["model"], state["num_classes"], weightfile.switches_of(cfg)), cfg.mean


def from_shards(weights: Weights, mean: str, shards: str, path: Path,
                ) -> tuple[InputStats, list[dict[str, str]]]:
    """The statistics and classes `weights` lack, from the shard folder it was trained on."""
    from tools import manifest as manifest_lib
    from tools.resize import DEFAULT_QUALITY

    try:
        m = manifest_lib.load(shards)
    except manifest_lib.ManifestError as e:
        raise PredictError(f"--shards: {e}") from None
    if len(m["classes"]) != weights.num_classes:
        raise PredictError(f"--shards: {shards} has {len(m['classes'])} classes, {path} "
                           f"{weights.num_classes}")
    quality = int(m.get("options", {}).get("quality", DEFAULT_QUALITY))
    try:
        stats = weightfile.read_stats(shards, mean, quality)
    except weightfile.WeightsError as e:
        raise PredictError(f"--shards: {e}") from None
    return stats, sorted(m["classes"], key=lambda c: c.get("index", 0))


def load(checkpoint: str | Path, shards: str | None = None, device: str = "cpu") -> Predictor:
    """The network, statistics and classes of `checkpoint` (a run folder or a weights file), on
    `device`; raises PredictError."""
    path = find_weights(checkpoint)
    if not path.exists():
        raise PredictError(f"--checkpoint: {path}: no such file or run folder")
    w, mean = read_weights(path)
    if w.stats is not None and w.classes is not None:  # what alexnet-train writes into best/final
        stats, classes = w.stats, w.classes
    elif shards:
        stats, classes = from_shards(w, mean, shards, path)
    else:
        raise PredictError(f"--checkpoint: {path} carries no input statistics and class names (written "
                           "before best/final.safetensors held them); pass --shards with the shard folder "
                           "it was trained on")
    try:
        model = AlexNet(num_classes=w.num_classes, devices=(device,), **w.switches)
        model.load_state_dict(w.state)
    except (RuntimeError, ValueError) as e:  # torch lists every key: the first line names the problem
        raise PredictError(f"--checkpoint: {path} does not fit trainer.model.AlexNet "
                           f"({(str(e).strip().splitlines() or [''])[0][:200]})") from None
    return Predictor(model.eval(), stats, classes, path)


def preprocess(data: bytes, stats: InputStats) -> Tensor:
    """One image file's bytes as the eval pipeline's centre crop: float32 [3, 224, 224].

    The arithmetic is the pipeline's, in its order, so the values are DALI's to the bit (measured on
    the CPU, both modes; tests/test_predict.py): the mean image is subtracted in float32 from the
    whole 256x256 image before the crop (graph.centre); per channel, crop_mirror_normalize computes
    (x - mean) * (1 / std) in float32, and (x - mean) / std differs from it in the last bit of a
    quarter of the values."""
    from tools.resize import process

    pixels = process(data, quality=stats.jpeg_quality).pixels  # uint8 [256, 256, 3], as stored
    offset = (paper.STORED_SIZE - paper.CROP_SIZE) // 2  # crop_pos 0.5: (256 - 224) * 0.5 = 16
    window = slice(offset, offset + paper.CROP_SIZE)
    if stats.mean == "image":
        assert stats.mean_image is not None
        x = pixels.astype(np.float32) - stats.mean_image
    else:
        mean = np.asarray(stats.channel_mean, dtype=np.float32)
        inv_std = (1 / np.asarray(stats.channel_std, dtype=np.float32)).astype(np.float32)
        x = (pixels.astype(np.float32) - mean) * inv_std
    return torch.from_numpy(np.ascontiguousarray(x[window, window].transpose(2, 0, 1)))


def read_image(path: str | Path, stats: InputStats) -> Tensor:
    """`preprocess` of one file; raises PredictError naming it."""
    from tools.resize import DecodeError

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except OSError as e:
        raise PredictError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return preprocess(data, stats)
    except DecodeError as e:
        raise PredictError(f"{path}: not an image ({e})") from None


@torch.no_grad()
def logits(predictor: Predictor, images: Tensor) -> Tensor:
    """The network's float32 logits for a [N, 3, 224, 224] batch, on the CPU."""
    device = next(predictor.model.parameters()).device
    return predictor.model(images.to(device)).float().cpu()


def top(predictor: Predictor, out: Tensor, k: int = TOP) -> list[list[dict[str, Any]]]:
    """Per image, the k most probable classes: label, wnid, words and softmax probability."""
    probs = torch.softmax(out.double(), 1)
    p, labels = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[{"label": int(c), "wnid": predictor.classes[int(c)]["wnid"],
              "words": predictor.classes[int(c)]["words"], "probability": float(q)}
             for q, c in zip(row_p, row_c)] for row_p, row_c in zip(p, labels)]


def predict(predictor: Predictor, images: Sequence[str | Path], k: int = TOP,
            ) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(image, its top-k) for every file, BATCH at a time, in the order given."""
    for start in range(0, len(images), BATCH):
        chunk = images[start:start + BATCH]
        batch = torch.stack([read_image(p, predictor.stats) for p in chunk])
        yield from zip(map(str, chunk), top(predictor, logits(predictor, batch), k))


def main(checkpoint: str, images: Sequence[str], shards: str | None = None, device: str | None = None,
         k: int = TOP, echo: Callable[[str], None] = print, as_json: bool = False) -> None:
    """`alexnet-predict`: print each image's top-k; raises PredictError before any output for a bad
    checkpoint or a missing file, and at the image for one that does not decode."""
    import json

    if not images:
        raise PredictError("give at least one image file")
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        what = "a folder, not an image file" if Path(missing[0]).is_dir() else "no such file"
        raise PredictError(f"{missing[0]}: {what}" + (f" (and {len(missing) - 1} more missing)"
                                                       if len(missing) > 1 else ""))
    device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError:
        raise PredictError(f"--device: {device!r} is not a device name (e.g. cpu, cuda:0)") from None
    predictor = load(checkpoint, shards, device)
    for image, best in predict(predictor, images, k):
        if as_json:
            echo(json.dumps({"image": image, "top": best}))
            continue
        echo(image)
        for rank, c in enumerate(best, 1):
            echo(f"  {rank}. {100 * c['probability']:6.2f}%  {c['wnid']}  {c['words']}")
