"""The evaluation loader (paper §6): the centre crop, or the ten crops whose softmaxes the paper averages.

    from pipeline import eval_loader
    for images, labels in eval_loader("shards/", device="gpu", shard_id=rank, num_shards=world,
                                      crop="ten"):
        valid = labels >= 0          # PAD_LABEL (-1) marks padding
        ...

No randomness: the `val-*.tar` shards are read in name order (source-file order) and split over
the ranks into contiguous ranges. Every rank yields `len(loader)` batches; the positions past its
share are padding (DALI repeats the rank's last sample) and carry label -1, so over all ranks the
50,000 validation images give exactly 50,000 votes.
"""

from __future__ import annotations

import os
from typing import Literal

from nvidia.dali import fn, pipeline_def

from paper import BATCH_SIZE, CROP_SIZE, TEN_CROP
from pipeline import graph
from pipeline.errors import PipelineError
from pipeline.files import discover
from pipeline.loader import Identity, Loader
from pipeline.settings import check_common, check_device, default_dtype, default_threads
from pipeline.stats import load

# §4.1/§6: "the four corner patches and the center patch as well as their horizontal reflections".
# Crop i < 5 is position i unflipped, crop i >= 5 is position i - 5 mirrored; as crop_pos fractions.
FIVE_POSITIONS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))
assert 2 * len(FIVE_POSITIONS) == TEN_CROP


def eval_loader(
    shards: str,
    batch_size: int = BATCH_SIZE,
    *,
    device: Literal["cpu", "gpu"] = "gpu",
    shard_id: int = 0,
    num_shards: int = 1,
    crop: Literal["center", "ten"] = "center",
    crop_size: int = CROP_SIZE,
    dtype: Literal["float32", "float16", "bfloat16"] | None = None,
    channels_last: bool = False,
    mean: Literal["image", "channel"] = "image",
    split: str = "val",
    num_threads: int | None = None,
    prefetch: int = 2,
    device_id: int | None = None,
) -> Loader:
    """One rank's evaluation batches over `<shards>/<split>-*.tar`.

    Yields `(images, labels)`: images `[B, 3, crop_size, crop_size]` for crop="center", or
    `[B, 10, 3, crop_size, crop_size]` for crop="ten" (crops 0-4: top-left, top-right, bottom-left,
    bottom-right, centre; 5-9: the same, mirrored); labels int64 `[B]`, -1 (`PAD_LABEL`) for
    padding. Normalisation (`mean`) and `dtype` as in `train_loader`, without lighting. Each
    iteration of the loader is one full pass over the split; the passes share one DALI pipeline
    (built at the first), so keep the loader to evaluate again.
    """
    device_id = check_device(device, device_id)
    dtype = dtype or default_dtype(device)
    check_common(batch_size, shard_id, num_shards, dtype, mean, crop_size, num_threads, prefetch)
    if crop not in ("center", "ten"):
        raise PipelineError(f"crop must be 'center' or 'ten', got {crop!r}")
    found = discover(shards, split)
    total = sum(s.samples for s in found)
    if total < num_shards:
        raise PipelineError(f"{shards}: {total} {split} samples cannot be split over {num_shards} ranks")
    look = graph.Look(load(shards, mean_image=mean == "image"), mean, crop_size, dtype, channels_last)
    threads = num_threads or default_threads(device)
    reader = dict(shards=found, shard_id=shard_id, num_shards=num_shards, shuffle=False, initial_fill=1,
                  seed=0)

    def build(epoch: int, cpt: bytes | None):
        pipe = _eval_pipeline(reader=reader, look=look, device=device, ten=crop == "ten",
                              batch_size=batch_size, num_threads=threads, device_id=device_id,
                              prefetch_queue_depth=prefetch, seed=0, enable_checkpointing=True,
                              checkpoint=cpt)
        pipe.build()
        return pipe

    def diagnose(epoch: int, batch: int) -> PipelineError | None:
        return graph.find_bad_jpeg(reader, batch_size, batch + prefetch + 1)

    identity = Identity(split, tuple(os.path.basename(s.path) for s in found), total, 0, batch_size,
                        shard_id, num_shards)
    return Loader(build, identity, device=device, device_id=device_id, dtype=dtype,
                  channels_last=channels_last, checkpoint=None, diagnose=diagnose,
                  prefetch=prefetch, overlap_epochs=False, reuse_pipeline=True)


@pipeline_def
def _eval_pipeline(reader: dict, look: graph.Look, device: str, ten: bool):
    jpg, label = graph.read(**reader)
    image = graph.centre(graph.decode(jpg, device), look, device)
    if not ten:
        images = graph.normalize(image, look, pos=(0.5, 0.5))  # (256 - 224) * 0.5 = 16
    else:
        crops = [graph.normalize(image, look, pos=pos, mirror_flag=flip)
                 for flip in (0, 1) for pos in FIVE_POSITIONS]
        images = fn.stack(*crops, axis=0)
    return images, graph.labels(label, device)
