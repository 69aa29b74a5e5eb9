"""CIFAR-10's published binary tarball (`cifar-10-binary.tar.gz`), read with tarfile and numpy only.

    images, labels = read_split("cifar-10-binary.tar.gz", "train")   # (50000, 3, 32, 32) uint8, (50000,)
    python -m tools.cifar10 --out sample.tar.gz --per-batch 200       # a small learnable stand-in

Each `cifar-10-batches-bin/*.bin` member is a run of 3,073-byte records: one label byte (0-9), then
the 32x32 red, green and blue planes, each row-major. The pickled "python version"
(`cifar-10-batches-py/`) is refused, never opened: unpickling a downloaded file runs its code. Every
failure is a `CifarError` whose one line names the tarball (and the member).

Written by hand because torchvision's CIFAR10 reads the pickled version only.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np

from tools import atomic

SIDE = 32
PLANE = SIDE * SIDE
RECORD = 1 + 3 * PLANE  # 3073 bytes: label, then R, G, B planes
CLASSES = 10
FOLDER = "cifar-10-batches-bin"
SPLITS: dict[str, tuple[str, ...]] = {
    "train": tuple(f"{FOLDER}/data_batch_{i}.bin" for i in range(1, 6)),
    "test": (f"{FOLDER}/test_batch.bin",),
}
# The other two published archives: refused with a word on what to download instead.
OTHER_VERSIONS = {"cifar-10-batches-py": "the pickled \"python version\"",
                  "cifar-10-batches-mat": "the MATLAB version"}


class CifarError(ValueError):
    """A tarball that is not CIFAR-10's binary version; the message is one line naming it."""


def read_members(path: str | Path, names: Sequence[str]) -> dict[str, bytes]:
    """The bytes of `names` in the tarball at `path`, in one sequential pass (a .tar.gz has no index)."""
    wanted, found, seen = set(names), {}, []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                seen.append(member.name)
                top = member.name.split("/", 1)[0]
                if top in OTHER_VERSIONS:
                    raise CifarError(f"{path}: this is CIFAR-10's {OTHER_VERSIONS[top]} ({member.name}); "
                                     f"give the binary version, cifar-10-binary.tar.gz ({FOLDER}/*.bin)")
                if member.name not in wanted:
                    continue
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise CifarError(f"{path}: {member.name} is truncated "
                                     f"({len(data)} of {member.size} bytes)")
                found[member.name] = data
    except FileNotFoundError:
        raise CifarError(f"{path}: no such file") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        detail = " ".join(str(e).split())[:200]  # tarfile's "tried each method" message spans lines
        raise CifarError(f"{path}: truncated or not a tar archive ({type(e).__name__}: {detail})") from None
    missing = [n for n in names if n not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CifarError(f"{path}: no member {missing[0]}{more}; CIFAR-10's binary version has "
                         f"{FOLDER}/data_batch_1..5.bin and test_batch.bin")
    return found


def parse_records(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one batch file's bytes; `where` names it."""
    if not data or len(data) % RECORD:
        raise CifarError(f"{where} is {len(data)} bytes, not a positive multiple of the {RECORD}-byte record "
                         "(1 label byte + 32x32 R, G, B planes)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= CLASSES:
        bad = int(np.argmax(labels >= CLASSES))
        raise CifarError(f"{where}: record {bad} has label {labels[bad]}, CIFAR-10's are 0-{CLASSES - 1}")
    return records[:, 1:].reshape(-1, 3, SIDE, SIDE).copy(), labels


def read_split(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The "train" (data_batch_1..5) or "test" split of the tarball: images (N, 3, 32, 32) uint8 in
    R, G, B order, labels (N,) int64, batches in order."""
    return read_splits(path)[split]


def read_splits(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both splits from one pass over the tarball; every member checked before anything is used."""
    names = [n for split in SPLITS.values() for n in split]
    data = read_members(path, names)
    out = {}
    for split, members in SPLITS.items():
        parts = [parse_records(data[n], f"{path}: {n}") for n in members]
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def encode_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The binary format's bytes of (N, 3, 32, 32) uint8 images and their labels."""
    flat = images.reshape(len(images), 3 * PLANE)
    return np.concatenate([labels.astype(np.uint8)[:, None], flat], axis=1).tobytes()


def sample(per_batch: int, seed: int = 0, noise: float = 60.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A learnable CIFAR-10-shaped data set: each class a fixed random smooth 32x32 colour pattern,
    each image its class's pattern plus Gaussian pixel noise (std `noise`, 0-255 scale), clipped.
    `per_batch` images in each of the six batch files. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(CLASSES, 3, 4, 4))
    patterns = coarse.repeat(SIDE // 4, axis=2).repeat(SIDE // 4, axis=3)  # 8x8 blocks of colour
    out = {}
    for name in (*SPLITS["train"], *SPLITS["test"]):
        labels = rng.integers(0, CLASSES, size=per_batch)
        pixels = patterns[labels] + rng.normal(0, noise, size=(per_batch, 3, SIDE, SIDE))
        out[name] = (np.clip(np.rint(pixels), 0, 255).astype(np.uint8), labels)
    return out


def write_tarball(path: str | Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """A .tar.gz laid out as the published one, with `batches` (member name -> images, labels);
    written atomically, its folder made if missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_write(str(path)) as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
        for name, (images, labels) in batches.items():
            data = encode_records(images, labels)
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0  # mtime 0: the same bytes from the same seed
            tar.addfile(info, io.BytesIO(data))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", required=True, help="The .tar.gz to write.")
@click.option("--per-batch", type=click.IntRange(min=1), default=200,
              help="Images in each of the 6 batch files.")
@click.option("--seed", type=int, default=0, help="Patterns, labels and noise follow from it.")
@click.option("--noise", type=click.FloatRange(min=0), default=60.0, help="Pixel noise std (0-255 scale).")
def main(out: str, per_batch: int, seed: int, noise: float) -> None:
    """Write a small synthetic CIFAR-10-shaped binary tarball (for demos and tests, not CIFAR-10)."""
    write_tarball(out, sample(per_batch, seed, noise))
    click.echo(f"wrote {out}: {5 * per_batch} train and {per_batch} test images, 10 synthetic classes")


if __name__ == "__main__":
    main()
