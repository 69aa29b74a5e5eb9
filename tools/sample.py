"""A small synthetic ILSVRC copy, in the exact shape of the real downloads, for tests and the demo.

    alexnet-prep sample out/sample --layout raw --classes 10

Every file name, tar nesting, devkit member and csv header matches the real data, so the whole
prep pipeline (layouts -> resize -> shards) runs on it unchanged. The images are learnable: each
class is one shape x hue x fill texture, drawn at a random position, scale and rotation over a
blotchy background, at ImageNet-like sizes. The real data's awkward files are planted in train
(see QUIRKS) and listed in the returned summary.

`year=2010` gives the ILSVRC-2010 release as published: train, val and test tars (val and test
members under a val/ or test/ folder), the devkit, ILSVRC2010_test_ground_truth.txt beside the
tars, patch_images.tar with corrected versions of images the main tars hold as a blank "not
available" picture, and gzip-compressed members under .JPEG names (see QUIRKS_2010).

`layout="fall"` gives an ImageNet Fall release as published (fall11_whole.tar: a tar of
per-synset tars, no devkit, no val split) and, unless `words=False`, ImageNet's words.txt beside it
(listing a few synsets more than the tar holds, as the real one lists all of WordNet's nouns).
Class sizes vary, as the real release's do, between half and all of `train_per_class`.

Same parameters -> byte-identical files: every image has its own RNG keyed by (seed, split,
class, index), tars get a constant mtime and sorted members, and the devkit's gzip and MATLAB
headers carry no timestamp.

Existing output: `out` must be missing or empty, or hold a finished sample with the same
parameters (its `.sample.json` marker, written last, matches), which is then returned untouched.
Anything else is refused rather than mixed with stale files. Tars and the devkit are written
atomically; loose images are not, since the marker, written last, is what says "complete".
"""

from __future__ import annotations

import colorsys
import csv
import functools
import gzip
import io
import itertools
import json
import math
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.io
from PIL import Image, ImageChops, ImageDraw

from tools import atomic, urls
from tools.layouts import FALL_NAMES, PATCHES, RAW_TEST, RAW_YEARS, WORDS

LAYOUTS = ("raw", "folders", "kaggle", "fall")
MARKER = ".sample.json"
TAR_MTIME = 1335830400  # 2012-05-01, roughly when ILSVRC2012 was released; any constant would do
SHAPES = ("ellipse", "square", "triangle", "diamond", "hexagon", "star", "cross", "ring")
TEXTURES = ("solid", "stripes", "checker", "dots")
COLOURS = (
    "red",
    "orange",
    "yellow",
    "lime",
    "green",
    "jade",
    "cyan",
    "azure",
    "blue",
    "violet",
    "magenta",
    "rose",
)
# (width, height, weight): ImageNet's common sizes; a few under 256 px and a few large ones.
SIZES = (
    (500, 375, 6),
    (375, 500, 3),
    (500, 333, 3),
    (333, 500, 2),
    (640, 480, 2),
    (500, 500, 1),
    (400, 300, 1),
    (1000, 750, 0.5),
    (180, 120, 0.5),
    (120, 160, 0.3),
)
# Real ImageNet train holds CMYK and grayscale JPEGs and a PNG named .JPEG (n02105855_2933);
# the truncated JPEG exercises the skip-and-record path. Only "truncated" fails to decode.
# "small" and "extreme-aspect" are valid images whose sizes stress the resize step.
QUIRKS = {
    "cmyk": (500, 375),
    "grayscale": (375, 500),
    "png-as-jpeg": (500, 333),
    "truncated": (500, 375),
    "small": (180, 120),
    "extreme-aspect": (1200, 150),
}
# ILSVRC-2010's own: planted once in train and once in val ("gzip") or test ("patched"), so each
# split's reader meets them. "patched": the main tar holds a grey banner, patch_images.tar the image.
QUIRKS_2010 = {"gzip": (500, 375), "patched": (500, 333)}
BANNER = (500, 374)  # the blank "not available" picture a patched image stands in for
GRAIN_SIZE = (1200, 750)  # covers every size above
TRUNCATE_AT = 0.6  # fraction of the JPEG's bytes kept
DEVKIT = {  # year -> (folder inside the devkit tar.gz, name of the ID field in meta.mat)
    2012: ("ILSVRC2012_devkit_t12", "ILSVRC2012_ID"),
    2010: ("devkit-1.0", "ILSVRC2010_ID"),
}
META_FIELDS = ("WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images")


