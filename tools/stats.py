"""`alexnet-prep pca-stats`: RGB mean, std, covariance and its eigenbasis, and the mean image.

The eigenbasis drives the paper's PCA lighting (§4.1); the mean image is the per-pixel mean the
paper subtracts (§2). Sums are exact integers (uint8 pixels), so the slow path (decode every train
shard) and the fast path (combine the sums `shard` stored in the manifest) agree to rounding.
"""

from __future__ import annotations

import io
import multiprocessing as mp
from typing import Any

import fsspec
import numpy as np
from tqdm import tqdm

from tools import atomic, manifest, urls, wds
from tools.resize import decode_stored
from tools.statfiles import MEAN_FILE, PCA_FILE
from tools.writer import PixelSums


class StatsError(ValueError):
    pass


def shard_sums(job: tuple[str, int]) -> PixelSums:
    """Decode every `jpg` of one shard (URL, sample count in the manifest) and sum its pixels."""
    tar_url, samples = job
    sums = PixelSums(per_pixel=True)
    images = 0
    try:
        with fsspec.open(tar_url, "rb") as f:
            for sample in wds.tar_file_iterator(f):
                if sample["fname"].endswith(".jpg"):
                    try:
                        sums.add(decode_stored(sample["data"]))
                    except OSError as e:
                        raise StatsError(f"{tar_url}: {sample['fname']}: does not decode ({e})") from e
                    images += 1
    except StatsError:
        raise
    except Exception as e:  # noqa: BLE001 - tarfile, webdataset and fsspec raise many types on a bad tar
        raise StatsError(f"{tar_url}: unreadable after {images} images ({type(e).__name__}: {e}); "
                         "truncated? `alexnet-prep verify` checks every shard") from None
    if images != samples:
        # A tar cut at a member boundary reads cleanly: only the count shows it.
        raise StatsError(f"{tar_url}: {images} images, manifest says {samples}; truncated or replaced? "
                         "`alexnet-prep verify` checks every shard")
    return sums


def _combine(parts: list[PixelSums]) -> PixelSums:
    total = PixelSums(per_pixel=True)
    for p in parts:
        total.merge(p)
    return total


def from_sums(sums: PixelSums) -> dict[str, Any]:
    n = sums.pixels
    if n == 0:
        raise StatsError("no training pixels to compute statistics from")
    mean = sums.rgb.astype(np.float64) / n
    cov = sums.outer.astype(np.float64) / n - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    # eigh's signs are arbitrary; fix them so the file is reproducible across BLAS builds.
    signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(3)])
    eigvec = eigvec * signs
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(np.diag(cov)).tolist(),
        "cov": cov.tolist(),
        "eigval": eigval.tolist(),
        "eigvec": eigvec.tolist(),
        "pixels": int(n),
        "scale": "0-255",
    }


def _sums_from_manifest(shards: str, m: dict[str, Any]) -> PixelSums:
    total = PixelSums(per_pixel=True)
    for s in m["splits"]["train"]["shards"]:
        total.merge(PixelSums.from_json(s["sums"]))
        if s.get("pixel_sum"):
            with fsspec.open(urls.join(shards, s["pixel_sum"]), "rb") as f:
                total.image += np.load(io.BytesIO(f.read()))
    return total


def compute(shards: str, from_manifest: bool = False, workers: int = 1) -> dict[str, Any]:
    """Write `pca.json` and `mean.npy` into `shards`; returns the pca.json content."""
    shards = shards.rstrip("/")
    m = manifest.load(shards)
    train = m["splits"].get("train")
    if not train or not train["shards"]:
        raise StatsError(f"{shards}: the manifest lists no train shards")
    if from_manifest:
        sums = _sums_from_manifest(shards, m)
    else:
        jobs = [(urls.join(shards, s["name"]), s["samples"]) for s in train["shards"]]
        parts = []
        # `with`: an error closes the bar first, so the error prints on a line of its own
        with tqdm(total=len(jobs), unit="shard", desc="pca-stats") as bar:
            if workers > 1 and len(jobs) > 1 and not urls.in_process(shards):
                with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                    for p in pool.imap_unordered(shard_sums, jobs):
                        parts.append(p)
                        bar.update()
            else:
                for job in jobs:
                    parts.append(shard_sums(job))
                    bar.update()
        sums = _combine(parts)
    stats = from_sums(sums)
    stats["shards"] = manifest.shard_list_hash(m)
    images = sums.pixels // sums.image.shape[0] // sums.image.shape[1]
    mean_image = (sums.image.astype(np.float64) / images).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, mean_image)
    atomic.write_bytes(urls.join(shards, MEAN_FILE), buf.getvalue())
    atomic.write_json(urls.join(shards, PCA_FILE), stats)
    return stats
