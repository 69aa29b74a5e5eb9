"""Which ILSVRC copy a --src folder holds, and the list of its images with their classes.

Four layouts are recognised, tried in this order (the first that matches wins, so raw downloads
beat a partial extraction lying beside them):

- ``raw-2012``: ``ILSVRC2012_img_train.tar`` (a tar of per-class tars) and/or
  ``ILSVRC2012_img_val.tar``, with ``ILSVRC2012_devkit_t12.tar.gz``.
- ``raw-2010``: the same with ``ILSVRC2010_images_{train,val,test}.tar`` and ``ILSVRC2010_devkit-1.0.tar.gz``;
  the test labels come from ``ILSVRC2010_test_ground_truth.txt`` (beside the tars, or in
  ``devkit-1.0/data/``), and ``patch_images.tar`` beside the tars replaces the images the main
  tars hold as blank "not available" pictures.
- ``kaggle``: ``ILSVRC/Data/CLS-LOC/{train/<wnid>,val}/`` with ``LOC_synset_mapping.txt`` and
  ``LOC_val_solution.csv``.
- ``fall``: an ImageNet Fall release (``fall11_whole.tar``: 21,841 synsets, no devkit, no val), a
  tar of per-synset tars (``n00004475.tar`` ...), recognised by that name or by its shape (any
  ``*.tar`` whose first file member is ``nXXXXXXXX.tar``), with an optional ``words.txt``.
- ``folders``: ``train/<wnid>/`` and ``val/<wnid>/``, or a flat ``val/`` labelled by a devkit
  (its tar.gz or an extracted devkit folder) beside it; or ``train/<wnid>/`` alone (a Fall
  release extracted), named by a ``words.txt`` beside it if there is one.

Tars are read in place: one header scan per tar yields (offset, size) of every member, and
`read_bytes` later fetches exactly those bytes, so a 140 GB download is never extracted.

Class index = position of the wnid in sorted order (torchvision's convention), not the devkit's
ILSVRC2012_ID; the devkit IDs only serve to turn the validation ground truth into wnids.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import posixpath
import re
import tarfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.io

from tools import urls

SPLITS = ("train", "val", "test")
IMAGE_EXTS = (".jpeg", ".jpg", ".png")
WNID_RE = re.compile(r"n\d{8}")
GROUND_TRUTH_RE = re.compile(r"data/ILSVRC\d{4}_(validation|test)_ground_truth\.txt$")
PATCHES = "patch_images.tar"
# patch_images/<split>/NAME.JPEG; the leading folder is optional so a repacked tar still reads.
PATCH_RE = re.compile(r"(?:^|/)(train|val|test)/([^/]+)$")
WORDS = "words.txt"  # ImageNet's synset list, `wnid<TAB>words` a line, beside a Fall tar or train/
# The Fall 2011 release's file name; other releases of that shape are recognised by their shape.
FALL_NAMES = ("fall11_whole.tar",)


class LayoutError(ValueError):
    """The source folder is not (or not entirely) a copy of ILSVRC this module understands."""


@dataclass(frozen=True)
class SourceRef:
    """One input image; small and picklable so it can be sent to worker processes."""

    key: str  # source file stem, e.g. "n01440764_10026" or "ILSVRC2012_val_00000001"
    wnid: str
    url: str  # fsspec URL of the file holding the bytes (a loose image, or a tar)
    offset: int = 0  # byte offset of the member data inside `url` (0 for loose files)
    size: int = -1  # member size in bytes (-1: the whole file)
    path: str = ""  # readable source path for errors and the manifest
    replaces: str = ""  # path of the original this image (a patch_images.tar member) replaces


@dataclass(frozen=True)
class ClassInfo:
    index: int  # position of wnid in sorted wnid order (torchvision), not the devkit's ILSVRC20XX_ID
    wnid: str
    words: str  # devkit / LOC_synset_mapping.txt words, "" if unknown


def read_bytes(ref: SourceRef) -> bytes:
    """The bytes of one source image: a whole loose file, or a member's window inside a tar."""
    fs, path = urls.filesystem(ref.url)
    try:
        if ref.size < 0:
            return fs.cat_file(path)
        data = fs.cat_file(path, start=ref.offset, end=ref.offset + ref.size)
    except OSError as e:
        raise LayoutError(f"{ref.path or ref.url}: cannot read ({e})") from e
    if len(data) != ref.size:
        raise LayoutError(
            f"{ref.path or ref.url}: got {len(data)} of {ref.size} bytes at offset {ref.offset} of "
            f"{ref.url} (was the file changed after the scan?)"
        )
    return data


