"""Checkpoints: atomic files with a completion marker, the last two kept, damaged ones skipped loudly."""

from __future__ import annotations

import json
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
    with torch.no_grad():  # the one-device model runs grouped kernels: the same sums in another order
        torch.testing.assert_close(one(x), two(x), rtol=1e-5, atol=1e-5 * two(x).abs().max().item())
