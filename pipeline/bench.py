"""`alexnet-bench pipeline` (or `python -m pipeline.bench`): our train loader against a hand-written one.

    python -m pipeline.bench                          # CPU, temporary photo-like shards
    python -m pipeline.bench --shards shards/ --device gpu --batches 200
    python -m pipeline.bench --shards sample/ --device gpu --copies 25 --baseline-batches 32 --json out/p.json

In one run, on the same shards, batch size and augmentations (random crop, flip, PCA lighting,
mean subtraction, output dtype):

(a) the loader a PyTorch user writes by hand: webdataset + Pillow decode + NumPy augmentation in a
    torch DataLoader with one worker per core (the full image is decoded, then cropped);
(b) `pipeline.train_loader`: DALI decode, crop + mirror + normalise + lighting + cast fused in
    crop_mirror_normalize (pipeline/graph.py).

Each is warmed up, then timed over several passes of `--batches` batches (`--baseline-batches` for
(a), which is 10x or more slower on a GPU box); the median images/s of the passes is reported, with
every pass shown (the CPU boxes are shared and noisy). (a) warms up for at least its workers x
PREFETCH_FACTOR batches: that many can sit ready in the DataLoader's queue, and timing them would
count images made before the clock started. (a) and (b) take turns for `--rounds` rounds; (a)'s
workers exit before (b) is timed, so the two never compete for the cores, and (b)'s DALI threads
only refill their 2 prefetched batches while (a) runs. `--json PATH` also writes every figure.

Our loader builds one DALI pipeline per epoch (~0.15 s of CPU here, measured on 3,200 images). An
ImageNet epoch of 10,000 batches hides that; a small sample's 25-batch epoch would not, and the
figure would be the rebuilds'. `--copies N` reads each train shard N times per epoch (symlinks in a
temporary folder), so that the timed passes of (b) stay inside one epoch, as on ImageNet.

`--fast-upsampling` (GPU only) decodes with nvJPEG's default chroma upsampling instead of the
loaders' fancy upsampling (the CPU decoder's pixels, pipeline/graph.py): (b) with and without it,
same shards and settings, is what matching the CPU's pixels costs. That measurement needs a GPU.

Without `--shards`, a photo-like set is made once with the prep tools (1280 `alexnet-prep sample`
images, shorter side resized to 256 and re-encoded exactly as for ImageNet, with pca.json and
mean.npy), its shards hard-linked 8 times over (80 batches per epoch, see SAMPLE_COPIES), and
cached in the system temp folder, so reruns start at once.
"""

from __future__ import annotations

import glob
import io
import itertools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
import numpy as np
import torch  # before webdataset: tools/wds.py hides torch from it otherwise (see there)

from paper import CROP_SIZE, FLIP_PROBABILITY, LIGHTING_STD, STORED_SIZE
from pipeline.settings import default_dtype, default_threads
from pipeline.stats import LIGHTING_MODES, Stats, lighting_matrix, load
from pipeline.train import train_loader
from tools import atomic

SAMPLE_CLASSES = 8  # temporary set: 8 classes x 160 = 1280 distinct training images
SAMPLE_PER_CLASS = 160
SAMPLE_SHARD_SIZE = 160  # 8 shards: every DataLoader worker gets shards to read
# The 8 shards are linked 8 times over: 10240 samples, 80 batches per epoch. Our loader builds one
# pipeline per epoch (~0.2 s of CPU here), which 10-batch epochs would overstate ~10x against
# ImageNet's 10,000 batches per epoch; (a) streams endlessly and does not care.
SAMPLE_COPIES = 8
PREFETCH_FACTOR = 2  # batches each DataLoader worker of (a) may hold ready


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    from nvidia.dali import __version__ as dali

    return f"{cpu}, {cores} cores, {gpu}; torch {torch.__version__}, DALI {dali}"


