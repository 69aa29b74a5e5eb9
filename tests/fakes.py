"""Not tests: stand-ins for the DALI loaders, for tests of the training loop's own logic.

They follow the contract of pipeline.loader.Loader that trainer/train.py relies on: `epoch(e)`
yields epoch e's batches, `len()` is the batches per epoch, `state()` returns a string that a loader
built with `checkpoint=` continues from, and rank r of n gets the r-th slice of the global batch, so one
process with the global batch sees exactly what n processes see together.

At the end, stand-ins one level lower (a DALI pipeline, a CUDA event) for tests of the real Loader.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

import paper

SIZE = paper.CROP_SIZE


def _batch(seed: int, epoch: int, index: int, global_batch: int, classes: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 10_007 + index)
    labels = torch.randint(0, classes, (global_batch,), generator=g)
    # Class-dependent mean so the loss can fall; noise so it is not trivial.
    images = torch.randn(global_batch, 3, SIZE, SIZE, generator=g) + labels.view(-1, 1, 1, 1).float() * 0.5
    return images, labels


class FakeTrainLoader:
    def __init__(self, samples: int, batch_size: int, classes: int, seed: int = 0, shard_id: int = 0,
                 num_shards: int = 1, checkpoint: str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.samples, self.batch_size, self.classes, self.seed = samples, batch_size, classes, seed
        self.dtype = dtype
        self.shard_id, self.num_shards = shard_id, num_shards
        state = json.loads(checkpoint) if checkpoint else {"epoch": 0, "batch": 0}
        self._epoch, self._batch = state["epoch"], state["batch"]

    def __len__(self) -> int:
        return self.samples // (self.batch_size * self.num_shards)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        if epoch != self._epoch:
            self._epoch, self._batch = epoch, 0
        while self._batch < len(self):
            images, labels = _batch(self.seed, self._epoch, self._batch, self.batch_size * self.num_shards,
                                    self.classes)
            self._batch += 1  # before yielding: a checkpoint taken now resumes after this batch
            part = slice(self.shard_id * self.batch_size, (self.shard_id + 1) * self.batch_size)
            yield images[part].to(self.dtype), labels[part]
        self._epoch, self._batch = self._epoch + 1, 0

    def state(self) -> str:
        return json.dumps({"epoch": self._epoch, "batch": self._batch})


def fake_val(samples: int, batch_size: int, classes: int, shard_id: int = 0, num_shards: int = 1,
             ten_crop: bool = False,
             dtype: torch.dtype = torch.float32) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Sample i goes to rank i % num_shards; the last batch is padded and masked."""
    images, labels = _batch(12345, 0, 0, samples, classes)
    images = images.to(dtype)
    mine = list(range(shard_id, samples, num_shards))
    per_rank = -(-samples // num_shards)
    padded = mine + [mine[-1]] * (per_rank - len(mine))  # every rank runs the same number of batches
    for start in range(0, len(padded), batch_size):
        idx = padded[start:start + batch_size]
        valid = torch.tensor([start + j < len(mine) for j in range(len(idx))])
        x = images[idx]
        if ten_crop:
            x = torch.stack([x.flip(-1) if c % 2 else x for c in range(paper.TEN_CROP)], 1)
        yield x, labels[idx], valid


def install(monkeypatch: Any, train_samples: int, dtype: torch.dtype = torch.float32) -> None:
    """Make trainer.train.load_data build the fakes (classes and val size from the manifest), with
    images of `dtype` (float64 for a model made float64 by the test, see tests/test_hybrid.py)."""
    from trainer import startup, train

    def load_data(cfg: Any, world: Any, devices: Any, loader_state: str | None = None) -> Any:
        manifest = startup.check_shards(cfg.shards)
        classes, val_samples = len(manifest["classes"]), manifest["splits"]["val"]["samples"]
        per_rank = cfg.batch_size // world.size
        loader = FakeTrainLoader(train_samples, per_rank, classes, cfg.seed, world.rank, world.size,
                                 loader_state, dtype)

        def val(ten_crop: bool) -> Any:
            return fake_val(val_samples, per_rank, classes, world.rank, world.size, ten_crop, dtype)

        return loader, val

    monkeypatch.setattr(train, "load_data", load_data)


def without_dropout(patch: Any) -> None:
    """Dropout draws different masks for 1x4 and 2x2 samples; switch it off to compare the arithmetic."""
    from trainer import train

    original = train.build_model

    def build(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = original(*args, **kwargs)
        model.dropout.p = 0.0
        return model

    patch.setattr(train, "build_model", build)


def in_float64(patch: Any, train_samples: int) -> None:
    """The trainer's model in float64 (dropout off) fed float64 images by the fake loaders: the
    precision in which two orders of a training run are compared (see tests/tolerance.py)."""
    from trainer import train

    install(patch, train_samples=train_samples, dtype=torch.float64)
    without_dropout(patch)
    original = train.build_model
    patch.setattr(train, "build_model", lambda *a, **kw: original(*a, **kw).to(torch.float64))


def write_params(run: Any, config: dict[str, Any], world_size: int = 1) -> None:
    """A params.json shaped as alexnet-train writes it, for report and compare tests on fake runs."""
    params = {"config": config, "git": "abc123", "world_size": world_size, "devices": ["cpu"],
              "machine": {"cpus": 2, "cpu": "test cpu", "gpus": []},
              "shards": {"train_hash": "f" * 64, "val_hash": "e" * 64, "train_samples": 47,
                         "val_samples": 16, "classes": 4}}
    (run / "params.json").write_text(json.dumps(params))


# --- stand-ins for one DALI pipeline and a CUDA event, for tests of pipeline.loader.Loader itself ---


class TensorList:
    """A DALI TensorList stand-in: `as_tensor()` gives the batch (torch tensors speak DLPack)."""

    def __init__(self, tensor: Tensor) -> None:
        self._tensor = tensor

    def as_tensor(self) -> Tensor:
        return self._tensor


class FakePipeline:
    """The scheduled API of a built DALI pipeline, as the Loader uses it. `outputs()` blocks for
    `produce` seconds: the host waiting for DALI. Batch i of epoch e holds the value 1000 e + i."""

    def __init__(self, epoch: int, batch_size: int, produce: float) -> None:
        self.epoch, self.batch_size, self.produce, self.made = epoch, batch_size, produce, 0

    def schedule_run(self) -> None:
        pass

    def outputs(self, stream: object = None) -> list[TensorList]:
        time.sleep(self.produce)
        value = 1000 * self.epoch + self.made
        self.made += 1
        return [TensorList(torch.full((self.batch_size, 3, 4, 4), float(value))),
                TensorList(torch.full((self.batch_size,), value, dtype=torch.int64))]

    def checkpoint(self) -> bytes:
        return json.dumps({"epoch": self.epoch, "made": self.made}).encode()


def fake_pipeline_loader(batches: int, *, batch_size: int = 2, produce: float = 0.0, device: str = "cpu",
                         overlap_epochs: bool = False, builds: list | None = None) -> Any:
    """A real pipeline.loader.Loader over FakePipelines of `batches` batches per epoch. `builds` gets
    (epoch, thread) for every pipeline built."""
    from pipeline.loader import Identity, Loader

    def build(epoch: int, cpt: bytes | None) -> FakePipeline:
        if builds is not None:
            builds.append((epoch, threading.current_thread()))
        return FakePipeline(epoch, batch_size, produce)

    identity = Identity("train", ("train-000000.tar",), batches * batch_size, 0, batch_size, 0, 1)
    return Loader(build, identity, device=device, device_id=0 if device == "gpu" else None, dtype="float32",
                  channels_last=False, checkpoint=None, diagnose=lambda epoch, batch: None, prefetch=2,
                  overlap_epochs=overlap_epochs)


class BusyGpuEvent:
    """A CUDA event stand-in on a GPU still busy with earlier work: not complete until waited for, and
    `synchronize()` takes `seconds` (the GPU finishing the queued steps)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.done = seconds, False

    def record(self) -> None:
        pass

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        time.sleep(self.seconds)
        self.done = True


def fake_cuda(monkeypatch: Any, sync_seconds: float) -> None:
    """Let the Loader's GPU path run on the CPU: no stream, no device switch, BusyGpuEvent events."""
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", lambda: BusyGpuEvent(sync_seconds))
