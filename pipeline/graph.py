"""DALI graph pieces shared by the train and eval pipelines: read, decode, normalise.

The decode dominates and every pass over the pixels costs (the 2-core CPU box copies float32 at
~4 GB/s), so after the decode the crop, mirror, normalisation, lighting, layout change and cast
happen in ONE `crop_mirror_normalize` per image; the per-pixel mean image (mean="image") adds one
arithmetic pass before it (see `centre`).

Measured there (DALI 2.4, CPU time per 256x256 JPEG, best of 9 interleaved runs):
- decode: full image ~0.39 ms, ROI decode of the 224x224 crop ~0.44 ms; full decode + crop inside
  crop_mirror_normalize ~0.52 ms vs ROI decode + crop_mirror_normalize ~0.54-0.61 ms. DALI's
  libjpeg-turbo path saves nothing by decoding the region, so the full image is decoded and
  crop_mirror_normalize cuts the crop. On the GPU this also keeps the A100/H100 hardware JPEG
  decoder in use: DALI documents ROI decoding as incompatible with it.
- crop_mirror_normalize uint8 -> float32 ~0.15-0.2 ms; -> float16 ~+0.4 ms (DALI converts to half
  in software on the CPU; torch's `.half()` afterwards measured no cheaper).
- `fn.crop` of a float image costs ~1.5-2x a crop_mirror_normalize of it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.data_node import DataNode

from paper import FLIP_PROBABILITY, LIGHTING_STD, STORED_SIZE
from pipeline.errors import PipelineError
from pipeline.files import Shard
from pipeline.stats import Stats, lighting_matrix

READER = "reader"  # the reader's name, for reader_meta
DTYPES = ("float32", "float16", "bfloat16")
# Share of each batch for the hardware JPEG engines (DALI's default 0.65 is tuned for the A100's
# five; the H100 has seven). Not yet tuned on an H100: `pipeline.bench --device gpu` measures it.
HW_DECODER_LOAD = 0.75
# nvJPEG's per-thread buffer paddings (bytes), sized for the stored 256x256 images. nvJPEG allocates
# need + padding when a buffer grows, and DALI preallocates one device and two pinned buffers of the
# padding per decoder thread. One 256x256 image needs at most 384 KiB of int16 DCT coefficients (4:4:4;
# our 4:2:0 images half that) in the pinned buffer and those plus 192 KiB of decoded planes on the
# device, so 1 MiB covers any 256x256 JPEG without a reallocation. DALI's ResNet-50 example uses 211 MB
# and 140 MB, sized for full-size ImageNet photos: 1.6 GiB of device and 2.1 GiB of pinned memory
# per pipeline at 8 threads, for nothing here.
DECODER_DEVICE_PADDING = 1 << 20
DECODER_HOST_PADDING = 1 << 20


@dataclass(frozen=True)
class Look:
    """What the network sees: normalisation, crop size, output dtype and memory layout."""

    stats: Stats
    mean: str  # "image" (§2, per-pixel mean image) or "channel" (per-channel mean/std)
    crop: int  # square crop side
    dtype: str  # "float32" | "float16" | "bfloat16"
    channels_last: bool

    @property
    def layout(self) -> str:
        # HWC batches [B, H, W, C] seen through permute(0, 3, 1, 2) are exactly torch.channels_last
        return "HWC" if self.channels_last else "CHW"


def read(shards: list[Shard], *, shard_id: int, num_shards: int, shuffle: bool, initial_fill: int,
         seed: int) -> tuple[DataNode, DataNode]:
    """(jpg bytes, int32 label) of this rank's contiguous part of the concatenated shards.

    `pad_last_batch` makes every rank run the same number of batches (DALI repeats the rank's last
    sample); the loader labels those repeats -1. Measured: with `random_shuffle` the shuffle buffer
    never mixes the next epoch into this one, so the first `share` samples are the share, once each.

    `lazy_init`: the reader parses the index files at its first run, on DALI's own thread, instead of
    in `Pipeline.build()`. That binding holds Python's GIL throughout (measured: a thread running
    `build()` stops every other Python thread until it returns), and the parse grows with the samples
    (measured here: ~2.8 ms per 1,000, so ~3.5 s for ImageNet's 1.28M), so without it every epoch's
    build would stop the training thread for seconds, whichever thread called it.
    """
    return fn.readers.webdataset(
        paths=[s.path for s in shards],
        index_paths=[s.index for s in shards],
        ext=["jpg", "lbl"],
        dtypes=[types.UINT8, types.INT32],  # `lbl` is 4 bytes little-endian int32 (shards/README.md)
        missing_component_behavior="error",  # a sample without jpg/lbl fails, naming the index line
        random_shuffle=shuffle,
        initial_fill=initial_fill,
        shard_id=shard_id,
        num_shards=num_shards,
        pad_last_batch=True,
        stick_to_shard=True,
        lazy_init=True,
        seed=seed,
        name=READER,
    )


def labels(label: DataNode, device: str) -> DataNode:
    """int32 [1] per sample -> int64 scalar per sample, so a batch is a [B] LongTensor."""
    out = fn.cast(fn.reshape(label, shape=[]), dtype=types.INT64)
    return out.gpu() if device == "gpu" else out


def decoder_args(device: str, fancy_upsampling: bool = True) -> dict:
    """The arguments `decode` gives `fn.decoders.image` (one place, so tests and the bench see them)."""
    if device != "gpu":
        # libjpeg-turbo: always fancy (triangle) chroma upsampling, the pixels pca.json/mean.npy describe
        return dict(device="cpu")
    return dict(
        device="mixed",
        # the A100/H100 hardware JPEG engines take this share of each batch; the rest is Huffman-decoded
        # on the CPU threads with the IDCT on the GPU
        hw_decoder_load=HW_DECODER_LOAD,
        # nvJPEG upsamples 4:2:0 chroma by replication unless asked; libjpeg-turbo interpolates. Without
        # this the GPU decode differs from the CPU decode (and from the statistics) by several levels
        # per pixel on detailed images (tests/test_pipeline.py, gpu). Cost: `alexnet-bench pipeline
        # --device gpu [--fast-upsampling]`.
        jpeg_fancy_upsampling=fancy_upsampling,
        device_memory_padding=DECODER_DEVICE_PADDING,
        host_memory_padding=DECODER_HOST_PADDING,
        preallocate_width_hint=STORED_SIZE,  # the hardware decoder's buffers, for a batch of stored images
        preallocate_height_hint=STORED_SIZE,
    )


def decode(jpg: DataNode, device: str, fancy_upsampling: bool = True) -> DataNode:
    """The whole stored image, uint8 HWC (see the module doc for why not only the crop).

    On the GPU: nvJPEG via "mixed" with `decoder_args`; `fancy_upsampling=False` only to measure it.
    """
    return fn.decoders.image(jpg, **decoder_args(device, fancy_upsampling))


def decoder_memory(threads: int) -> tuple[int, int]:
    """(device, pinned host) bytes the mixed decoder preallocates for `threads` threads, from DALI's
    documentation of the paddings: one device buffer and two (double-buffered) pinned buffers of the
    padding per thread. Computed, not measured."""
    return threads * DECODER_DEVICE_PADDING, threads * 2 * DECODER_HOST_PADDING


def dali_dtype(dtype: str, device: str) -> types.DALIDataType:
    """What DALI writes for a requested dtype. DALI has no bfloat16: on the GPU it writes float16 (half
    the bytes of float32; torch's cast to bfloat16 is also the loader's copy out of DALI's memory,
    see loader.py), on the CPU float32 (DALI converts to half in software there, +0.4 ms per image,
    and float32 -> bfloat16 rounds once: the CPU batches stay what they were)."""
    if dtype == "float16" or (dtype == "bfloat16" and device == "gpu"):
        return types.FLOAT16
    return types.FLOAT


def crop_positions(crop: int) -> tuple[DataNode, DataNode]:
    """Uniform random crop anchors, as crop_pos fractions (§4.1: "random 224x224 patches").

    DALI rounds `crop_pos * (256 - crop)` (measured), so `uniform(range=(0, 1))` would give the two
    edge offsets half the weight of the others; drawing from the exact fractions k / (256 - crop)
    makes each of the 256 - crop + 1 integer offsets equally likely, like cuda-convnet's
    `rand() % (size - crop + 1)`.
    """
    span = STORED_SIZE - crop
    values = [k / span for k in range(span + 1)] if span else [0.0]
    x = fn.random.uniform(values=values, dtype=types.FLOAT)
    y = fn.random.uniform(values=values, dtype=types.FLOAT)
    return x, y


def mirror() -> DataNode:
    return fn.random.coin_flip(probability=FLIP_PROBABILITY)  # §4.1 horizontal reflections


def lighting_mean(stats: Stats, mode: str, base: np.ndarray) -> DataNode:
    """Per-image `base - shift`, shift = eigvec @ (alpha * scale) with alpha ~ N(0, LIGHTING_STD) (§4.1).

    Adding the same shift to every pixel and then subtracting `base` equals subtracting
    `base - shift`, so the lighting rides in crop_mirror_normalize's per-sample mean: no extra pass.
    One coord_transform computes it: out = (-M) @ alpha + base.
    """
    alpha = fn.random.normal(shape=[3], stddev=LIGHTING_STD, dtype=types.FLOAT)
    m = -lighting_matrix(stats, mode)
    mean = fn.coord_transform(fn.reshape(alpha, shape=[1, 3]), M=m.flatten().tolist(),
                              T=np.asarray(base, np.float64).tolist(), dtype=types.FLOAT)
    return fn.reshape(mean, shape=[3])


def mean_image(stats: Stats, device: str) -> DataNode:
    """The per-pixel mean image (§2) as a pipeline constant: made once, then the same memory."""
    image = stats.mean_image
    assert image is not None
    return types.Constant(image, dtype=types.FLOAT, layout="HWC", device=device)


def centre(image: DataNode, look: Look, device: str) -> DataNode:
    """mean="image": the decoded 256x256 image minus the per-pixel mean image (§2), float32.

    Done once per image, before cropping, in one arithmetic pass. Measured on the CPU (time per
    image, best of 9): 0.83-0.86 ms against 0.87-0.96 ms for cutting the mean image with a second
    crop_mirror_normalize and subtracting the crops (more passes over fewer pixels); `fn.crop` of
    the mean is slower still. The ten eval crops then share one subtraction.
    """
    if look.mean != "image":
        return image
    return image - mean_image(look.stats, device)


def normalize(image: DataNode, look: Look, *, pos: tuple, mirror_flag: DataNode | int = 0,
              lighting: DataNode | None = None) -> DataNode:
    """Crop, mirror, normalise, light and cast, in one crop_mirror_normalize.

    `image` is the decoded uint8 HWC batch, or its float32 `centre` for mean="image"; `pos` the
    crop's (x, y) anchor as fractions of the 256x256 image; `lighting` a [3] node of
    (base - shift) from `lighting_mean`, or None.
    mean="channel": (x + shift - mean_c) / std_c.
    mean="image": (x - M) + shift, the paper's centred raw values on the 0-255 scale (§2); mirroring
    after the subtraction flips the mean image with the sample.
    """
    crop_args = dict(crop=(look.crop, look.crop), crop_pos_x=pos[0], crop_pos_y=pos[1])
    common = dict(output_layout=look.layout, mirror=mirror_flag, dtype=dali_dtype(look.dtype, image.device),
                  **crop_args)
    if look.mean == "channel":
        mean = lighting if lighting is not None else look.stats.mean.tolist()
        return fn.crop_mirror_normalize(image, mean=mean, std=look.stats.std.tolist(), **common)
    return fn.crop_mirror_normalize(image, mean=lighting if lighting is not None else 0.0, std=1.0, **common)


def find_bad_jpeg(reader: dict, batch_size: int, batches: int) -> PipelineError | None:
    """The first JPEG among the first `batches` batches that Pillow cannot decode, as a PipelineError.

    Used only after DALI failed without naming the sample: the same reader arguments (same seed)
    give the same sample order, and reading without decoding is cheap.
    """
    from PIL import Image

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None)
    def raw():
        jpg, _ = read(**reader)
        return jpg, fn.get_property(jpg, key="source_info")

    pipe = raw()
    try:
        pipe.build()
        for _ in range(batches):
            jpgs, infos = pipe.run()
            for i in range(len(jpgs)):
                try:
                    with Image.open(io.BytesIO(np.array(jpgs[i]).tobytes())) as im:
                        im.convert("RGB").load()
                except Exception as e:  # noqa: BLE001 - whatever Pillow objects to is the answer
                    info = np.array(infos[i]).tobytes().decode("utf-8", "replace")  # <tar>:<offset>:<member>
                    shard, _, rest = info.rpartition(".tar:")
                    key = rest.partition(":")[2].rsplit("/", 1)[-1].split(".", 1)[0]
                    return PipelineError(f"{shard}.tar: {key}: image does not decode ({e})")
    except RuntimeError:
        return None
    return None
