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

from tests.tolerance import forward_rtol
from trainer import checkpoint
from trainer.model import AlexNet
from trainer.state import unwrap


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
        want = two(x)
        assert (one(x) - want).abs().max() <= forward_rtol(one, passes=2) * want.abs().max()


class FakeGPUs:
    """torch.cuda's RNG functions for `visible` GPUs, each generator state a distinct tensor; a
    device index past `visible` raises as CUDA does ("invalid device ordinal")."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, visible: int) -> None:
        self.visible = visible
        self.states = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(visible)}
        for name in ("device_count", "get_rng_state", "set_rng_state", "get_rng_state_all",
                     "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)

    def _index(self, device: torch.device | str | int) -> int:
        index = device if isinstance(device, int) else (torch.device(device).index or 0)
        if index >= self.visible:
            raise RuntimeError("CUDA error: invalid device ordinal")
        return index

    def device_count(self) -> int:
        return self.visible

    def get_rng_state(self, device: torch.device | str | int = "cuda") -> torch.Tensor:
        return self.states[self._index(device)].clone()

    def set_rng_state(self, state: torch.Tensor, device: torch.device | str | int = "cuda") -> None:
        self.states[self._index(device)] = state.clone()

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [self.get_rng_state(i) for i in range(self.visible)]

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        for i, state in enumerate(states):
            self.set_rng_state(state, i)


def test_rng_state_holds_this_replicas_gpus_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = FakeGPUs(monkeypatch, visible=4)
    saved = checkpoint.rng_state(("cuda:2", "cuda:3"))  # local rank 1 of a two-GPU-replica job
    assert list(saved["cuda"]) == ["cuda:2", "cuda:3"]
    assert [s[0].item() for s in saved["cuda"].values()] == [2, 3]
    assert checkpoint.rng_state(("cpu",))["cuda"] == {}
    checkpoint.save(tmp_path, {"model": {}, "rng": [saved]}, 1, 0, 1)
    loaded, _ = checkpoint.load_latest(tmp_path)  # weights_only accepts the dict of tensors
    gpus.states = {i: torch.zeros(8, dtype=torch.uint8) for i in range(4)}
    checkpoint.set_rng_state(loaded["rng"][0], ("cuda:2", "cuda:3"))
    assert [gpus.states[i][0].item() for i in range(4)] == [0, 0, 2, 3]


def test_mid_epoch_resume_with_fewer_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved by a two-GPU replica, resumed where one GPU is visible: cuda:0 gets its own state, the
    missing cuda:1 one is reported (set_rng_state_all of both states crashed here, issue 8)."""
    two = FakeGPUs(monkeypatch, visible=2)
    saved = checkpoint.rng_state(("cuda:0", "cuda:1"))
    one = FakeGPUs(monkeypatch, visible=1)
    one.states[0] = torch.full((8,), 9, dtype=torch.uint8)
    with pytest.warns(UserWarning, match=r"2 GPU\(s\) \(cuda:0, cuda:1\).*cuda:0: restored 1"):
        checkpoint.set_rng_state(saved, ("cuda:0",))
    assert one.states[0][0].item() == 0 and two.states[1][0].item() == 1


def test_rng_state_moves_with_the_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica saved on cuda:2,cuda:3 and resumed on cuda:0,cuda:1 (a launcher now gives each
    process its own GPUs) continues column by column."""
    FakeGPUs(monkeypatch, visible=4)
    saved = checkpoint.rng_state(("cuda:2", "cuda:3"))
    gpus = FakeGPUs(monkeypatch, visible=2)
    checkpoint.set_rng_state(saved, ("cuda:0", "cuda:1"))
    assert [gpus.states[i][0].item() for i in range(2)] == [2, 3]


def test_old_checkpoints_rng_list_still_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before issue 8 "cuda" was get_rng_state_all(): every visible GPU's state, by index."""
    old = checkpoint.rng_state()
    old["cuda"] = [torch.full((8,), 10 + i, dtype=torch.uint8) for i in range(8)]
    gpus = FakeGPUs(monkeypatch, visible=1)
    checkpoint.set_rng_state(old, ("cuda:0",))
    assert gpus.states[0][0].item() == 10
    old["cuda"] = []  # written where CUDA was never initialised (a CPU run)
    checkpoint.set_rng_state(old, ("cpu",))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_round_trip_and_fewer_gpus_on_a_real_device(tmp_path: Path) -> None:
    saved = checkpoint.rng_state(("cuda:0",))
    first = torch.rand(4, device="cuda:0")
    checkpoint.save(tmp_path, {"model": {}, "rng": [saved]}, 1, 0, 1)
    loaded, _ = checkpoint.load_latest(tmp_path)
    checkpoint.set_rng_state(loaded["rng"][0], ("cuda:0",))
    assert torch.equal(torch.rand(4, device="cuda:0"), first)
    # A two-GPU replica's state where only cuda:0 is used (on a one-GPU box: no crash).
    two = dict(saved, cuda={"cuda:0": saved["cuda"]["cuda:0"], "cuda:1": saved["cuda"]["cuda:0"]})
    with pytest.warns(UserWarning, match="restored 1"):
        checkpoint.set_rng_state(two, ("cuda:0",))
    assert torch.equal(torch.rand(4, device="cuda:0"), first)


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


@pytest.mark.parametrize("kind", ["checkpoint", "weights"])
def test_non_finite_weights_are_never_written(tmp_path: Path, kind: str) -> None:
    """Issue 17 §5: every weights file (a checkpoint, best.pt, final.pt) goes through one write that
    refuses NaN and infinite weights; nothing is left behind, not even a temp file."""
    weights = {"fc.weight": torch.tensor([1.0, float("inf")]), "fc.bias": torch.zeros(2)}
    with pytest.raises(checkpoint.NonFiniteWeights, match=r"non-finite weights \(fc\.weight\)"):
        if kind == "checkpoint":
            checkpoint.save(tmp_path, {"model": weights, "step": 1}, 1, 0, 1)
        else:
            checkpoint.save_weights(tmp_path / checkpoint.BEST, weights)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
