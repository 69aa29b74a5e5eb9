"""`pca.json` and `mean.npy` (format in shards/README.md): the one check every reader runs.

`alexnet-prep verify` and the training/eval loaders (`pipeline.stats.load`) both call
`read_pca` / `read_mean_image`, so verify passes exactly the files training accepts. Kept apart
from `tools.stats` (which computes them) so the loaders can import it without webdataset and scipy.
"""

from __future__ import annotations

import io
import json

import fsspec
import numpy as np

from paper import STORED_SIZE

PCA_FILE = "pca.json"
MEAN_FILE = "mean.npy"


class StatFileError(ValueError):
    """pca.json or mean.npy is missing or unusable; the message is one line naming the file."""


def _read(url: str) -> bytes:
    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise StatFileError(f"{url}: missing; run `alexnet-prep pca-stats` on the shards first") from None
    except OSError as e:
        raise StatFileError(f"{url}: cannot be read ({e})") from e


def read_pca(url: str) -> dict:
    """pca.json, checked: numeric mean/std/eigval (3) and eigvec (3x3), all finite, std > 0, 0-255."""
    data = _read(url)
    try:
        pca = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:  # includes an empty file
        raise StatFileError(f"{url}: cannot be read ({e})") from e
    if not isinstance(pca, dict):
        raise StatFileError(f"{url}: cannot be read (not a JSON object)")
    for name, shape in (("mean", (3,)), ("std", (3,)), ("eigval", (3,)), ("eigvec", (3, 3))):
        try:
            value = np.asarray(pca[name], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise StatFileError(f"{url}: no numeric '{name}' entry") from None
        if value.shape != shape or not np.all(np.isfinite(value)):
            raise StatFileError(f"{url}: '{name}' must be {shape} finite numbers, got shape {value.shape}")
    if pca.get("scale", "0-255") != "0-255":
        raise StatFileError(f"{url}: scale {pca['scale']!r}, expected '0-255'")
    std = np.asarray(pca["std"], dtype=np.float64)
    if np.any(std <= 0):
        raise StatFileError(f"{url}: 'std' must be positive, got {std.tolist()}")
    return pca


def read_mean_image(url: str) -> np.ndarray:
    """mean.npy, checked: a finite float [256, 256, 3] array; returned as float32."""
    data = _read(url)
    try:
        image = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise StatFileError(f"{url}: cannot be read ({e or 'empty file'})") from e
    expected = (STORED_SIZE, STORED_SIZE, 3)
    if not isinstance(image, np.ndarray):  # an .npz archive loads as NpzFile
        raise StatFileError(f"{url}: expected a float {expected} mean image, got {type(image).__name__}")
    if image.shape != expected or not np.issubdtype(image.dtype, np.floating):
        what = f"{image.dtype} {image.shape}"
        raise StatFileError(f"{url}: expected a float {expected} mean image, got {what}")
    if not np.all(np.isfinite(image)):
        raise StatFileError(f"{url}: holds NaN or infinite values")
    return image.astype(np.float32)