def is_image(name: str) -> bool:
    # Hidden names are skipped too: macOS copies leave "._x.JPEG" resource forks that are not images.
    base = posixpath.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTS)


def stem(name: str) -> str:
    return posixpath.splitext(posixpath.basename(name))[0]


# --- devkit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Devkit:
    """What a devkit tells us: the leaf classes, and the validation labels as wnids."""

    name: str  # for error messages
    year: int
    classes: list[ClassInfo]
    val_wnids: list[str]  # ground truth, one wnid per val image in file-number order
    gt_name: str
    ids: dict[int, str]  # ILSVRC20XX_ID -> wnid of the leaf classes, to read other ground truths
    test_truth: tuple[str, bytes] | None = None  # (member name, bytes) of a test ground truth inside


def parse_meta(data: bytes, where: str) -> tuple[int, dict[int, tuple[str, str]]]:
    """Year and {ILSVRC20XX_ID: (wnid, words)} of the leaf synsets (num_children == 0) of meta.mat."""
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)
    except Exception as e:  # scipy raises several unrelated types on a corrupt file
        raise LayoutError(f"{where}: not a readable MATLAB file ({e})") from e
    synsets = mat.get("synsets")
    if not isinstance(synsets, np.ndarray) or synsets.dtype.names is None:
        raise LayoutError(f"{where}: no 'synsets' struct array")
    fields = synsets.dtype.names
    id_field = next((f for f in fields if re.fullmatch(r"ILSVRC\d{4}_ID", f)), None)
    missing = [f for f in ("WNID", "words", "num_children") if f not in fields]
    if id_field is None or missing:
        missing = missing + ([] if id_field else ["ILSVRC20XX_ID"])
        raise LayoutError(f"{where}: synsets lack the field(s) {', '.join(missing)}")
    leaves: dict[int, tuple[str, str]] = {}
    wnids: set[str] = set()
    # squeeze_me turns a one-element struct array into a 0-d array.
    for s in np.atleast_1d(synsets):
        if int(s["num_children"]) != 0:
            continue
        ident, wnid = int(s[id_field]), str(s["WNID"])
        if not WNID_RE.fullmatch(wnid):
            raise LayoutError(f"{where}: synset {ident} has WNID {wnid!r}, not nXXXXXXXX")
        if ident in leaves or wnid in wnids:
            raise LayoutError(f"{where}: leaf synset {ident} ({wnid}) is listed twice")
        words = s["words"]
        leaves[ident] = (wnid, words if isinstance(words, str) else "")  # an empty MATLAB string loads as []
        wnids.add(wnid)
    if not leaves:
        raise LayoutError(f"{where}: no leaf synsets (num_children == 0)")
    return int(id_field[6:10]), leaves


def sorted_classes(words: dict[str, str]) -> list[ClassInfo]:
    return [ClassInfo(i, w, words[w]) for i, w in enumerate(sorted(words))]


def build_devkit(name: str, files: dict[str, bytes]) -> Devkit:
    """`files`: the devkit's member names (any prefix) -> bytes, only meta.mat and the ground truth."""
    meta = [n for n in files if n.endswith("data/meta.mat")]
    if len(meta) != 1:
        raise LayoutError(f"{name}: expected one data/meta.mat, found {len(meta)}")
    year, leaves = parse_meta(files[meta[0]], f"{name}/{meta[0]}")
    gt_suffix = f"data/ILSVRC{year}_validation_ground_truth.txt"
    gt = [n for n in files if n.endswith(gt_suffix)]
    if len(gt) != 1:
        raise LayoutError(f"{name}: expected one {gt_suffix}, found {len(gt)}")
    gt_name = f"{name}/{gt[0]}"
    ids = {ident: wnid for ident, (wnid, _) in leaves.items()}
    test = [n for n in files if n.endswith(f"data/ILSVRC{year}_test_ground_truth.txt")]
    if len(test) > 1:
        raise LayoutError(f"{name}: {len(test)} test ground truths ({', '.join(test)}); expected at most one")
    words = dict(leaves.values())
    return Devkit(name, year, sorted_classes(words), read_ground_truth(files[gt[0]], ids, year, gt_name),
                  gt_name, ids, (f"{name}/{test[0]}", files[test[0]]) if test else None)


