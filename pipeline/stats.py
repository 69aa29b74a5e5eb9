"""The training-set statistics the loaders normalise with, and the PCA lighting arithmetic (§4.1).

`pca.json` and `mean.npy` are written by `alexnet-prep pca-stats` (format in shards/README.md):
RGB on a 0-255 scale, `eigvec` columns are the eigenvectors, `eigval` descending.

PCA lighting (§4.1): to every pixel of an image add the same vector
`eigvec @ (alpha * lambda)`, alpha_i ~ N(0, LIGHTING_STD) drawn once per image each time it is used.
The paper leaves open on which pixel scale lambda is taken, so the modes are:

- "paper01" (default): the formula evaluated on pixels scaled to [0, 1], as the widely used
  reimplementations do. On [0, 1] pixels the eigenvalues are eigval_255 / 255**2, and the shift,
  brought back to the 0-255 scale the pipeline works in, is `eigvec @ (alpha * eigval_255) / 255`.
- "cuda-convnet": Krizhevsky's released cuda-convnet code, which scales by the standard deviation
  along each component: `eigvec @ (alpha * sqrt(eigval_255))` on 0-255 pixels.

Either way the shift is linear in alpha: shift = M @ alpha with M = eigvec * scale (columns scaled),
which is what the DALI graph evaluates per image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from pipeline.errors import PipelineError
from tools.statfiles import MEAN_FILE, PCA_FILE, StatFileError, read_mean_image, read_pca

LIGHTING_MODES = ("paper01", "cuda-convnet")
MEAN_MODES = ("image", "channel")


@dataclass(frozen=True)
class Stats:
    mean: np.ndarray  # [3] float64, per-channel mean, 0-255
    std: np.ndarray  # [3] float64, per-channel standard deviation, 0-255
    eigval: np.ndarray  # [3] float64, descending, 0-255 scale (variances)
    eigvec: np.ndarray  # [3, 3] float64, columns are the eigenvectors
    mean_image: np.ndarray | None  # [256, 256, 3] float32, RGB, 0-255; None when not asked for


def _read_pca(path: str) -> dict:
    # The check lives in tools.statfiles so that `alexnet-prep verify` runs exactly this one.
    try:
        return read_pca(path)
    except StatFileError as e:
        raise PipelineError(str(e)) from None


def _read_mean_image(path: str) -> np.ndarray:
    try:
        return read_mean_image(path)
    except StatFileError as e:
        raise PipelineError(str(e)) from None


def load(root: str, mean_image: bool = True) -> Stats:
    """Read `pca.json` (and `mean.npy` if `mean_image`) from the shard folder, validated."""
    pca = _read_pca(os.path.join(root, PCA_FILE))
    return Stats(
        mean=np.asarray(pca["mean"], dtype=np.float64),
        std=np.asarray(pca["std"], dtype=np.float64),
        eigval=np.asarray(pca["eigval"], dtype=np.float64),
        eigvec=np.asarray(pca["eigvec"], dtype=np.float64),
        mean_image=_read_mean_image(os.path.join(root, MEAN_FILE)) if mean_image else None,
    )


def lighting_scale(eigval: np.ndarray, mode: str) -> np.ndarray:
    """Per-component factor s so that the 0-255 shift is `eigvec @ (alpha * s)` (see module doc)."""
    eigval = np.clip(np.asarray(eigval, dtype=np.float64), 0.0, None)  # eigh may give -1e-12 for flat data
    if mode == "paper01":
        return eigval / 255.0
    if mode == "cuda-convnet":
        return np.sqrt(eigval)
    raise PipelineError(f"lighting must be one of {LIGHTING_MODES} or False, got {mode!r}")


def lighting_matrix(stats: Stats, mode: str) -> np.ndarray:
    """M with shift = M @ alpha, in 0-255 units: the eigenvector columns times their scale."""
    return stats.eigvec * lighting_scale(stats.eigval, mode)[None, :]


def lighting_shift(alpha: np.ndarray, stats: Stats, mode: str) -> np.ndarray:
    """Reference (NumPy) shift for alphas `[..., 3]`; the bench and the tests use it."""
    return np.asarray(alpha, dtype=np.float64) @ lighting_matrix(stats, mode).T
