"""The training loader (paper §4.1): random 224x224 crops, horizontal flips, PCA lighting, mean subtraction.

    from pipeline import train_loader
    loader = train_loader("shards/", batch_size=128, device="gpu", seed=0, shard_id=rank, num_shards=world)
    for epoch in range(90):
        for images, labels in loader.epoch(epoch): ...

Per epoch the shards are read in an order that is a pure function of (seed, epoch); DALI's shuffle
buffer (`initial_fill` samples, about two shards' worth by default) mixes samples across neighbouring
shards. The random crop, flip and lighting come from DALI's per-operator generators, seeded from
(seed, epoch, rank): the same arguments give bit-identical batches on the CPU.
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
from nvidia.dali import pipeline_def

from paper import BATCH_SIZE, CROP_SIZE
from pipeline import graph
from pipeline.errors import PipelineError
from pipeline.files import discover, epoch_order
from pipeline.loader import Identity, Loader
from pipeline.settings import check_common, check_device, default_dtype, default_threads, derive_seed
from pipeline.stats import LIGHTING_MODES, load

DEFAULT_INITIAL_FILL = 8192  # shuffle buffer, samples: ~1.6 shards of 5000 (~230 MB of JPEGs per rank)
READER_SEED_SALT = 1  # keeps the reader's seed apart from the pipeline's (both from (seed, epoch, rank))


def train_loader(
    shards: str,
    batch_size: int = BATCH_SIZE,
    *,
    device: Literal["cpu", "gpu"] = "gpu",
    seed: int = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    dtype: Literal["float32", "float16", "bfloat16"] | None = None,
    channels_last: bool = False,
    crop: Literal["random", "center"] = "random",
    crop_size: int = CROP_SIZE,
    mirror: bool = True,
    lighting: Literal["paper01", "cuda-convnet"] | bool = "paper01",
    mean: Literal["image", "channel"] = "image",
    checkpoint: str | None = None,
    initial_fill: int = DEFAULT_INITIAL_FILL,
    num_threads: int | None = None,
    prefetch: int = 2,
    device_id: int | None = None,
    overlap_epochs: bool = True,
    fancy_upsampling: bool = True,
) -> Loader:
    """One rank's training batches over `<shards>/train-*.tar` (§4.1 augmentation).

    Yields `(images, labels)`: images `[B, 3, crop_size, crop_size]` in `dtype` on `device` (on "gpu"
    CUDA tensors copied out of DALI on torch's current stream, see loader.py; `channels_last=True`
    gives torch.channels_last strides),
    labels int64 `[B]` on the same device. Every rank yields `len(loader)` batches per epoch; the
    positions past this rank's share of the epoch carry label -1 (`PAD_LABEL`, only in the last
    batch), so over `num_shards` ranks every training sample is used exactly once per epoch
    (`loader.samples` real samples on this rank, `loader.total_samples` over all).

    dtype: float32, float16 or bfloat16 [default: float16 on the GPU, float32 on the CPU].
    crop: "random" = uniform random position (§4.1), "center" = the central patch.
    mirror: horizontal flip with probability FLIP_PROBABILITY.
    lighting: "paper01" (default) or "cuda-convnet" PCA lighting (see pipeline/stats.py), False = off.
    mean: "image" = subtract the per-pixel mean image (mean.npy), cut at the crop's position and
      flipped with it; values stay on the 0-255 scale (§2: "centered raw RGB values").
      "channel" = (x - mean_c) / std_c with pca.json's per-channel mean and std.
    checkpoint: a `loader.state()` string; iteration resumes at that position with the same batches.
    initial_fill: DALI's shuffle buffer, in samples.
    num_threads: DALI worker threads [default: one per core on the CPU, up to 8 for a GPU].
    prefetch: batches DALI prepares ahead.
    device_id: the CUDA device [default: torch's current device].
    overlap_epochs: build and start the next epoch's pipeline on a background thread when this epoch
      starts, so the epoch boundary does not stall the trainer (costs a second pipeline's memory, its
      shuffle buffer and `prefetch` batches, through the epoch; see loader.py).
    fancy_upsampling: GPU decode with libjpeg-turbo's chroma upsampling, i.e. the CPU decoder's pixels
      (default); False gives nvJPEG's faster default, for measuring the difference only.
    """
    device_id = check_device(device, device_id)
    dtype = dtype or default_dtype(device)
    check_common(batch_size, shard_id, num_shards, dtype, mean, crop_size, num_threads, prefetch)
    if initial_fill < 1:
        raise PipelineError(f"initial_fill must be >= 1, got {initial_fill}")
    if crop not in ("random", "center"):
        raise PipelineError(f"crop must be 'random' or 'center', got {crop!r}")
    if lighting is True:
        lighting = "paper01"
    if lighting is not False and lighting not in LIGHTING_MODES:
        raise PipelineError(f"lighting must be one of {LIGHTING_MODES} or False, got {lighting!r}")
    found = discover(shards, "train")
    total = sum(s.samples for s in found)
    if total < num_shards:
        raise PipelineError(f"{shards}: {total} training samples cannot be split over {num_shards} ranks")
    look = graph.Look(load(shards, mean_image=mean == "image"), mean, crop_size, dtype, channels_last)
    threads = num_threads or default_threads(device)

    def reader_args(epoch: int) -> dict:
        return dict(shards=epoch_order(found, seed, epoch), shard_id=shard_id, num_shards=num_shards,
                    shuffle=True, initial_fill=initial_fill,
                    seed=derive_seed(seed, epoch, shard_id, READER_SEED_SALT))

    def build(epoch: int, cpt: bytes | None):
        pipe = _train_pipeline(
            reader=reader_args(epoch), look=look, device=device, crop=crop, mirror=mirror, lighting=lighting,
            fancy_upsampling=fancy_upsampling, batch_size=batch_size, num_threads=threads,
            device_id=device_id, prefetch_queue_depth=prefetch, seed=derive_seed(seed, epoch, shard_id),
            enable_checkpointing=True, checkpoint=cpt)
        pipe.build()
        return pipe

    def diagnose(epoch: int, batch: int) -> PipelineError | None:
        return graph.find_bad_jpeg(reader_args(epoch), batch_size, batch + prefetch + 1)

    identity = Identity("train", tuple(os.path.basename(s.path) for s in found), total, seed, batch_size,
                        shard_id, num_shards)
    return Loader(build, identity, device=device, device_id=device_id, dtype=dtype,
                  channels_last=channels_last, checkpoint=checkpoint, diagnose=diagnose, prefetch=prefetch,
                  overlap_epochs=overlap_epochs)


@pipeline_def
def _train_pipeline(reader: dict, look: graph.Look, device: str, crop: str, mirror: bool, lighting,
                    fancy_upsampling: bool = True):
    jpg, label = graph.read(**reader)
    pos = graph.crop_positions(look.crop) if crop == "random" else (0.5, 0.5)  # 0.5: (256 - 224) / 2 = 16
    image = graph.centre(graph.decode(jpg, device, fancy_upsampling), look, device)
    light = None
    if lighting:
        base = look.stats.mean if look.mean == "channel" else np.zeros(3)
        light = graph.lighting_mean(look.stats, lighting, base)
    flip = graph.mirror() if mirror else 0
    images = graph.normalize(image, look, pos=pos, mirror_flag=flip, lighting=light)
    return images, graph.labels(label, device)
