"""`alexnet-prep bench`: our resize-and-shard path against the naive reference, in one run.

(a) the naive single-core reference: PIL open -> RGB -> bicubic resize of the whole image so the
shorter side is 256 -> centre crop -> JPEG q90; (b) `alexnet-prep shard` (everything it does:
read, decode, resize, encode, hash, index, pixel sums) with 1 worker and with all workers, on the
same photo-like JPEGs of ImageNet-typical sizes. The paths run interleaved (a, b 1 worker, b all
workers, then again), so each repeat's ratio compares runs seconds apart under the same load; the
median of those ratios is reported with the load average before and after. Prints images/s, the
ratios, the PSNR of our stored images against the reference's, and a JPEG quality table.
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import tarfile
import tempfile
import time
from typing import Any

import numpy as np
from PIL import Image

from paper import STORED_SIZE

# ImageNet-like sizes with the share of each in every 25 images: ILSVRC2012's train images are
# mostly around 500x375 (mean ~400x350), portrait or landscape; a few per cent are large (4% here).
SIZES = [((500, 400), 4), ((500, 375), 4), ((375, 500), 4), ((500, 333), 4), ((500, 500), 4),
         ((640, 480), 4), ((1600, 1200), 1)]


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs plus mild sensor-like noise: compresses and resizes like a photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.int16)
    noisy = base + rng.normal(0, 3, base.shape).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 92) -> bytes:
    out = io.BytesIO()
    Image.fromarray(photo(width, height, seed)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def reference_pixels(data: bytes, size: int = STORED_SIZE) -> Image.Image:
    """The naive path a user would write first (the issue's baseline), before encoding."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def reference(data: bytes, quality: int = 90, size: int = STORED_SIZE) -> bytes:
    out = io.BytesIO()
    reference_pixels(data, size).save(out, "JPEG", quality=quality)
    return out.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def make_images(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    cycle = [size for size, share in SIZES for _ in range(share)]
    return [(f"n00000001_{i}", photo_jpeg(*cycle[i % len(cycle)], seed=seed + i)) for i in range(n)]


def _write_folders(root: str, images: list[tuple[str, bytes]]) -> None:
    os.makedirs(f"{root}/train/n00000001", exist_ok=True)
    for key, data in images:
        with open(f"{root}/train/n00000001/{key}.JPEG", "wb") as f:
            f.write(data)


def run(n: int = 200, repeats: int = 3, workers: int | None = None, quality: int = 90) -> dict[str, Any]:
    from tools.resize import decode_rgb, decode_stored, encode_jpeg, resize_center
    from tools.shard import ShardSettings
    from tools.shard import run as shard_run

    workers = workers or os.cpu_count() or 1
    images = make_images(n)
    results: dict[str, list[float]] = {"reference": [], "ours_1": [], f"ours_{workers}": []}
    startup: list[float] = []  # seconds: a run of one image per worker, i.e. starting the workers
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        _write_folders(f"{tmp}/src", images)
        ours_out = {}
        for r in range(repeats):
            t = time.perf_counter()
            ref = {key: reference(data, quality) for key, data in images}
            results["reference"].append(n / (time.perf_counter() - t))
            for w in sorted({1, workers}):
                out = f"{tmp}/out-{w}-{r}"
                # One shard per worker: a real run's shards hold 5000 images, so their fixed costs
                # (4 fsyncs, the index pass) are amortised; bench-sized shards of n/4 images added
                # ~0.3 ms an image (measured with cProfile, 2026-12-02), which a real run does not pay.
                settings = ShardSettings(src=f"{tmp}/src", out=out, splits=("train",), quality=quality,
                                         workers=w, shard_size=-(-n // w))
                t = time.perf_counter()
                shard_run(settings, log=lambda _: None)
                results[f"ours_{w}"].append(n / (time.perf_counter() - t))
                ours_out[w] = out
            if workers > 1:
                # The worker processes' start (spawn, imports: ~0.8 s here) is paid once per run, so it
                # weighs on a bench of seconds and not on a real run of hours: timed on its own with
                # one image per worker and reported beside the raw scaling.
                tiny = ShardSettings(src=f"{tmp}/src", out=f"{tmp}/startup-{r}", splits=("train",),
                                     quality=quality, workers=workers, shard_size=1, per_class=workers)
                t = time.perf_counter()
                shard_run(tiny, log=lambda _: None)
                startup.append(time.perf_counter() - t)
        stored = {}
        for name in sorted(os.listdir(ours_out[1])):
            if name.endswith(".tar"):
                with tarfile.open(f"{ours_out[1]}/{name}") as t:
                    for m in t:
                        if m.name.endswith(".jpg"):
                            stored[m.name.split(".")[0]] = t.extractfile(m).read()
    load_after = os.getloadavg()
    quality_table = []
    sample = images[: min(len(images), 30)]
    for q in (75, 85, 90, 95):
        sizes, scores = [], []
        for _, data in sample:
            exact = resize_center(decode_rgb(data)[0])
            enc = encode_jpeg(exact, q)
            sizes.append(len(enc))
            scores.append(psnr(decode_stored(enc), exact))
        quality_table.append(
            {"quality": q, "kB": statistics.mean(sizes) / 1000, "psnr": statistics.median(scores)})
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "images": n,
        "repeats": repeats,
        "workers": workers,
        "images_per_s": med,
        "runs": results,
        "load_before": load_before,
        "load_after": load_after,
        # per repeat, then the median: each ratio compares runs made seconds apart
        "per_core_ratio": statistics.median(o / r for o, r in zip(results["ours_1"], results["reference"])),
        "scaling": statistics.median(o / r for o, r in zip(results[f"ours_{workers}"], results["ours_1"])),
        "startup_s": statistics.median(startup) if startup else 0.0,
        # the same runs with the workers' start-up taken off their time
        "steady_scaling": statistics.median(
            n / (n / o - s) / r for o, r, s in zip(results[f"ours_{workers}"], results["ours_1"], startup))
        if startup else 1.0,
        "psnr_vs_reference": statistics.median(
            psnr(decode_stored(stored[k]), decode_stored(ref[k])) for k in stored),
        "quality_table": quality_table,
    }


def report(r: dict[str, Any]) -> str:
    w = r["workers"]
    ips = r["images_per_s"]
    lines = [
        f"machine: {r['machine']}",
        "load average (1, 5, 15 min): before " + ", ".join(f"{x:.2f}" for x in r["load_before"])
        + "; after " + ", ".join(f"{x:.2f}" for x in r["load_after"]),
        f"{r['images']} photo-like JPEGs, in every {sum(n for _, n in SIZES)}: "
        f"{', '.join(f'{a}x{b} x{n}' for (a, b), n in SIZES)}; median of {r['repeats']} interleaved runs",
        f"{'path':<34}{'images/s':>10}{'ratio':>8}",
        f"{'(a) naive reference, 1 core':<34}{ips['reference']:>10.1f}{1.0:>8.2f}",
        f"{'(b) alexnet-prep shard, 1 worker':<34}{ips['ours_1']:>10.1f}{r['per_core_ratio']:>8.2f}",
        f"{f'(b) alexnet-prep shard, {w} workers':<34}{ips[f'ours_{w}']:>10.1f}"
        f"{ips[f'ours_{w}'] / ips['reference']:>8.2f}",
        "per-core ratio by run: " + ", ".join(
            f"{o / a:.2f}" for o, a in zip(r["runs"]["ours_1"], r["runs"]["reference"])),
        f"scaling 1 -> {w} workers: {r['scaling']:.2f}x; {r['steady_scaling']:.2f}x without the "
        f"workers' start-up ({r['startup_s']:.2f} s a run, timed as a run of one image per worker)",
        f"PSNR ours vs reference: {r['psnr_vs_reference']:.1f} dB",
        "JPEG quality of the stored 256px image (mean size, median PSNR vs the unencoded resize):",
    ]
    lines += [f"  q{q['quality']}: {q['kB']:.1f} kB, {q['psnr']:.1f} dB" for q in r["quality_table"]]
    return "\n".join(lines)
