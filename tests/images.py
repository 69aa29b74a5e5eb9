"""Tiny image helpers shared by the tests (photo-like content from the prep benchmark, and encoders
for each ImageNet quirk)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tools.bench import photo, psnr, reference_pixels

__all__ = ["encode", "photo", "psnr", "reference_resize"]


def encode(pixels: np.ndarray, fmt: str = "JPEG", mode: str | None = None, quality: int = 95) -> bytes:
    im = Image.fromarray(pixels)
    if mode:
        im = im.convert(mode)
    out = io.BytesIO()
    im.save(out, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


def reference_resize(data: bytes, size: int = 256) -> np.ndarray:
    """The naive path the issue names: RGB, bicubic shorter side to 256, centre crop (no re-encode)."""
    return np.asarray(reference_pixels(data, size))