def sample_shards() -> str:
    """A cached photo-like shard folder made with the prep tools (see module doc)."""
    from tools.sample import make_sample
    from tools.shard import ShardSettings
    from tools.shard import run as shard_run
    from tools.stats import compute

    root = os.path.join(tempfile.gettempdir(), f"alexnet-bench-pipeline-{SAMPLE_CLASSES}x{SAMPLE_PER_CLASS}")
    src, out, linked = (os.path.join(root, name) for name in ("src", "shards", f"x{SAMPLE_COPIES}"))
    if not os.path.exists(os.path.join(out, "pca.json")):
        click.echo(f"making photo-like shards in {root} (once) ...", err=True)
        make_sample(src, layout="raw", classes=SAMPLE_CLASSES, train_per_class=SAMPLE_PER_CLASS,
                    val_per_class=1)
        shard_run(ShardSettings(src=src, out=out, splits=("train",), shard_size=SAMPLE_SHARD_SIZE),
                  log=lambda _: None)
        compute(out, from_manifest=True)
    if not os.path.exists(os.path.join(linked, "mean.npy")):
        os.makedirs(linked, exist_ok=True)
        tars = sorted(glob.glob(os.path.join(out, "train-*.tar")))
        for copy, (i, tar) in itertools.product(range(SAMPLE_COPIES), enumerate(tars)):
            name = f"train-{copy * len(tars) + i:06d}"
            for ext in (".tar", ".idx"):
                if not os.path.exists(os.path.join(linked, name + ext)):
                    os.link(tar[: -len(".tar")] + ext, os.path.join(linked, name + ext))
        for name in ("pca.json", "mean.npy"):  # last: their presence marks the folder complete
            os.link(os.path.join(out, name), os.path.join(linked, name))
    return linked


@contextmanager
def repeated(shards: str, copies: int) -> Iterator[str]:
    """`shards` with every train shard listed `copies` times: the same samples, an epoch `copies` times
    longer (see module doc). Symlinks in a temporary folder, removed on exit; no manifest.json there,
    so the loader does not check the shard list against it. copies=1: `shards` itself."""
    if copies == 1:
        yield shards
        return
    tars = sorted(glob.glob(os.path.join(glob.escape(shards), "train-*.tar")))
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-copies-") as tmp:
        for copy, (i, tar) in itertools.product(range(copies), enumerate(tars)):
            name = f"train-{copy * len(tars) + i:06d}"
            for ext in (".tar", ".idx"):
                os.symlink(os.path.abspath(tar[: -len(".tar")] + ext), os.path.join(tmp, name + ext))
        for name in ("pca.json", "mean.npy"):
            if os.path.exists(os.path.join(shards, name)):
                os.symlink(os.path.abspath(os.path.join(shards, name)), os.path.join(tmp, name))
        yield tmp


class HandWritten:
    """The per-sample transform of loader (a): what the DALI graph does, in NumPy on full decodes."""

    def __init__(self, stats: Stats, mean: str, lighting: str | bool, dtype: torch.dtype):
        self.stats, self.mean, self.dtype = stats, mean, dtype
        self.light = lighting_matrix(stats, lighting).astype(np.float32) if lighting else None
        self.rng = np.random.default_rng()

    def __call__(self, sample: tuple[bytes, bytes]) -> tuple[torch.Tensor, int]:
        from PIL import Image

        jpg, lbl = sample
        span = STORED_SIZE - CROP_SIZE
        x, y = self.rng.integers(0, span + 1, size=2)
        image = Image.open(io.BytesIO(jpg)).convert("RGB").crop((x, y, x + CROP_SIZE, y + CROP_SIZE))
        a = np.asarray(image, dtype=np.float32)
        shift = 0.0
        if self.light is not None:
            shift = self.light @ self.rng.normal(0, LIGHTING_STD, 3).astype(np.float32)
        if self.mean == "image":
            a = a + shift - self.stats.mean_image[y : y + CROP_SIZE, x : x + CROP_SIZE]
        else:
            a = (a + shift - self.stats.mean.astype(np.float32)) / self.stats.std.astype(np.float32)
        if self.rng.random() < FLIP_PROBABILITY:
            a = a[:, ::-1]
        chw = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).to(self.dtype)
        return chw, int.from_bytes(lbl, "little", signed=True)