@dataclass(frozen=True)
class _Class:
    index: int  # in sorted wnid order
    wnid: str
    shape: str
    texture: str
    hue: float  # 0..1

    @property
    def words(self) -> str:
        colour = COLOURS[int(self.hue * len(COLOURS) + 0.5) % len(COLOURS)]
        return f"{colour} {self.shape}, {self.texture} {self.shape}"


@dataclass(frozen=True)
class _Image:
    split: str
    cls: _Class
    key: str
    rng_key: tuple[int, ...]
    quirk: str = ""


def make_sample(
    out: str,
    layout: str = "raw",
    classes: int = 10,
    train_per_class: int = 40,
    val_per_class: int = 10,
    seed: int = 0,
    year: int = 2012,
    test_per_class: int | None = None,
    words: bool = True,
) -> dict[str, Any]:
    """Write a synthetic ILSVRC copy to `out` (any fsspec URL); return its summary.

    layout: "raw" (tars + devkit, as downloaded), "folders" (train/<wnid>/, val/<wnid>/ and the
    devkit tar.gz), "kaggle" (ILSVRC/Data/CLS-LOC/ + LOC_*.csv/txt) or "fall" (fall11_whole.tar,
    train images only, words.txt unless `words` is False); year 2010 only with "raw",
    and with a test split (`test_per_class` images a class, default `val_per_class`).
    The summary holds the parameters, the image counts, the sorted wnids and, under "quirks",
    each planted file's kind, split, key, wnid and path (as `tools.layouts.SourceRef.path` spells
    it: a patched image's is its patch, and "replaces" names the banner it stands in for).
    """
    params = {
        "layout": layout,
        "classes": classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
        "year": year,
    }
    if year == 2010:  # only there, so a 2012 sample made before the test split still matches its marker
        params["test_per_class"] = val_per_class if test_per_class is None else test_per_class
    elif test_per_class is not None:
        raise ValueError(f"sample: test images exist only for year 2010, not {year}")
    if layout == "fall":  # only there, so the markers of the other layouts' samples still match
        params["words"] = words
    elif not words:
        raise ValueError("sample: words=False (no words.txt) applies only to the fall layout")
    _check(params)
    fs, root = urls.filesystem(out)
    root = root.rstrip("/")
    done = _existing(fs, root, out, params)
    if done is not None:
        return done
    fs.makedirs(root, exist_ok=True)

    cls = _classes(classes, seed)
    train, val = _plan(cls, train_per_class, val_per_class, seed, year)
    test = _plan_2010(cls, train, val, params.get("test_per_class", 0), seed) if year == 2010 else []
    if layout == "fall":
        train, val = _vary_class_sizes(cls, train, seed), []
        paths = _write_fall(fs, root, cls, train, seed, words)
    elif year == 2010:
        paths = _write_raw_2010(fs, root, cls, train, val, test, seed)
    else:
        write = {"raw": _write_raw, "folders": _write_folders, "kaggle": _write_kaggle}[layout]
        paths = write(fs, root, cls, train, val, seed, year)
    summary = {
        "layout": layout,
        "year": year,
        "seed": seed,
        "classes": classes,
        "train": len(train),
        "val": len(val),
        **({"test": len(test)} if year == 2010 else {}),
        "wnids": [c.wnid for c in cls],
        **({"per_class": {c.wnid: sum(im.cls.wnid == c.wnid for im in train) for c in cls}}
           if layout == "fall" else {}),
        "quirks": [
            {"kind": im.quirk, "split": im.split, "key": im.key, "wnid": im.cls.wnid, "path": paths[im.key],
             **({"replaces": paths[f"{im.key}:original"]} if im.quirk == "patched" else {})}
            for im in train + val + test
            if im.quirk
        ],
    }
    atomic.write_json(f"{root}/{MARKER}", {"params": params, "summary": summary}, fs)
    return summary


