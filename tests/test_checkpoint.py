"""Checkpoints: atomic files with a completion marker, the last two kept, damaged ones skipped loudly."""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import checkpoint
from trainer.model import AlexNet
from trainer.train import unwrap


def state(value: float) -> dict:
    return {"model": {"w": torch.full((4,), value)}, "step": int(value)}


def test_save_writes_marker_and_keeps_last_two(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, state(step), step, epoch=0, batch=step)
    names = sorted(p.name for p in checkpoint.folder(tmp_path).iterdir())
    assert names == ["step-00000002.json", "step-00000002.pt", "step-00000003.json", "step-00000003.pt"]
    meta = json.loads((checkpoint.folder(tmp_path) / "step-00000003.json").read_text())
    assert meta["step"] == 3 and meta["batch"] == 3 and len(meta["sha256"]) == 64
    loaded, path = checkpoint.load_latest(tmp_path)
    assert path.name == "step-00000003.pt" and loaded["model"]["w"][0] == 3
    assert not list(checkpoint.folder(tmp_path).glob(".*tmp*"))  # no temp files left behind


def test_damaged_latest_falls_back_with_warning(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, state(1), 1, 0, 1)
    latest = checkpoint.save(tmp_path, state(2), 2, 0, 2)
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    latest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="sha256 does not match.*resuming from step-00000001.pt"):
        loaded, path = checkpoint.load_latest(tmp_path)
    assert path.name == "step-00000001.pt" and loaded["model"]["w"][0] == 1


def test_unfinished_latest_falls_back_with_warning(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, state(1), 1, 0, 1)
    (checkpoint.folder(tmp_path) / "step-00000002.pt").write_bytes(b"half a zip")  # killed before its marker
    with pytest.warns(UserWarning, match="unfinished write"):
        _, path = checkpoint.load_latest(tmp_path)
    assert path.name == "step-00000001.pt"


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    assert checkpoint.load_latest(tmp_path) is None  # nothing there at all: a fresh run is fine
    path = checkpoint.save(tmp_path, state(1), 1, 0, 1)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint"):
        checkpoint.load_latest(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(path)  # no marker to check against: torch itself refuses the file


def test_rng_state_round_trip() -> None:
    saved = checkpoint.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_rng_state_survives_weights_only_load(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, {"model": {}, "rng": [checkpoint.rng_state()]}, 1, 0, 0)
    loaded, _ = checkpoint.load_latest(tmp_path)
    checkpoint.set_rng_state(loaded["rng"][0])
    a = torch.rand(3)
    checkpoint.set_rng_state(loaded["rng"][0])
    assert torch.equal(a, torch.rand(3))


def test_model_state_is_placement_free(tmp_path: Path) -> None:
    """A model split over two devices (here two CPU 'columns') loads into a one-device model."""
    torch.manual_seed(0)
    two = AlexNet(num_classes=4, devices=("cpu", "cpu"), init="kaiming")

    class Wrapper(torch.nn.Module):  # what DDP and torch.compile look like from outside
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    checkpoint.save(tmp_path, {"model": unwrap(Wrapper(two)).state_dict()}, 1, 0, 0)
    loaded, _ = checkpoint.load_latest(tmp_path)
    assert not any(k.startswith("module.") for k in loaded["model"])
    one = AlexNet(num_classes=4, devices=("cpu",))
    one.load_state_dict(loaded["model"])
    x = torch.randn(2, 3, 224, 224)
    two.eval(), one.eval()
    assert torch.equal(two(x), one(x))


def test_failed_write_removes_its_temp_file_and_keeps_the_previous(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk in the middle of torch.save, or while writing the marker: one CheckpointWriteError
    naming the file, the errno text and the checkpoint still intact; nothing partial left behind."""
    checkpoint.save(tmp_path, state(1), 1, 0, 1)
    real_save = torch.save

    def full_disk(obj: object, f: object, *a: object, **k: object) -> None:
        f.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(checkpoint.CheckpointWriteError,
                       match=r"step-00000002.pt: could not write the checkpoint \(No space left on device\); "
                             r"step-00000001.pt is intact"):
        checkpoint.save(tmp_path, state(2), 2, 0, 2)
    monkeypatch.setattr(torch, "save", real_save)

    def full_disk_json(url: str, obj: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.atomic, "write_json", full_disk_json)
    with pytest.raises(checkpoint.CheckpointWriteError, match="step-00000001.pt is intact"):
        checkpoint.save(tmp_path, state(3), 3, 0, 3)
    assert sorted(p.name for p in checkpoint.folder(tmp_path).iterdir()) == ["step-00000001.json",
                                                                            "step-00000001.pt"]
    loaded, path = checkpoint.load_latest(tmp_path)
    assert path.name == "step-00000001.pt" and loaded["model"]["w"][0] == 1


def test_remove_temp_files_takes_only_temp_files(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, state(1), 1, 0, 1)
    temps = [checkpoint.folder(tmp_path) / ".step-00000002.pt.tmp-77-0123abcd",
             tmp_path / ".metrics.jsonl.tmp-5-deadbeef"]
    for p in temps:
        p.write_bytes(b"half")
    (tmp_path / "notes.tmp-1-ab").write_text("not ours")  # not hidden: not a tools.atomic temp name
    assert sorted(checkpoint.remove_temp_files(tmp_path)) == sorted(temps)
    assert not any(p.exists() for p in temps) and (tmp_path / "notes.tmp-1-ab").exists()
    assert checkpoint.load_latest(tmp_path)[1].name == "step-00000001.pt"