def _worker_seed(_: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.rng = np.random.default_rng(info.seed % 2**32)


class _Stream(torch.utils.data.IterableDataset):
    """webdataset over the shards, endlessly (resampled), shuffled, transformed, batched."""

    def __init__(self, urls: list[str], transform: HandWritten, batch_size: int):
        self.urls, self.transform, self.batch_size = urls, transform, batch_size

    def __iter__(self) -> Iterator:
        import webdataset as wds

        ds = (wds.WebDataset(self.urls, resampled=True, shardshuffle=False, nodesplitter=None)
              .shuffle(1000).to_tuple("jpg", "lbl").map(self.transform).batched(self.batch_size))
        return iter(ds)


def hand_written(shards: str, batch_size: int, mean: str, lighting: str | bool, dtype: str, device: str,
                 workers: int) -> tuple[Iterator, Callable[[], None]]:
    """Loader (a) and a function that stops its workers."""
    urls = sorted(glob.glob(os.path.join(shards, "train-*.tar")))
    transform = HandWritten(load(shards, mean_image=mean == "image"), mean, lighting, getattr(torch, dtype))
    loader = torch.utils.data.DataLoader(
        _Stream(urls, transform, batch_size), batch_size=None, num_workers=workers, persistent_workers=True,
        prefetch_factor=PREFETCH_FACTOR, pin_memory=device == "gpu", worker_init_fn=_worker_seed)
    it = iter(loader)

    def batches() -> Iterator:
        for images, labels in it:
            if device == "gpu":
                images, labels = images.cuda(non_blocking=True), labels.cuda(non_blocking=True)
            yield images, labels

    return batches(), lambda: it._shutdown_workers()


def ours(shards: str, batch_size: int, mean: str, lighting: str | bool, dtype: str, device: str,
         fancy_upsampling: bool = True) -> Iterator:
    loader = train_loader(shards, batch_size=batch_size, device=device, mean=mean, lighting=lighting,
                          dtype=dtype, fancy_upsampling=fancy_upsampling)
    for epoch in itertools.count():
        yield from loader.epoch(epoch)


def timed(batches: Iterator, n: int, passes: int, warmup: int, device: str) -> list[float]:
    """images/s of each pass of n batches, after `warmup` batches."""
    def sync() -> None:
        if device == "gpu":
            torch.cuda.synchronize()

    for _ in range(warmup):
        next(batches)
    rates = []
    for _ in range(passes):
        sync()
        start, images = time.perf_counter(), 0
        for _ in range(n):
            x, _ = next(batches)
            images += x.shape[0]
        sync()
        rates.append(images / (time.perf_counter() - start))
    return rates


@click.command("pipeline")
@click.option("--shards", default=None, help="Shard folder with train-*.tar, pca.json, mean.npy "
              "[default: a temporary photo-like set, made once].")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--batches", type=click.IntRange(1), default=10, show_default=True,
              help="Batches per timed pass.")
@click.option("--baseline-batches", type=click.IntRange(1), default=None,
              help="Batches per timed pass of (a) [default: --batches].")
@click.option("--passes", type=click.IntRange(1), default=5, show_default=True,
              help="Timed passes per loader.")
@click.option("--warmup", type=click.IntRange(0), default=5, show_default=True,
              help="Untimed batches first.")
@click.option("--mean", type=click.Choice(["image", "channel"]), default="image", show_default=True)
@click.option("--lighting", type=click.Choice([*LIGHTING_MODES, "off"]), default="paper01", show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "float32", "bfloat16"]), default=None,
              help="Output dtype of both loaders [default: the loaders', float16 on gpu, float32 on cpu].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="DataLoader workers of (a) [default: cores].")
@click.option("--copies", type=click.IntRange(1), default=1, show_default=True,
              help="Read each train shard this many times per epoch (see the module doc).")
@click.option("--rounds", type=click.IntRange(1), default=2, show_default=True,
              help="Alternate (a) and (b) this many times, so both see the machine's load changes.")
@click.option("--fast-upsampling", is_flag=True,
              help="GPU only: (b) decodes with nvJPEG's default chroma upsampling, not the CPU decoder's "
              "fancy upsampling; compare with a run without it to measure that option's cost.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures (machine, settings, every pass, medians, ratio) to this file.")