def _check(p: dict[str, Any]) -> None:
    if p["layout"] not in LAYOUTS:
        raise ValueError(f"sample: unknown layout {p['layout']!r}; expected one of {', '.join(LAYOUTS)}")
    if p["year"] not in DEVKIT:
        raise ValueError(f"sample: year must be 2012 or 2010, not {p['year']}")
    if p["year"] != 2012 and p["layout"] != "raw":
        raise ValueError(f"sample: year {p['year']} exists only as the raw layout (--layout raw)")
    if not 2 <= p["classes"] <= 1000:
        raise ValueError(f"sample: classes must be 2..1000, not {p['classes']}")
    if p["seed"] < 0:
        raise ValueError(f"sample: seed must be >= 0, not {p['seed']}")
    if p["train_per_class"] < 1 or p["val_per_class"] < 1:
        raise ValueError("sample: train_per_class and val_per_class must be at least 1")
    planted = len(QUIRKS) + (len(QUIRKS_2010) if p["year"] == 2010 else 0)
    if p["classes"] * p["train_per_class"] < planted:
        raise ValueError(f"sample: need at least {planted} train images to plant the quirks")
    if p.get("test_per_class", 1) < 1:
        raise ValueError("sample: test_per_class must be at least 1")


def _existing(fs: Any, root: str, out: str, params: dict[str, Any]) -> dict[str, Any] | None:
    if not fs.exists(root):
        return None
    if not fs.isdir(root):
        raise ValueError(f"sample: {out} is a file, not a folder")
    if not fs.ls(root, detail=False):
        return None
    marker = f"{root}/{MARKER}"
    if fs.isfile(marker):
        found = json.loads(fs.cat_file(marker))
        if found.get("params") == params:
            return found["summary"]
        raise ValueError(
            f"sample: {out} holds a sample made with other parameters ({found.get('params')}); "
            "delete it or pick another folder"
        )
    raise ValueError(
        f"sample: {out} is not empty and holds no finished sample; delete it or pick another folder"
    )


# --- what to draw -----------------------------------------------------------------------------