def read_ground_truth(data: bytes, ids: dict[int, str], year: int, where: str) -> list[str]:
    """One wnid per line of a ground-truth file (one ILSVRC20XX_ID a line, in image-number order)."""
    wnids = []
    for line_no, line in enumerate(data.decode("ascii", "replace").split(), 1):
        try:
            wnids.append(ids[int(line)])
        except (ValueError, KeyError):
            raise LayoutError(
                f"{where}: line {line_no} is {line!r}, not the ILSVRC{year}_ID of a leaf class in meta.mat"
            ) from None
    return wnids


def _devkit_member(name: str) -> bool:
    return name.endswith("data/meta.mat") or bool(GROUND_TRUTH_RE.search(name))


def read_devkit_tar(fs: Any, path: str, name: str) -> Devkit:
    """The devkit .tar.gz is a few MB: read it whole rather than in place."""
    try:
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(path)), mode="r:*") as tar:
            files = {
                m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar
                if m.isfile() and _devkit_member(m.name)
            }
    except (tarfile.TarError, EOFError, OSError) as e:
        raise LayoutError(f"{name}: not a readable tar.gz ({e})") from e
    return build_devkit(name, files)


def read_devkit_dir(fs: Any, path: str, name: str) -> Devkit:
    files = {posixpath.relpath(p, path): fs.cat_file(p) for p in fs.find(path) if _devkit_member(p)}
    return build_devkit(name, files)


def label_flat(names: list[str], truth: list[str], gt_name: str, year: int, split: str,
               where: str) -> list[str]:
    """wnid of each flat file `ILSVRC20XX_<split>_%08d.*` (any folder): line %d of `truth`."""
    if len(names) != len(truth):
        raise LayoutError(f"{gt_name}: {len(truth)} labels but {where} holds {len(names)} images")
    pattern = re.compile(rf"ILSVRC{year}_{split}_(\d+)")
    wnids = []
    for name in names:
        m = pattern.fullmatch(stem(name))
        number = int(m.group(1)) if m else 0
        if not 1 <= number <= len(truth):
            raise LayoutError(f"{where}/{name}: no ground-truth label in {gt_name}")
        wnids.append(truth[number - 1])
    return wnids


def label_flat_val(names: list[str], devkit: Devkit, where: str) -> list[str]:
    """wnid of each flat val file `ILSVRC20XX_val_%08d.*`: line %d of the devkit's ground truth."""
    return label_flat(names, devkit.val_wnids, devkit.gt_name, devkit.year, "val", where)


# --- words.txt --------------------------------------------------------------------------------


