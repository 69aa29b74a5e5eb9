"""One source image to one stored 256x256 JPEG, as in the paper (§2).

Decode fully, convert to RGB, rescale so the shorter side is 256, keep the central 256x256 patch,
re-encode. Two choices keep it close to the naive full-size Pillow bicubic path (>= 35 dB PSNR,
the target; `alexnet-prep bench` measures it) while doing less work:
- JPEGs go through libjpeg-turbo directly (simplejpeg: 1.2 ms for a 500x375 photo against
  Pillow's 1.9 ms); photos at least twice the stored size are decoded already scaled down inside
  the IDCT (1/2, 1/4, ...), never below 256 on the shorter side. Scales between 1/2 and 1 are
  slower to decode than the full image (measured 1.9 vs 1.2 ms), so they are not used. Other files
  and CMYK JPEGs, which libjpeg-turbo cannot convert to RGB, go through Pillow (with its draft);
- the resampling is OpenCV's (see `resize_center`: an area average, so antialiased like Pillow's
  bicubic, which widens its kernel by the scale) on the NumPy array the decoder returned, with no
  Pillow round trip. Measured on 500x375-class photos (docs/PERFORMANCE.md, 2026-12-02): 1.15 ms
  against 2.7 ms for Pillow's bicubic of the central box, plus 0.6 ms of copies into and out of a
  Pillow image saved.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageFile, UnidentifiedImageError

from paper import STORED_SIZE

# Pillow's default already refuses truncated files; pinned here because a truncated JPEG that
# decodes as grey padding would reach a shard and DALI could not skip it at training time.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# One thread per process: `shard` runs one worker per core, and OpenCV's own thread pool would
# oversubscribe them (and make the per-core figure of `alexnet-prep bench` meaningless).
cv2.setNumThreads(1)

DEFAULT_QUALITY = 90
TRANSPARENT_BACKGROUND = (255, 255, 255)  # white: see to_rgb
GZIP_MAGIC = b"\x1f\x8b"
# A bound on what a gzip-compressed member may expand to, not a measured figure: far above any
# ILSVRC image file, low enough that a damaged or hostile member cannot fill the memory.
MAX_GUNZIPPED = 256 * 2**20
# Formats whose mode "I" holds 16-bit samples: Pillow opens 16-bit PGM/PPM as "I" scaled to 0..65535
# (older Pillow releases open 16-bit grey PNGs as "I" too); a TIFF's "I" is a full 32-bit integer.
SIXTEEN_BIT_I = ("PNG", "PPM")


class DecodeError(ValueError):
    """The bytes are not an image Pillow can decode completely."""


@dataclass(frozen=True)
class Resized:
    jpeg: bytes  # the stored JPEG
    width: int  # original size
    height: int
    pixels: np.ndarray  # uint8 [256, 256, 3]: the stored JPEG decoded again (what readers will see)


def _decode_turbo(data: bytes, min_size: int) -> tuple[np.ndarray, int, int] | None:
    """Scaled libjpeg-turbo decode of a YCbCr or gray JPEG; None for anything else."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # not a JPEG (or a damaged header): Pillow decides and reports
    if colorspace not in ("YCbCr", "Gray"):
        return None
    scaled = min(width, height) >= 2 * min_size
    try:
        # strict: libjpeg's "premature end of data" warning (a truncated file) is an error here
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True,
                                        min_height=min_size if scaled else 0,
                                        min_width=min_size if scaled else 0,
                                        min_factor=2 if scaled else 1)
    except ValueError as e:
        raise DecodeError(f"corrupt or truncated JPEG ({e})") from e
    return pixels, width, height