def _classes(n: int, seed: int) -> list[_Class]:
    # Ids in the real range (n01440764 .. n15075141), so they sort and look like WordNet's.
    rng = np.random.default_rng([seed, 0])
    ids = 1_440_000 + rng.choice(13_640_000, size=n, replace=False)
    wnids = sorted(f"n{int(i):08d}" for i in ids)
    return [
        _Class(
            i,
            w,
            SHAPES[i % len(SHAPES)],
            TEXTURES[(i + i // len(SHAPES)) % len(TEXTURES)],
            (i * 0.618034) % 1.0,
        )  # golden-ratio steps keep any number of hues far apart
        for i, w in enumerate(wnids)
    ]


def _plan(
    cls: list[_Class], n_train: int, n_val: int, seed: int, year: int
) -> tuple[list[_Image], list[_Image]]:
    train = []
    for c in cls:
        # Sparse numbers like the real n01440764_10026; distinct within a class.
        rng = np.random.default_rng([seed, 1, c.index])
        numbers = sorted(rng.choice(np.arange(1, 20_000), size=n_train, replace=False).tolist())
        train += [_Image("train", c, f"{c.wnid}_{k}", (seed, 1, c.index, j)) for j, k in enumerate(numbers)]
    # Quirk j lands on class j % C, spreading them over classes; placement is fixed by (C, j) only.
    by_class = [train[c.index * n_train : (c.index + 1) * n_train] for c in cls]
    for j, kind in enumerate(QUIRKS):
        im = by_class[j % len(cls)][j // len(cls)]
        train[train.index(im)] = _Image(im.split, im.cls, im.key, im.rng_key, kind)
    # Val numbers 1..N in shuffled class order, as in the real val set.
    order = np.random.default_rng([seed, 2]).permutation(np.repeat(np.arange(len(cls)), n_val))
    val = [
        _Image("val", cls[int(c)], f"ILSVRC{year}_val_{i:08d}", (seed, 2, i)) for i, c in enumerate(order, 1)
    ]
    return train, val


def _plan_2010(cls: list[_Class], train: list[_Image], val: list[_Image], n_test: int,
               seed: int) -> list[_Image]:
    """Plant QUIRKS_2010 (in train after QUIRKS, and at the end of val and test); return test.

    Test numbers 1..N in shuffled class order, as val's."""
    n_train = len(train) // len(cls)
    for j, kind in enumerate(QUIRKS_2010, len(QUIRKS)):
        at = (j % len(cls)) * n_train + j // len(cls)
        im = train[at]
        train[at] = _Image(im.split, im.cls, im.key, im.rng_key, kind)
    order = np.random.default_rng([seed, 6]).permutation(np.repeat(np.arange(len(cls)), n_test))
    test = [_Image("test", cls[int(c)], f"ILSVRC2010_test_{i:08d}", (seed, 7, i))
            for i, c in enumerate(order, 1)]
    for ims, kind in ((val, "gzip"), (test, "patched")):
        im = ims[-1]
        ims[-1] = _Image(im.split, im.cls, im.key, im.rng_key, kind)
    return test


def _render(im: _Image) -> tuple[bytes, tuple[int, int, int, int]]:
    """Encoded file bytes and the object's bounding box (x0, y0, x1, y1)."""
    rng = np.random.default_rng(list(im.rng_key))
    if im.quirk:
        w, h = {**QUIRKS, **QUIRKS_2010}[im.quirk]
    else:
        weights = np.array([s[2] for s in SIZES])
        w, h, _ = SIZES[rng.choice(len(SIZES), p=weights / weights.sum())]
    # Blotchy background in muted colours (a grey, a tint, blotches), as most photo backgrounds
    # are, so the saturated object carries the class colour. Smoothed at quarter size then
    # enlarged by nearest: a direct bilinear upscale costs 3 ms an image.
    base = rng.integers(60, 191) + rng.integers(-30, 31, size=3)
    coarse = np.clip(base + rng.integers(-35, 36, size=(max(2, h // 80), max(2, w // 80), 3)), 0, 255)
    quarter = Image.fromarray(coarse.astype(np.uint8), "RGB").resize((w // 4 + 1, h // 4 + 1), Image.BILINEAR)
    img = quarter.resize((w, h), Image.NEAREST)
    side = max(16, int(min(w, h) * rng.uniform(0.35, 0.8)))
    mask = Image.new("L", (side, side), 0)
    _draw_shape(ImageDraw.Draw(mask), im.cls.shape, side)
    mask = mask.rotate(float(rng.uniform(0, 360)), resample=Image.BILINEAR)
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    img.paste(_fill(im.cls, side, rng), (x0, y0), mask)
    # Sensor-like grain in [-12, 12]: a window at a random place in one fixed noise tile, since
    # drawing fresh noise for each image was a third of the time.
    gx, gy = int(rng.integers(0, GRAIN_SIZE[0] - w + 1)), int(rng.integers(0, GRAIN_SIZE[1] - h + 1))
    img = ImageChops.add(img, _grain().crop((gx, gy, gx + w, gy + h)), offset=-12)
    bx0, by0, bx1, by1 = mask.getbbox() or (0, 0, side, side)
    box = (x0 + bx0, y0 + by0, x0 + bx1 - 1, y0 + by1 - 1)

    quality = int(rng.integers(75, 96))
    buf = io.BytesIO()
    if im.quirk == "png-as-jpeg":
        img.save(buf, "PNG")
    elif im.quirk == "cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=quality)
    elif im.quirk == "grayscale":
        img.convert("L").save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    if im.quirk == "truncated":
        data = data[: int(len(data) * TRUNCATE_AT)]
    elif im.quirk == "gzip":
        data = gzip.compress(data, mtime=0)  # mtime=0: gzip otherwise stamps the time into its header
    return data, box


def _banner() -> bytes:
    """The blank picture the 2010 tars hold where an image was not available: grey, a frame, words."""
    img = Image.new("RGB", BANNER, (204, 204, 204))
    draw = ImageDraw.Draw(img)
    draw.rectangle((150, 137, 350, 237), outline=(153, 153, 153), width=4)
    draw.text((200, 180), "not available", fill=(102, 102, 102))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@functools.cache
def _grain() -> Image.Image:
    w, h = GRAIN_SIZE
    return Image.fromarray(np.random.default_rng(20120501).integers(0, 25, (h, w, 3), dtype=np.uint8), "RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, side: int) -> None:
    # Everything stays within 0.45 * side of the centre, so rotation never clips it.
    c, r = side / 2, 0.45 * side

    def polygon(radii: list[float], turn: float = -math.pi / 2) -> list[tuple[float, float]]:
        n = len(radii)
        return [
            (c + q * math.cos(turn + 2 * math.pi * k / n), c + q * math.sin(turn + 2 * math.pi * k / n))
            for k, q in enumerate(radii)
        ]

    if shape == "ellipse":
        draw.ellipse((c - r, c - 0.6 * r, c + r, c + 0.6 * r), fill=255)
    elif shape == "ring":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=255)
        draw.ellipse((c - 0.55 * r, c - 0.55 * r, c + 0.55 * r, c + 0.55 * r), fill=0)
    elif shape == "cross":
        a = 0.3 * r
        draw.rectangle((c - r, c - a, c + r, c + a), fill=255)
        draw.rectangle((c - a, c - r, c + a, c + r), fill=255)
    else:
        radii = {
            "square": [r] * 4,
            "triangle": [r] * 3,
            "diamond": [r, 0.55 * r] * 2,
            "hexagon": [r] * 6,
            "star": [r, 0.45 * r] * 5,
        }[shape]
        draw.polygon(polygon(radii, -math.pi / 4 if shape == "square" else -math.pi / 2), fill=255)


def _fill(c: _Class, side: int, rng: np.random.Generator) -> Image.Image:
    hue = (c.hue + rng.normal(0, 0.02)) % 1.0
    value = rng.uniform(0.75, 1.0)
    light = tuple(round(v * 255) for v in colorsys.hsv_to_rgb(hue, 0.9, value))
    dark = tuple(round(v * 255) for v in colorsys.hsv_to_rgb(hue, 0.9, value * 0.45))
    period = max(4, side // int(rng.integers(4, 8)))
    x = np.arange(side)[None, :]
    y = np.arange(side)[:, None]
    if c.texture == "stripes":
        pattern = ((x + y) // period) % 2 == 1
    elif c.texture == "checker":
        pattern = ((x // period) + (y // period)) % 2 == 1
    elif c.texture == "dots":
        pattern = (x % period - period / 2) ** 2 + (y % period - period / 2) ** 2 < (period / 3) ** 2
    else:
        return Image.new("RGB", (side, side), light)
    mask = Image.fromarray(pattern.astype(np.uint8) * 255, "L")
    return Image.composite(Image.new("RGB", (side, side), dark), Image.new("RGB", (side, side), light), mask)


# --- writing each layout ----------------------------------------------------------------------


def _tar_member(name: str, size: int, is_dir: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, 0o755 if is_dir else 0o644
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tar_member(name, len(data)), io.BytesIO(data))


def _tar_bytes(files: list[tuple[str, bytes]], folders: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in folders:
            tar.addfile(_tar_member(d, 0, is_dir=True))
        for name, data in sorted(files):
            _add(tar, name, data)
    return buf.getvalue()


def _meta_mat(cls: list[_Class], n_train: int, seed: int, year: int) -> tuple[bytes, dict[str, int]]:
    """meta.mat as the devkit has it, and {wnid: ILSVRC20XX_ID}.

    The real IDs follow WordNet's hierarchy, not wnid order (ID 1 is n02119789); mimic that with
    a shuffle, so a reader that confuses the ID with the sorted index fails on this sample.
    """
    ids = np.random.default_rng([seed, 3]).permutation(len(cls))
    if np.all(ids == np.arange(len(cls))):
        ids = ids[::-1]
    wnid_to_id = {c.wnid: int(i) + 1 for c, i in zip(cls, ids)}
    n = len(cls)
    rows = [
        (wnid_to_id[c.wnid], c.wnid, c.words, f"a synthetic {c.shape}", 0, np.zeros(0), 0, n_train)
        for c in cls
    ]
    rows.sort()
    # Two internal synsets after the leaves, as in the real file's ~860 ancestors.
    spare = np.random.default_rng([seed, 4]).integers(1_000_000, 1_440_000, size=2)
    half = list(range(1, n // 2 + 1))
    rows.append(
        (
            n + 1,
            f"n{int(spare[0]):08d}",
            "shape, form",
            "a spatial arrangement",
            len(half),
            np.array(half, dtype=float),
            1,
            n_train * len(half),
        )
    )
    rest = [n + 1] + list(range(n // 2 + 1, n + 1))
    rows.append(
        (
            n + 2,
            f"n{int(spare[1]):08d}",
            "entity",
            "the root",
            len(rest),
            np.array(rest, dtype=float),
            2,
            n_train * n,
        )
    )
    synsets = np.zeros((len(rows), 1), dtype=[(f, object) for f in (DEVKIT[year][1],) + META_FIELDS])
    for k, row in enumerate(rows):
        synsets[k, 0] = row
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets})
    # scipy stamps the creation time into the 116-byte text header; a constant keeps it reproducible.
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by alexnet-prep sample".ljust(116, b" ")
    return bytes(data), wnid_to_id


def _write_devkit(
    fs: Any, path: str, cls: list[_Class], val: list[_Image], n_train: int, seed: int, year: int
) -> None:
    folder, _ = DEVKIT[year]
    meta, wnid_to_id = _meta_mat(cls, n_train, seed, year)
    truth = "".join(f"{wnid_to_id[im.cls.wnid]}\n" for im in val).encode()
    files = [
        (f"{folder}/COPYING", b"Synthetic stand-in for the ILSVRC devkit; no ImageNet content.\n"),
        (f"{folder}/readme.txt", b"Made by alexnet-prep sample. Only data/ is read.\n"),
        (f"{folder}/data/meta.mat", meta),
        (f"{folder}/data/ILSVRC{year}_validation_ground_truth.txt", truth),
    ]
    with atomic.atomic_write(path, fs) as f:
        # mtime=0 and no file name: gzip otherwise stamps both into its header.
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for d in (folder, f"{folder}/data"):
                    tar.addfile(_tar_member(d, 0, is_dir=True))
                for name, data in files:
                    _add(tar, name, data)


def _rendered(ims: list[_Image]) -> Iterator[tuple[_Image, bytes, tuple[int, int, int, int]]]:
    """(image, file bytes, object box) in the order given, rendered on every core.

    Threads suffice: PIL releases the GIL while it encodes, rotates and blends. Chunks bound the
    memory held when writing is slower than rendering.
    """
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for start in range(0, len(ims), 64):
            chunk = ims[start : start + 64]
            for im, (data, box) in zip(chunk, pool.map(_render, chunk)):
                yield im, data, box


def _write_raw(
    fs: Any, root: str, cls: list[_Class], train: list[_Image], val: list[_Image], seed: int, year: int
) -> dict[str, str]:
    train_tar, val_tar, devkit = RAW_YEARS[year]
    with atomic.atomic_write(f"{root}/{train_tar}", fs) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as outer:
            # `train` is grouped by class, so each inner tar is built and added in turn.
            for wnid, group in itertools.groupby(_rendered(train), key=lambda r: r[0].cls.wnid):
                _add(outer, f"{wnid}.tar", _tar_bytes([(f"{im.key}.JPEG", data) for im, data, _ in group]))
    files = [(f"{im.key}.JPEG", data) for im, data, _ in _rendered(val)]
    atomic.write_bytes(f"{root}/{val_tar}", _tar_bytes(files), fs)
    _write_devkit(fs, f"{root}/{devkit}", cls, val, len(train) // len(cls), seed, year)
    return {im.key: f"{train_tar}/{im.cls.wnid}.tar/{im.key}.JPEG" for im in train}


def _write_raw_2010(fs: Any, root: str, cls: list[_Class], train: list[_Image], val: list[_Image],
                    test: list[_Image], seed: int) -> dict[str, str]:
    """As `_write_raw`, plus the test tar, its ground truth, patch_images.tar and the 2010 quirks.

    Returns each image's path as the layouts spell it (a patched image's: its patch) and, under
    "KEY:original", the banner's path in the main tar.
    """
    train_tar, val_tar, devkit = RAW_YEARS[2010]
    test_tar, truth, _ = RAW_TEST[2010]
    banner, patches, paths = _banner(), [], {}
    with atomic.atomic_write(f"{root}/{train_tar}", fs) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as outer:
            for wnid, group in itertools.groupby(_rendered(train), key=lambda r: r[0].cls.wnid):
                files = []
                for im, data, _ in group:
                    paths[im.key] = f"{train_tar}/{wnid}.tar/{im.key}.JPEG"
                    files.append((f"{im.key}.JPEG", banner if im.quirk == "patched" else data))
                    if im.quirk == "patched":
                        patches.append((f"patch_images/train/{im.key}.JPEG", data))
                _add(outer, f"{wnid}.tar", _tar_bytes(files))
    for split, name, ims in (("val", val_tar, val), ("test", test_tar, test)):
        files = []
        for im, data, _ in _rendered(ims):
            paths[im.key] = f"{name}/{split}/{im.key}.JPEG"
            files.append((f"{split}/{im.key}.JPEG", banner if im.quirk == "patched" else data))
            if im.quirk == "patched":
                patches.append((f"patch_images/{split}/{im.key}.JPEG", data))
        atomic.write_bytes(f"{root}/{name}", _tar_bytes(files, folders=(split,)), fs)
    for member, _ in patches:
        key = member.rsplit("/", 1)[1][: -len(".JPEG")]
        paths[f"{key}:original"], paths[key] = paths[key], f"{PATCHES}/{member}"
    folders = ("patch_images",) + tuple(f"patch_images/{s}" for s in ("train", "val", "test"))
    atomic.write_bytes(f"{root}/{PATCHES}", _tar_bytes(patches, folders=folders), fs)
    _write_devkit(fs, f"{root}/{devkit}", cls, val, len(train) // len(cls), seed, 2010)
    ids = _meta_mat(cls, len(train) // len(cls), seed, 2010)[1]
    atomic.write_bytes(f"{root}/{truth}", "".join(f"{ids[im.cls.wnid]}\n" for im in test).encode(), fs)
    return paths


def _vary_class_sizes(cls: list[_Class], train: list[_Image], seed: int) -> list[_Image]:
    """`train` less 0..n/2 images of each class (never a planted quirk): unequal class sizes, so
    a held-out split's per-class counts and rounding are exercised."""
    kept = []
    for c in cls:
        ims = [im for im in train if im.cls.wnid == c.wnid]
        drop = int(np.random.default_rng([seed, 8, c.index]).integers(0, len(ims) // 2 + 1))
        plain = [im.key for im in ims if not im.quirk]
        gone = set(plain[max(0, len(plain) - drop):]) if drop else set()
        kept += [im for im in ims if im.key not in gone]
    return kept


def _write_fall(fs: Any, root: str, cls: list[_Class], train: list[_Image], seed: int,
                words: bool) -> dict[str, str]:
    """fall11_whole.tar (a tar of per-synset tars, as `_write_raw`'s train tar) and words.txt."""
    name = FALL_NAMES[0]
    with atomic.atomic_write(f"{root}/{name}", fs) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as outer:
            for wnid, group in itertools.groupby(_rendered(train), key=lambda r: r[0].cls.wnid):
                _add(outer, f"{wnid}.tar", _tar_bytes([(f"{im.key}.JPEG", data) for im, data, _ in group]))
    if words:
        # Synsets the tar lacks, below the classes' id range, as the real list names all of WordNet.
        extra = np.random.default_rng([seed, 9]).choice(440_000, size=3, replace=False) + 1_000_000
        entries = {c.wnid: c.words for c in cls} | {f"n{int(i):08d}": "entity, abstraction" for i in extra}
        text = "".join(f"{w}\t{entries[w]}\n" for w in sorted(entries))
        atomic.write_bytes(f"{root}/{WORDS}", text.encode(), fs)
    return {im.key: f"{name}/{im.cls.wnid}.tar/{im.key}.JPEG" for im in train}


def _write_loose(fs: Any, root: str, paths: dict[str, str], ims: list[_Image]) -> dict[str, tuple[int, ...]]:
    """Each image to `root/paths[key]`; returns the object boxes by key."""
    boxes, made = {}, set()
    for im, data, box in _rendered(ims):
        folder = f"{root}/{paths[im.key]}".rsplit("/", 1)[0]
        if folder not in made:
            fs.makedirs(folder, exist_ok=True)
            made.add(folder)
        fs.pipe_file(f"{root}/{paths[im.key]}", data)
        boxes[im.key] = box
    return boxes


def _write_folders(
    fs: Any, root: str, cls: list[_Class], train: list[_Image], val: list[_Image], seed: int, year: int
) -> dict[str, str]:
    # val/<wnid>/ as torchvision's ImageFolder and the usual valprep.sh leave it; the devkit beside
    # it still names the classes. (Flatten val/ to get the other variant the layouts accept.)
    paths = {im.key: f"{im.split}/{im.cls.wnid}/{im.key}.JPEG" for im in train + val}
    _write_loose(fs, root, paths, train + val)
    _write_devkit(fs, f"{root}/{RAW_YEARS[year][2]}", cls, val, len(train) // len(cls), seed, year)
    return paths


def _write_kaggle(
    fs: Any, root: str, cls: list[_Class], train: list[_Image], val: list[_Image], seed: int, year: int
) -> dict[str, str]:
    data = "ILSVRC/Data/CLS-LOC"
    paths = {im.key: f"{data}/train/{im.cls.wnid}/{im.key}.JPEG" for im in train}
    paths.update({im.key: f"{data}/val/{im.key}.JPEG" for im in val})
    boxes = _write_loose(fs, root, paths, train + val)
    mapping = "".join(f"{c.wnid} {c.words}\n" for c in cls)
    atomic.write_bytes(f"{root}/LOC_synset_mapping.txt", mapping.encode(), fs)
    # Kaggle's solution rows come in no particular order; shuffle so readers cannot rely on one.
    for k, (name, ims) in enumerate((("LOC_train_solution.csv", train), ("LOC_val_solution.csv", val))):
        buf = io.StringIO()
        rows = csv.writer(buf, lineterminator="\n")
        rows.writerow(["ImageId", "PredictionString"])
        for i in np.random.default_rng([seed, 5, k]).permutation(len(ims)):
            im = ims[int(i)]
            rows.writerow([im.key, f"{im.cls.wnid} {' '.join(map(str, boxes[im.key]))} "])
        atomic.write_bytes(f"{root}/{name}", buf.getvalue().encode(), fs)
    return paths