def parse_words(data: bytes, where: str) -> dict[str, str]:
    """{wnid: words} of ImageNet's `words.txt` (`wnid<TAB>words` a line; blank lines allowed).

    The published file lists every WordNet noun synset (82k), not only the classes of a release,
    so it only names classes: which classes exist is read from the images.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LayoutError(f"{where}: not UTF-8 text ({e})") from None
    words: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        wnid, tab, w = line.partition("\t")
        if not tab or not WNID_RE.fullmatch(wnid) or not w.strip():
            raise LayoutError(f"{where}: line {line_no} is {line[:80]!r}, not 'nXXXXXXXX<TAB>words'")
        if wnid in words:
            raise LayoutError(f"{where}: line {line_no} lists {wnid} a second time")
        words[wnid] = w.strip()
    return words


def read_words(fs: Any, folder: str, src: str) -> dict[str, str] | None:
    """`folder/words.txt` parsed, or None if there is none; `src` (the folder's URL) names it in errors."""
    path = posixpath.join(folder, WORDS)
    if not fs.isfile(path):
        return None
    return parse_words(fs.cat_file(path), urls.join(src, WORDS))


# --- tars read in place -----------------------------------------------------------------------


class _Window:
    """Bytes [start, start + size) of an open file, seekable, so tarfile can parse an inner tar
    where it lies inside the outer one instead of copying it out."""

    def __init__(self, f: Any, start: int, size: int):
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = (0, self._pos, self._size)[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._pos)
        n = left if n is None or n < 0 else min(n, left)
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data


def scan_tar(f: Any, start: int, size: int, where: str) -> list[tuple[str, int, int]]:
    """(name, absolute data offset, size) of each regular member; headers only, no data read."""
    try:
        with tarfile.open(fileobj=_Window(f, start, size), mode="r:") as tar:
            return [(m.name, start + m.offset_data, m.size) for m in tar if m.isfile()]
    except tarfile.TarError as e:
        raise LayoutError(f"{where}: not a readable tar ({e})") from e


# --- layouts ----------------------------------------------------------------------------------


class Layout:
    """One ILSVRC copy. `classes()` is read when the layout is detected; `samples()` on demand."""

    name = ""

    def __init__(self, src: str, fs: Any, root: str):
        self.src, self.fs, self.root = src, fs, root
        self._classes: list[ClassInfo] | None = None

    def __repr__(self) -> str:
        return f"<{self.name} layout at {self.src}>"

    def classes(self) -> list[ClassInfo]:
        if self._classes is None:
            self._classes = self._read_classes()
        return list(self._classes)

    def splits(self) -> list[str]:
        raise NotImplementedError

    def unlabelled(self, split: str) -> str | None:
        """Why `split`, present, has no labels (one line naming what is missing); None when it has."""
        return None

    def samples(self, split: str) -> list[SourceRef]:
        """Every image of `split`, sorted by key; raises on an unknown class or a duplicate key."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if split not in self.splits():
            raise LayoutError(f"{self.src}: the {self.name} layout here has no {split} split")
        why = self.unlabelled(split)
        if why is not None:
            raise LayoutError(why)
        refs = sorted(self._samples(split), key=lambda r: r.key)
        for a, b in zip(refs, refs[1:]):
            if a.key == b.key:
                raise LayoutError(f"{self.src}: two {split} images share the key {a.key}: {a.path}, {b.path}")
        known = {c.wnid for c in self.classes()}
        if split == "train":
            empty = sorted(known - {r.wnid for r in refs})
            if empty:
                raise LayoutError(
                    f"{self.src}: {len(empty)} of {len(known)} classes have no train images "
                    f"(first: {empty[0]}); incomplete copy?"
                )
        return refs

    def url(self, path: str) -> str:
        # Rebuilt from --src rather than fs.unstrip_protocol(path), which drops the rest of a
        # chained URL (zip://x::file:///a.zip would come back as zip://x).
        return urls.join(self.src, self.rel(path))

    def rel(self, path: str) -> str:
        return posixpath.relpath(path, self.root) if self.root else path.lstrip("/")  # zip:// root is ""

    def _read_classes(self) -> list[ClassInfo]:
        raise NotImplementedError

    def _samples(self, split: str) -> list[SourceRef]:
        raise NotImplementedError

    def _class_folders(self, folder: str, known: set[str] | None) -> list[SourceRef]:
        """`folder/<wnid>/*.JPEG`: one listing per class folder (names only: no stat per file)."""
        refs = []
        for wnid, path in self._wnid_dirs(folder, known):
            for p in sorted(self.fs.ls(path, detail=False)):
                if is_image(p):
                    refs.append(SourceRef(stem(p), wnid, self.url(p), path=self.rel(p)))
        return refs

    def _wnid_dirs(self, folder: str, known: set[str] | None) -> list[tuple[str, str]]:
        dirs = []
        for e in self.fs.ls(folder, detail=True):
            base = posixpath.basename(e["name"].rstrip("/"))
            if e["type"] != "directory" or base.startswith("."):
                continue
            where = self.rel(e["name"])
            if not WNID_RE.fullmatch(base):
                raise LayoutError(f"{self.src}: folder {where} is not named by a WordNet id (nXXXXXXXX)")
            if known is not None and base not in known:
                raise LayoutError(f"{self.src}: folder {where} is not one of the {len(known)} known classes")
            dirs.append((base, e["name"]))
        return sorted(dirs)

    def _flat_images(self, folder: str) -> list[str]:
        return sorted(p for p in self.fs.ls(folder, detail=False) if is_image(p))


class RawLayout(Layout):
    """The downloads as published: train/val(/test) tars and the devkit, never extracted."""

    def __init__(self, src: str, fs: Any, root: str, year: int, train: str, val: str, devkit: str):
        super().__init__(src, fs, root)
        self.name = f"raw-{year}"
        self.year = year
        self.files = {"train": train, "val": val}
        if year in RAW_TEST:
            self.files["test"] = RAW_TEST[year][0]
        self.devkit_name = devkit
        self._devkit: Devkit | None = None
        self._test: tuple[list[str], str] | None = None
        self._patches: dict[str, list[tuple[str, int, int]]] | None = None

    def devkit(self) -> Devkit:
        if self._devkit is None:
            path = posixpath.join(self.root, self.devkit_name)
            self._devkit = read_devkit_tar(self.fs, path, self.devkit_name)
        return self._devkit

    def splits(self) -> list[str]:
        return [s for s, name in self.files.items() if self.fs.isfile(posixpath.join(self.root, name))]

    def unlabelled(self, split: str) -> str | None:
        if split != "test" or self.test_truth() is not None:
            return None
        _, truth, folder = RAW_TEST[self.year]
        return (f"{self.src}: {self.files['test']} has no labels: {truth} is neither beside the tars "
                f"nor in {folder}/data/ (extracted, or inside {self.devkit_name}); the test split is refused")

    def test_truth(self) -> tuple[list[str], str] | None:
        """(wnid of each test image in file-number order, where it was read), or None if absent.

        Looked for beside the tars, in an extracted devkit folder, and inside the devkit tar.gz;
        copies in several places must agree, or which one labels the test set would be a guess.
        """
        if self._test is None and self.year in RAW_TEST:
            _, name, folder = RAW_TEST[self.year]
            found: dict[str, bytes] = {}
            for rel in (name, posixpath.join(folder, "data", name)):
                path = posixpath.join(self.root, rel)
                if self.fs.isfile(path):
                    found[rel] = self.fs.cat_file(path)
            if self.devkit().test_truth is not None:
                inside, data = self.devkit().test_truth
                found[inside] = data
            if len(set(found.values())) > 1:
                raise LayoutError(f"{self.src}: the test ground truths {', '.join(found)} differ; keep one")
            if found:
                where, data = next(iter(found.items()))
                dk = self.devkit()
                self._test = read_ground_truth(data, dk.ids, self.year, where), where
        return self._test

    def _read_classes(self) -> list[ClassInfo]:
        return self.devkit().classes

    def patches(self) -> dict[str, list[tuple[str, int, int]]]:
        """{split: [(member, offset, size)]} of patch_images.tar beside the tars ({} if absent)."""
        if self._patches is None:
            path = posixpath.join(self.root, PATCHES)
            self._patches = {}
            if self.fs.isfile(path):
                with self.fs.open(path, "rb") as f:
                    members = scan_tar(f, 0, self.fs.size(path), PATCHES)
                for member, off, size in members:
                    if not is_image(member):
                        continue
                    m = PATCH_RE.search(member)
                    if m is None:
                        raise LayoutError(f"{PATCHES}/{member}: not under patch_images/<train|val|test>/")
                    self._patches.setdefault(m.group(1), []).append((member, off, size))
        return self._patches

    def _patched(self, split: str, refs: list[SourceRef]) -> list[SourceRef]:
        """`refs` with each image patch_images.tar corrects replaced by its patch.

        A patch without its original is an error, not an extra image: its label would be a guess,
        and it most likely means the tars and the patches come from different releases.
        """
        at = {r.key: i for i, r in enumerate(refs)}
        url = self.url(posixpath.join(self.root, PATCHES))
        done: set[str] = set()
        for member, off, size in self.patches().get(split, []):
            key = stem(member)
            if key not in at:
                raise LayoutError(f"{PATCHES}/{member}: its original {key} is not in {self.files[split]}; "
                                  "a patch must replace an image of the main tars")
            if key in done:
                raise LayoutError(f"{PATCHES}/{member}: a second patch for {key}")
            done.add(key)
            old = refs[at[key]]
            refs[at[key]] = SourceRef(key, old.wnid, url, off, size, f"{PATCHES}/{member}", replaces=old.path)
        return refs

    def _samples(self, split: str) -> list[SourceRef]:
        return self._patched(split, self._unpatched(split))

    def _unpatched(self, split: str) -> list[SourceRef]:
        name = self.files[split]
        path = posixpath.join(self.root, name)
        url = self.url(path)
        with self.fs.open(path, "rb") as f:
            outer = scan_tar(f, 0, self.fs.size(path), name)
            if split != "train":
                # The published 2010 val and test tars hold val/... and test/...: a member's folder
                # is ignored, its file number labels it.
                images = [(m, off, size) for m, off, size in outer if is_image(m)]
                names = [m for m, _, _ in images]
                if split == "val":
                    wnids = label_flat_val(names, self.devkit(), name)
                else:
                    truth, where = self.test_truth() or ([], "")
                    wnids = label_flat(names, truth, where, self.year, split, name)
                return [
                    SourceRef(stem(m), w, url, off, size, f"{name}/{m}")
                    for (m, off, size), w in zip(images, wnids)
                ]
            known = {c.wnid for c in self.classes()}
            refs = []
            for inner, start, length in outer:
                if not inner.endswith(".tar"):
                    continue
                wnid = stem(inner)
                if wnid not in known:
                    raise LayoutError(f"{name}/{inner}: {wnid} is not one of the {len(known)} devkit classes")
                for m, off, size in scan_tar(f, start, length, f"{name}/{inner}"):
                    if is_image(m):
                        refs.append(SourceRef(stem(m), wnid, url, off, size, f"{name}/{inner}/{m}"))
            return refs


class FoldersLayout(Layout):
    """Extracted folders: train/<wnid>/, and val/<wnid>/ or a flat val/ plus a devkit beside it."""

    name = "folders"

    def __init__(self, src: str, fs: Any, root: str):
        super().__init__(src, fs, root)
        self._devkit: Devkit | None = None
        self._devkit_read = False

    def devkit(self) -> Devkit | None:
        """A devkit in src: `*devkit*.tar.gz`, else a `*devkit*` folder holding data/meta.mat."""
        if self._devkit_read:
            return self._devkit
        entries = []
        for e in self.fs.ls(self.root, detail=True):
            base = posixpath.basename(e["name"].rstrip("/"))
            if "devkit" in base and not base.startswith("."):
                entries.append(e)
        tars = [e["name"] for e in entries if e["type"] == "file" and e["name"].endswith((".tar.gz", ".tgz"))]
        dirs = [e["name"] for e in entries if e["type"] == "directory"]
        if len(tars) > 1 or (not tars and len(dirs) > 1):
            names = ", ".join(posixpath.basename(p) for p in tars or dirs)
            raise LayoutError(f"{self.src}: several devkits ({names}); keep the one that matches val/")
        if tars:
            self._devkit = read_devkit_tar(self.fs, tars[0], self.rel(tars[0]))
        elif dirs:
            self._devkit = read_devkit_dir(self.fs, dirs[0], self.rel(dirs[0]))
        self._devkit_read = True
        return self._devkit

    def splits(self) -> list[str]:
        # train and val only: a test/ folder here comes with no labels any reader knows.
        return [s for s in ("train", "val") if self.fs.isdir(posixpath.join(self.root, s))]

    def _read_classes(self) -> list[ClassInfo]:
        devkit = self.devkit()
        if devkit is not None:
            return devkit.classes
        # Without a devkit the class list is the set of train folders (val's if train is absent).
        split = "train" if "train" in self.splits() else "val"
        wnids = [w for w, _ in self._wnid_dirs(posixpath.join(self.root, split), None)]
        if not wnids:
            raise LayoutError(
                f"{self.src}/{split}: no class folders (nXXXXXXXX/) and no devkit naming the classes"
            )
        words = read_words(self.fs, self.root, self.src)
        if words is not None:  # a Fall release extracted: train/<wnid>/ and words.txt beside it
            return sorted_classes({w: words.get(w, w) for w in wnids})
        return sorted_classes(dict.fromkeys(wnids, ""))

    def _samples(self, split: str) -> list[SourceRef]:
        folder = posixpath.join(self.root, split)
        known = {c.wnid for c in self.classes()}
        if split == "train":
            return self._class_folders(folder, known)
        # Names only: a flat val/ holds 50,000 files, and a detailed listing would stat each one.
        listing = self.fs.ls(folder, detail=False)
        images = sorted(p for p in listing if is_image(p))
        if not images:
            return self._class_folders(folder, known)
        if any(WNID_RE.fullmatch(posixpath.basename(p.rstrip("/"))) for p in listing):
            raise LayoutError(f"{self.src}/val mixes flat images and class folders")
        devkit = self.devkit()
        if devkit is None:
            raise LayoutError(
                f"{self.src}/val holds images directly (flat) and no devkit (*devkit*.tar.gz or a "
                "*devkit* folder with data/meta.mat) lies beside it to label them"
            )
        wnids = label_flat_val([posixpath.basename(p) for p in images], devkit, "val")
        return [SourceRef(stem(p), w, self.url(p), path=self.rel(p)) for p, w in zip(images, wnids)]


class KaggleLayout(Layout):
    """Kaggle's ImageNet Object Localization Challenge download (CLS-LOC)."""

    name = "kaggle"
    data = "ILSVRC/Data/CLS-LOC"
    mapping = "LOC_synset_mapping.txt"
    solution = "LOC_val_solution.csv"

    def splits(self) -> list[str]:
        # Kaggle's CLS-LOC/test/ is unlabelled (no LOC_test_solution.csv): not a split here.
        return [s for s in ("train", "val") if self.fs.isdir(posixpath.join(self.root, self.data, s))]

    def _read_classes(self) -> list[ClassInfo]:
        words: dict[str, str] = {}
        text = self.fs.cat_file(posixpath.join(self.root, self.mapping)).decode("utf-8", "replace")
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            wnid, _, w = line.strip().partition(" ")
            if not WNID_RE.fullmatch(wnid) or wnid in words:
                raise LayoutError(f"{self.mapping}: line {line_no} is {line!r}, not '<new wnid> <words>'")
            words[wnid] = w.strip()
        if not words:
            raise LayoutError(f"{self.mapping}: no classes")
        return sorted_classes(words)

    def _val_labels(self, known: set[str]) -> dict[str, str]:
        path = posixpath.join(self.root, self.solution)
        if not self.fs.isfile(path):
            raise LayoutError(f"{self.src}: {self.solution} is missing; it holds the val labels")
        rows = csv.reader(io.StringIO(self.fs.cat_file(path).decode("utf-8", "replace")))
        if next(rows, None) != ["ImageId", "PredictionString"]:
            raise LayoutError(f"{self.solution}: header is not 'ImageId,PredictionString'")
        labels: dict[str, str] = {}
        for line_no, row in enumerate(rows, 2):
            wnid = row[1].split()[0] if len(row) == 2 and row[1].split() else ""
            if wnid not in known or row[0] in labels:
                raise LayoutError(f"{self.solution}: line {line_no} is not '<new image id>,<known wnid> ...'")
            labels[row[0]] = wnid
        return labels

    def _samples(self, split: str) -> list[SourceRef]:
        folder = posixpath.join(self.root, self.data, split)
        known = {c.wnid for c in self.classes()}
        if split == "train":
            return self._class_folders(folder, known)
        labels = self._val_labels(known)
        images = self._flat_images(folder)
        if len(labels) != len(images):
            raise LayoutError(
                f"{self.solution}: {len(labels)} labels but {self.data}/val holds {len(images)} images"
            )
        refs = []
        for p in images:
            if stem(p) not in labels:
                raise LayoutError(f"{self.rel(p)}: no label in {self.solution}")
            refs.append(SourceRef(stem(p), labels[stem(p)], self.url(p), path=self.rel(p)))
        return refs


class FallLayout(Layout):
    """An ImageNet Fall release as published: one tar of per-synset tars, read in place.

    No devkit and no val split: the classes are the synset tars (sorted wnid order), named by
    words.txt beside the tar (else by the wnid), and a held-out split is carved by
    `tools.holdout`, not read. The published fall11_whole.tar is ~1.3 TB: like the raw train tar,
    only member headers are read here, the image bytes later by offset.
    """

    name = "fall"

    def __init__(self, src: str, fs: Any, root: str, tar: str):
        super().__init__(src, fs, root)
        self.tar = tar
        self._members: list[tuple[str, str, int, int]] | None = None

    def splits(self) -> list[str]:
        return ["train"]

    def members(self) -> list[tuple[str, str, int, int]]:
        """(wnid, member, data offset, size) of each per-synset tar, by wnid; outer headers only."""
        if self._members is None:
            path = posixpath.join(self.root, self.tar)
            with self.fs.open(path, "rb") as f:
                outer = scan_tar(f, 0, self.fs.size(path), self.tar)
            found: dict[str, tuple[str, str, int, int]] = {}
            for member, off, size in outer:
                base = posixpath.basename(member)
                wnid = base[: -len(".tar")] if base.endswith(".tar") else ""
                if not WNID_RE.fullmatch(wnid):
                    # Refused, not skipped: a release of this shape holds synset tars only, so
                    # anything else means the tar is not the release it looks like.
                    raise LayoutError(f"{self.tar}/{member}: not a per-synset tar (nXXXXXXXX.tar)")
                if wnid in found:
                    first = found[wnid][1]
                    raise LayoutError(f"{self.tar}/{member}: a second tar of {wnid} (first: {first})")
                found[wnid] = (wnid, member, off, size)
            if not found:
                raise LayoutError(f"{self.tar}: holds no per-synset tars (nXXXXXXXX.tar)")
            self._members = [found[w] for w in sorted(found)]
        return list(self._members)

    def _read_classes(self) -> list[ClassInfo]:
        words = read_words(self.fs, self.root, self.src) or {}
        return sorted_classes({w: words.get(w, w) for w, _, _, _ in self.members()})

    def _samples(self, split: str) -> list[SourceRef]:
        path = posixpath.join(self.root, self.tar)
        url = self.url(path)
        refs = []
        with self.fs.open(path, "rb") as f:
            for wnid, inner, start, length in self.members():
                where = f"{self.tar}/{inner}"
                images = [(m, off, size) for m, off, size in scan_tar(f, start, length, where) if is_image(m)]
                if not images:
                    raise LayoutError(f"{where}: holds no images (an empty synset tar: incomplete copy?)")
                refs += [SourceRef(stem(m), wnid, url, off, size, f"{where}/{m}") for m, off, size in images]
        return refs


def _first_file(fs: Any, path: str, compressed: bool) -> str | None:
    """Name of the first file member of the tar at `path`, or None if it is not a readable tar.

    Stream mode reads only the first headers (a gzip tar decompresses a few kB), never the body.
    """
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|gz" if compressed else "r|") as tar:
            for m in itertools.islice(tar, 8):  # a few directory entries may come first
                if m.isfile():
                    return m.name
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile):
        return None
    return None


