"""One source image to one stored 256x256 JPEG, as in the paper (§2).

Decode fully, convert to RGB, rescale so the shorter side is 256, keep the central 256x256 patch,
re-encode. Two shortcuts keep it exact enough (>= 35 dB PSNR against the naive full-size bicubic
path, measured by `alexnet-prep bench`) while doing less work:
- JPEG draft mode: libjpeg scales by 1/2, 1/4 or 1/8 inside the IDCT, but only while both sides
  stay >= 256, so large photos are never decoded at full size;
- `resize(box=...)` resamples only the source region that lands in the central patch, instead of
  resizing the whole image and cropping it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

from paper import STORED_SIZE

# Pillow's default already refuses truncated files; pinned here because a truncated JPEG that
# decodes as grey padding would reach a shard and DALI could not skip it at training time.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_QUALITY = 90


class DecodeError(ValueError):
    """The bytes are not an image Pillow can decode completely."""


@dataclass(frozen=True)
class Resized:
    jpeg: bytes  # the stored JPEG
    width: int  # original size
    height: int
    pixels: np.ndarray  # uint8 [256, 256, 3]: the stored JPEG decoded again (what readers will see)


def decode_rgb(data: bytes, draft_size: int | None = STORED_SIZE) -> tuple[Image.Image, int, int]:
    """Decode completely to RGB; returns the image and the ORIGINAL width and height."""
    try:
        im = Image.open(io.BytesIO(data))
        width, height = im.size
        if draft_size and im.format == "JPEG":
            im.draft("RGB", (draft_size, draft_size))
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DecodeError(str(e) or type(e).__name__) from e
    if im.mode != "RGB":
        # CMYK (Adobe-inverted in ImageNet), L, P and RGBA all go through Pillow's converters.
        im = im.convert("RGB")
    return im, width, height


def center_box(width: int, height: int, size: int = STORED_SIZE) -> tuple[float, float, float, float]:
    """The source region that becomes the central size x size patch after scaling the shorter side."""
    scale = size / min(width, height)
    scaled_w, scaled_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (scaled_w - size) // 2, (scaled_h - size) // 2
    return (left / scale, top / scale, (left + size) / scale, (top + size) / scale)


def resize_center(im: Image.Image, size: int = STORED_SIZE) -> Image.Image:
    return im.resize((size, size), Image.Resampling.BICUBIC, box=center_box(*im.size, size=size))


def encode_jpeg(im: Image.Image, quality: int = DEFAULT_QUALITY) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality)
    return out.getvalue()


def decode_stored(jpeg: bytes) -> np.ndarray:
    """Decode a stored JPEG exactly as pca-stats and verify do (Pillow, no draft)."""
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))


def process(data: bytes, quality: int = DEFAULT_QUALITY, size: int = STORED_SIZE) -> Resized:
    im, width, height = decode_rgb(data, draft_size=size)
    jpeg = encode_jpeg(resize_center(im, size), quality)
    return Resized(jpeg=jpeg, width=width, height=height, pixels=decode_stored(jpeg))