def command(shards: str | None, batch_size: int, device: str, batches: int, baseline_batches: int | None,
            passes: int, warmup: int, mean: str, lighting: str, dtype: str, workers: int | None, copies: int,
            rounds: int, fast_upsampling: bool, json_path: str | None) -> None:
    """Images/s of a hand-written webdataset + Pillow DataLoader and of our DALI loader, same work."""
    if device == "gpu" and not torch.cuda.is_available():
        raise click.UsageError("--device gpu: CUDA is not available on this machine")
    if fast_upsampling and device != "gpu":
        raise click.UsageError("--fast-upsampling applies to the GPU decoder only (use --device gpu)")
    if json_path and not os.path.isdir(os.path.dirname(os.path.abspath(json_path))):
        raise click.UsageError(f"--json: the folder of {json_path} does not exist")
    shards = shards or sample_shards()
    if not glob.glob(os.path.join(glob.escape(shards), "train-*.tar")):
        raise click.UsageError(f"--shards: {shards} holds no train-*.tar")
    dtype = dtype or default_dtype(device)
    light: str | bool = False if lighting == "off" else lighting
    workers = workers or default_threads("cpu")
    baseline_batches = baseline_batches or batches
    a_warmup = max(warmup, workers * PREFETCH_FACTOR)  # drain (a)'s ready queue first (module doc)
    host = machine()
    load_before = os.getloadavg()[0]
    click.echo(f"machine: {host}")
    click.echo(f"shards: {shards}; batch {batch_size}, {device}, mean={mean}, lighting={lighting}, {dtype}; "
               f"{rounds} rounds of {passes} passes of {batches} batches, each after {warmup} warm-up")
    if (baseline_batches, a_warmup) != (batches, warmup):
        click.echo(f"(a): passes of {baseline_batches} batches, each after {a_warmup} warm-up")
    if copies > 1:
        click.echo(f"each train shard read {copies} times per epoch")
    if fast_upsampling:
        click.echo("(b): nvJPEG's default chroma upsampling (--fast-upsampling), not the CPU's pixels")
    click.echo(f"load average before: {load_before:.2f}")

    a, b = [], []
    with repeated(shards, copies) as folder:
        b_stream = ours(folder, batch_size, mean, light, dtype, device, fancy_upsampling=not fast_upsampling)
        for _ in range(rounds):
            stream, stop = hand_written(folder, batch_size, mean, light, dtype, device, workers)
            a += timed(stream, baseline_batches, passes, a_warmup, device)
            stop()  # its workers exit: nothing of (a) runs while (b) is timed
            b += timed(b_stream, batches, passes, warmup, device)
        b_stream.close()  # (b)'s pipeline goes before its folder
    load_after = os.getloadavg()[0]
    click.echo(f"load average after: {load_after:.2f} (other processes on the box skew both)")

    ra, rb = statistics.median(a), statistics.median(b)
    click.echo(f"(a) webdataset + Pillow + NumPy, DataLoader({workers} workers): {ra:8.0f} images/s  "
               f"(passes: {', '.join(f'{r:.0f}' for r in a)})")
    click.echo(f"(b) pipeline.train_loader (DALI {device}):{' ' * (22 - len(device))}{rb:8.0f} images/s  "
               f"(passes: {', '.join(f'{r:.0f}' for r in b)})")
    click.echo(f"ratio (b)/(a): {rb / ra:.2f}x")
    if json_path:
        atomic.write_json(json_path, {
            "bench": "pipeline", "machine": host, "device": device, "shards": shards,
            "settings": {"batch_size": batch_size, "batches": batches, "baseline_batches": baseline_batches,
                         "passes": passes, "rounds": rounds, "copies": copies, "warmup": warmup,
                         "baseline_warmup": a_warmup, "mean": mean, "lighting": lighting, "dtype": dtype,
                         "workers": workers, "fancy_upsampling": not fast_upsampling},
            "load_average": {"before": load_before, "after": load_after},
            "hand_written": {"loader": f"webdataset + Pillow + NumPy, DataLoader({workers} workers)",
                             "images_per_s": ra, "passes": a},
            "ours": {"loader": f"pipeline.train_loader (DALI {device})", "images_per_s": rb, "passes": b},
            "ratio": rb / ra})
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    command()