def _fall_tar(src: str, fs: Any, root: str, names: dict[str, str]) -> str | None:
    """The Fall release's tar in `root`: `fall11_whole.tar`, else the one `*.tar` shaped like it."""
    for name in FALL_NAMES:
        if names.get(name) == "file":
            return name
    shaped, compressed = [], []
    for name, kind in sorted(names.items()):
        if kind != "file" or name.startswith("."):
            continue
        gz = name.endswith((".tar.gz", ".tgz"))
        if not (gz or name.endswith(".tar")):
            continue
        first = _first_file(fs, posixpath.join(root, name), gz)
        if first is not None and WNID_RE.fullmatch(stem(first)) and first.endswith(".tar"):
            (compressed if gz else shaped).append(name)
    if len(shaped) > 1:
        raise LayoutError(f"{src}: several tars of per-synset tars ({', '.join(shaped)}); keep one")
    if not shaped and compressed:
        # gzip has no random access: reading members by offset would decompress from the start
        # every time, so a compressed release (winter21_whole.tar.gz) must be decompressed once.
        raise LayoutError(f"{src}/{compressed[0]}: a gzip-compressed tar of per-synset tars cannot be "
                          "read in place; decompress it beside itself first (gunzip -k)")
    return shaped[0] if shaped else None


RAW_YEARS = {
    2012: ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"),
    2010: ("ILSVRC2010_images_train.tar", "ILSVRC2010_images_val.tar", "ILSVRC2010_devkit-1.0.tar.gz"),
}
# year -> (test image tar, its ground truth, the devkit's folder). 2012's test labels were never
# published, so only 2010 has a test split.
RAW_TEST = {2010: ("ILSVRC2010_images_test.tar", "ILSVRC2010_test_ground_truth.txt", "devkit-1.0")}