def gunzip(data: bytes) -> bytes:
    """The image inside a gzip-compressed file, or `data` itself when it is not gzip.

    Some members of the ILSVRC-2010 image tars are gzip-compressed JPEGs under a .JPEG name; no
    image decoder reads them, so they were lost as "not an image". Recognised by the magic bytes,
    not the name, as the names do not say.
    """
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
            inner = gz.read(MAX_GUNZIPPED + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DecodeError(f"gzip-compressed, but does not decompress ({e})") from e
    if len(inner) > MAX_GUNZIPPED:
        raise DecodeError(f"gzip-compressed, and expands beyond {MAX_GUNZIPPED // 2**20} MiB")
    return inner


def decode_rgb(data: bytes, draft_size: int | None = STORED_SIZE) -> tuple[np.ndarray, int, int]:
    """Decode completely to RGB (uint8 [H, W, 3]); returns the pixels and the ORIGINAL width and height.

    A gzip-compressed image (see `gunzip`) is decompressed first."""
    data = gunzip(data)
    if draft_size and (fast := _decode_turbo(data, draft_size)) is not None:
        return fast
    try:
        im = Image.open(io.BytesIO(data))
        width, height = im.size
        if draft_size and im.format == "JPEG":
            im.draft("RGB", (draft_size, draft_size))
        im.load()
    except UnidentifiedImageError:
        # Pillow's own text names the BytesIO object by its address, which differs every run.
        raise DecodeError("not an image file (no decoder recognises its bytes)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DecodeError(_stable(str(e)) or type(e).__name__) from e
    return np.asarray(to_rgb(im)), width, height


def _stable(message: str) -> str:
    """The message without object addresses ("<... at 0x7f..>"), so manifests repeat byte for byte."""
    return re.sub(r"<([\w.]+) object at 0x[0-9a-fA-F]+>", r"<\1>", message)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB with the image's real tones.

    Pillow's convert("RGB") is right for CMYK (Adobe-inverted in ImageNet), L and P, but clips
    16-bit grey (I;16, a 16-bit PNG or TIFF) at 255, so a mid-grey comes out white, and drops alpha,
    so a transparent region shows whatever colour the encoder left under it (often black). Here
    16-bit values are scaled (65535 -> 255) and transparency is composited over white, which is
    how a browser shows a transparent web image on a plain page (ImageNet's images were collected
    and labelled from web pages). 32-bit integer and float pixels (I from TIFF, F) have no standard
    white level, so they are refused with a stable reason (the image is skipped and recorded).
    """
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format in SIXTEEN_BIT_I):
        grey = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        transparency = im.info.get("transparency")
        im = Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8), "L")
        if isinstance(transparency, int):  # a 16-bit grey tRNS value marks its pixels transparent
            alpha = np.where(grey == transparency, 0, 255).astype(np.uint8)
            im = Image.merge("LA", (im, Image.fromarray(alpha, "L")))
    elif im.mode in ("I", "F"):
        kind = "32-bit float" if im.mode == "F" else "32-bit integer"
        raise DecodeError(f"{kind} pixels (mode {im.mode}) have no standard white level; "
                          "store it with 8 or 16 bits per channel")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, TRANSPARENT_BACKGROUND + (255,)), rgba)
    return im if im.mode == "RGB" else im.convert("RGB")


def scaled_size(width: int, height: int, size: int = STORED_SIZE) -> tuple[int, int]:
    """The whole image's size once its shorter side is `size` (the naive path's, rounded the same way)."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def resize_center(pixels: np.ndarray, size: int = STORED_SIZE) -> np.ndarray:
    """The central size x size patch of uint8 [H, W, 3] pixels, shorter side scaled to `size`.

    Two OpenCV steps, both SIMD paths: bilinear to twice the target size, crop the central
    2*size square at even offsets, then INTER_AREA by exactly 2 (OpenCV's fast 2x2 average). The
    2x2 average over the doubled grid is a box of the full downscale width in source pixels, i.e.
    the antialiasing of a direct INTER_AREA, which takes OpenCV's slow generic path for
    non-integer scales. Measured 2026-12-02 on 500x375-class photos (load ~5): 1.15 ms against
    2.3 ms for direct INTER_AREA; 53.7 dB against the naive path on photo-like images (direct
    INTER_AREA 53.8), 32.6 dB on a fine checkerboard (direct INTER_AREA 37.0; INTER_LINEAR alone
    23.5 dB, a full-contrast moire). The whole image is scaled and cropped at whole output pixels,
    as the naive path does: cv2.resize takes no fractional box, and a source crop rounded to
    whole pixels shifted the result by up to half a pixel (32.9 dB on a 1600x1200 photo).
    """
    height, width = pixels.shape[:2]
    scaled_w, scaled_h = scaled_size(width, height, size)
    # Shrinking by more than 2 in the first step would alias: only the Pillow path (large non-JPEGs)
    # gets there, libjpeg-turbo's IDCT scaling keeps JPEGs under 2x the stored size.
    first = cv2.INTER_LINEAR if min(width, height) < 2 * size else cv2.INTER_AREA
    doubled = cv2.resize(pixels, (2 * scaled_w, 2 * scaled_h), interpolation=first)
    left, top = (scaled_w - size) // 2 * 2, (scaled_h - size) // 2 * 2
    return cv2.resize(doubled[top : top + 2 * size, left : left + 2 * size], (size, size),
                      interpolation=cv2.INTER_AREA)


def encode_jpeg(pixels: np.ndarray, quality: int = DEFAULT_QUALITY) -> bytes:
    # 4:2:0 chroma subsampling, as Pillow's default and most of ImageNet's own JPEGs
    return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality=quality, colorspace="RGB",
                                  colorsubsampling="420")


def decode_stored(jpeg: bytes) -> np.ndarray:
    """Decode a stored JPEG at full size: the one decoder `shard`, pca-stats and verify share, so
    the pixel sums `shard` stores equal what pca-stats recomputes, bit for bit."""
    try:
        return simplejpeg.decode_jpeg(jpeg, colorspace="RGB", strict=True)
    except ValueError as e:
        raise OSError(f"corrupt or truncated JPEG ({e})") from e


def process(data: bytes, quality: int = DEFAULT_QUALITY, size: int = STORED_SIZE) -> Resized:
    pixels, width, height = decode_rgb(data, draft_size=size)
    jpeg = encode_jpeg(resize_center(pixels, size), quality)
    # Decoded again (0.2-0.4 ms) rather than summing the pixels before encoding: the statistics must be
    # those of what readers see; summing the unencoded pixels moves the covariance by 1.5% relative
    # (measured on the bench images, 2026-12-02), far over the 1e-4 bar pca-stats is held to.
    return Resized(jpeg=jpeg, width=width, height=height, pixels=decode_stored(jpeg))
