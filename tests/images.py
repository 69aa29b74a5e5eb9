"""Tiny image factories shared by the tests (photo-like content, and each ImageNet quirk)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs plus mild noise: compresses and resizes like a photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.int16)
    noisy = base + rng.normal(0, 3, base.shape).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "JPEG", mode: str | None = None, quality: int = 95) -> bytes:
    im = Image.fromarray(pixels)
    if mode:
        im = im.convert(mode)
    out = io.BytesIO()
    im.save(out, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


def reference_resize(data: bytes, size: int = 256) -> np.ndarray:
    """The naive path the issue names: RGB, bicubic shorter side to 256, centre crop (no re-encode)."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))
