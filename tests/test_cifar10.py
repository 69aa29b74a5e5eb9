"""tools/cifar10.py: the binary tarball's records read back exactly, and every bad input refused with
one line naming the file. Tarballs are built here byte by byte, not with the module's own writer."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tools import cifar10
from tools.cifar10 import CifarError

BATCHES = [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)]
TEST = "cifar-10-batches-bin/test_batch.bin"


def record(label: int, index: int) -> bytes:
    """One record, written from the format's description: a label byte, then the R, G and B planes,
    each 32 rows of 32 bytes. Pixel (plane p, row r, column c) = (index * 7 + p * 50 + r * 3 + c) % 256."""
    planes = [bytes((index * 7 + p * 50 + r * 3 + c) % 256 for r in range(32) for c in range(32))
              for p in range(3)]
    return bytes([label]) + b"".join(planes)


def tarball(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def members(per_batch: int = 3) -> dict[str, bytes]:
    """Six batch files; record k of the whole set (train then test) has label k % 10."""
    out, k = {}, 0
    for name in [*BATCHES, TEST]:
        out[name] = b"".join(record(label=(k + i) % 10, index=k + i) for i in range(per_batch))
        k += per_batch
    return out


def test_labels_and_pixel_planes(tmp_path: Path) -> None:
    path = tarball(tmp_path / "c.tar.gz", members())
    images, labels = cifar10.read_split(path, "train")
    assert images.shape == (15, 3, 32, 32) and images.dtype == np.uint8
    assert labels.tolist() == [k % 10 for k in range(15)]  # data_batch_1..5 in order
    for k in (0, 7, 14):
        for p, r, c in ((0, 0, 0), (0, 5, 9), (1, 31, 0), (2, 17, 30)):
            assert images[k, p, r, c] == (k * 7 + p * 50 + r * 3 + c) % 256, (k, p, r, c)
    test_images, test_labels = cifar10.read_split(path, "test")
    assert test_labels.tolist() == [k % 10 for k in range(15, 18)]
    assert test_images[2, 1, 4, 6] == (17 * 7 + 50 + 12 + 6) % 256


def test_an_uncompressed_tar_reads_the_same(tmp_path: Path) -> None:
    gz = cifar10.read_split(tarball(tmp_path / "c.tar.gz", members()), "train")
    plain = cifar10.read_split(tarball(tmp_path / "c.tar", members(), mode="w"), "train")
    assert np.array_equal(gz[0], plain[0]) and np.array_equal(gz[1], plain[1])


def test_the_sample_writer_round_trips(tmp_path: Path) -> None:
    batches = cifar10.sample(per_batch=4, seed=3)
    cifar10.write_tarball(tmp_path / "s.tar.gz", batches)
    images, labels = cifar10.read_split(tmp_path / "s.tar.gz", "train")
    assert np.array_equal(images, np.concatenate([batches[n][0] for n in BATCHES]))
    assert np.array_equal(labels, np.concatenate([batches[n][1] for n in BATCHES]))
    first = batches[BATCHES[0]]
    assert cifar10.encode_records(*first)[:cifar10.RECORD] == bytes([first[1][0]]) + first[0][0].tobytes()
    again = cifar10.sample(per_batch=4, seed=3)
    assert all(np.array_equal(batches[n][0], again[n][0]) for n in batches)  # deterministic in the seed


def test_sample_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(cifar10.main, ["--out", str(tmp_path / "s.tar.gz"), "--per-batch", "2"])
    assert result.exit_code == 0, result.output
    assert len(cifar10.read_split(tmp_path / "s.tar.gz", "test")[1]) == 2


class Payload:
    """What a pickled download could hold: unpickling it creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (tarball, what its one-line error must say)."""
    good = members()
    full = tarball(tmp_path / "full.tar.gz", good).read_bytes()
    (tmp_path / "truncated.tar.gz").write_bytes(full[: len(full) // 2])
    plain = tarball(tmp_path / "plain.tar", good, mode="w").read_bytes()
    (tmp_path / "cut.tar").write_bytes(plain[: 512 + 2000])  # inside data_batch_1's records
    (tmp_path / "noise.tar.gz").write_bytes(bytes(range(256)) * 8)
    wrong = {**good, BATCHES[2]: good[BATCHES[2]] + b"\x00"}
    label = {**good, TEST: bytes([10]) + good[TEST][1:]}
    missing = {k: v for k, v in good.items() if k != TEST}
    pickled = {f"cifar-10-batches-py/data_batch_{i}": pickle.dumps(Payload(tmp_path / "pwned"))
               for i in range(1, 6)}
    return {
        "truncated gz": (tmp_path / "truncated.tar.gz", "truncated or not a tar archive"),
        "truncated tar": (tmp_path / "cut.tar", "truncated"),
        "not a tar": (tmp_path / "noise.tar.gz", "truncated or not a tar archive"),
        "record size": (tarball(tmp_path / "wrong.tar.gz", wrong),
                        f"{BATCHES[2]} is {3 * 3073 + 1} bytes, not a positive multiple of the 3073"),
        "label": (tarball(tmp_path / "label.tar.gz", label), f"{TEST}: record 0 has label 10"),
        "missing member": (tarball(tmp_path / "missing.tar.gz", missing), f"no member {TEST}"),
        "pickled": (tarball(tmp_path / "py.tar.gz", pickled), "pickled \"python version\""),
        "no file": (tmp_path / "absent.tar.gz", "no such file"),
    }


@pytest.mark.parametrize("case", ["truncated gz", "truncated tar", "not a tar", "record size", "label",
                                  "missing member", "pickled", "no file"])
def test_bad_input_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    path, words = bad_inputs(tmp_path)[case]
    with pytest.raises(CifarError) as e:
        cifar10.read_splits(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message
    assert not (tmp_path / "pwned").exists()  # nothing was unpickled