def _looked_for() -> str:
    raw = "; ".join(f"raw-{y} ({t} and/or {v}, with {d})" for y, (t, v, d) in RAW_YEARS.items())
    return (
        f"{raw}; kaggle ({KaggleLayout.data}/ with {KaggleLayout.mapping}); "
        f"fall ({FALL_NAMES[0]} or another tar of per-synset tars); folders (train/<wnid>/ and/or val/)"
    )


def detect(src: str) -> Layout:
    """The layout of the ILSVRC copy in `src` (any fsspec URL), with its class list already read."""
    fs, root = urls.filesystem(src)
    root = root.rstrip("/") or ("/" if root.startswith("/") else "")  # zip:// has root ""
    if not fs.isdir(root):
        raise LayoutError(f"{src}: no such folder; expected an ILSVRC copy: {_looked_for()}")
    names = {posixpath.basename(e["name"].rstrip("/")): e["type"] for e in fs.ls(root, detail=True)}
    layout: Layout | None = None
    for year, (train, val, devkit) in RAW_YEARS.items():
        test = RAW_TEST[year][0] if year in RAW_TEST else ""
        if "file" in (names.get(train), names.get(val), names.get(test)):
            if names.get(devkit) != "file":
                raise LayoutError(f"{src}: found the raw-{year} tars but not {devkit} (it names the classes)")
            layout = RawLayout(src, fs, root, year, train, val, devkit)
            break
    if layout is None and fs.isdir(posixpath.join(root, KaggleLayout.data)):
        if names.get(KaggleLayout.mapping) != "file":
            raise LayoutError(
                f"{src}: found {KaggleLayout.data}/ but not {KaggleLayout.mapping} (it names the classes)"
            )
        layout = KaggleLayout(src, fs, root)
    if layout is None:
        fall = _fall_tar(src, fs, root, names)
        layout = None if fall is None else FallLayout(src, fs, root, fall)
    if layout is None and (names.get("train") == "directory" or names.get("val") == "directory"):
        layout = FoldersLayout(src, fs, root)
    if layout is None:
        raise LayoutError(f"{src}: no ILSVRC layout found; looked for {_looked_for()}")
    layout.classes()  # fail now, before any work, on a bad devkit or class list
    return layout
