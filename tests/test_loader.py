"""`pipeline/loader.py`: how batches leave DALI's memory (module doc there, "Lifetime of GPU batches").

The GPU path copies each batch out of DALI's buffers on torch's stream and keeps the DALI outputs
until an event after the copy has completed. The pieces are checked on the CPU here (the copy
function on real DALI CPU outputs, `Held` with stand-in events); the end-to-end check against a
lagging torch stream needs a GPU (marked `gpu`).
"""

from __future__ import annotations

import threading
import weakref

import pytest
import torch

from paper import CROP_SIZE
from pipeline import PAD_LABEL, train_loader
from pipeline.loader import HELD_BATCHES, Held, dali_views, owned_copies
from tests.fakes import fake_pipeline_loader


class FakeEvent:
    """A CUDA event stand-in: complete once the test says its copy has run."""

    def __init__(self):
        self.done = False
        self.waited = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = True
        self.done = True


class Outputs(list):
    """Weak-referenceable stand-in for a batch's DALI outputs."""


def add(held: Held, event: FakeEvent) -> weakref.ref:
    """Hand `held` a batch's outputs (nothing else refers to them) and return a weak reference."""
    outputs = Outputs()
    held.add(outputs, event)
    return weakref.ref(outputs)


def test_held_outputs_live_until_their_copy_has_run():
    held = Held(limit=2)
    events = [FakeEvent() for _ in range(3)]
    refs = [add(held, events[0]), add(held, events[1])]
    assert len(held) == 2 and all(r() is not None for r in refs)
    assert not any(e.waited for e in events)
    # over the limit: the host waits for the oldest copy, then lets go of its outputs only
    refs.append(add(held, events[2]))
    assert events[0].waited and refs[0]() is None
    assert len(held) == 2 and refs[1]() is not None and refs[2]() is not None
    assert not events[1].waited and not events[2].waited


def test_held_drops_completed_copies_without_waiting_and_drains_on_release():
    held = Held(limit=HELD_BATCHES)
    events = [FakeEvent() for _ in range(3)]
    refs = [add(held, e) for e in events]
    assert len(held) == 3 and all(r() is not None for r in refs)
    events[0].done = events[1].done = True  # torch's stream ran the first two copies
    add(held, FakeEvent())
    assert len(held) == 2 and refs[0]() is None and refs[1]() is None and refs[2]() is not None
    assert not any(e.waited for e in events)
    held.drain()
    assert len(held) == 0 and events[2].waited and refs[2]() is None
    event = FakeEvent()
    last = add(held, event)
    del held  # a loader dropped mid-stream waits for its queued copies first
    assert event.waited and last() is None


# --- epochs: the next one is built ahead, off the training thread -------------------------------


def values(batches) -> list[int]:
    return [int(labels[0]) for _, labels in batches]


def test_next_epoch_is_built_ahead_on_another_thread_with_the_same_batches():
    me = threading.current_thread()
    builds = []
    ahead = fake_pipeline_loader(3, overlap_epochs=True, builds=builds)
    epochs = [values(ahead.epoch(e)) for e in (0, 1, 2)]
    assert epochs == [[0, 1, 2], [1000, 1001, 1002], [2000, 2001, 2002]]
    # epoch 0 on first use; every later one ahead of its turn, on the builder thread
    assert builds[0] == (0, me)
    assert [e for e, _ in builds[1:3]] == [1, 2] and all(t is not me for _, t in builds[1:])
    inline_builds = []
    inline = fake_pipeline_loader(3, overlap_epochs=False, builds=inline_builds)
    assert [values(inline.epoch(e)) for e in (0, 1, 2)] == epochs
    assert inline_builds == [(0, me), (1, me), (2, me)]


def test_an_epoch_out_of_turn_is_built_where_it_is_asked_for():
    me = threading.current_thread()
    builds = []
    loader = fake_pipeline_loader(2, overlap_epochs=True, builds=builds)
    assert values(loader.epoch(0)) == [0, 1]
    assert values(loader.epoch(3)) == [3000, 3001]  # epoch 1 was built ahead, and is dropped
    assert (3, me) in builds and not any(e == 3 and t is not me for e, t in builds)


@pytest.fixture(scope="module")
def dali_cpu_outputs(pipeline_shards):
    """One batch of raw DALI outputs of the CPU train graph in float16, and the pipeline (kept alive)."""
    from pipeline import graph
    from pipeline import train as train_module
    from pipeline.files import discover
    from pipeline.stats import load

    shards = str(pipeline_shards[0])
    look = graph.Look(load(shards), "channel", CROP_SIZE, "float16", True)
    reader = dict(shards=discover(shards, "train"), shard_id=0, num_shards=1, shuffle=False, initial_fill=1,
                  seed=1)
    pipe = train_module._train_pipeline(reader=reader, look=look, device="cpu", crop="random", mirror=True,
                                        lighting="paper01", batch_size=4, num_threads=1, device_id=None,
                                        prefetch_queue_depth=1, seed=1)
    pipe.build()
    return pipe, pipe.run()


def test_copies_do_not_alias_dali_memory_and_bfloat16_is_the_float16_values_cast(dali_cpu_outputs):
    pipe, outputs = dali_cpu_outputs
    views = dali_views(outputs, channels_last=True)
    assert views[0].dtype == torch.float16  # the GPU graph writes this for bfloat16 too (test_pipeline.py)
    expected = (views[0].to(torch.bfloat16), views[1].clone())
    images, labels = owned_copies(outputs, torch.bfloat16, channels_last=True)
    assert images.dtype == torch.bfloat16 and images.shape == (4, 3, CROP_SIZE, CROP_SIZE)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])
    for copy, view in zip((images, labels), views):
        assert copy.untyped_storage().data_ptr() != view.untyped_storage().data_ptr()
    # writing DALI's buffers (as a later batch would) leaves the handed-out batch as it was
    views[0].fill_(7.0)
    views[1].fill_(PAD_LABEL)
    assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])
    fp16, _ = owned_copies(outputs, torch.float16, channels_last=False)
    assert fp16.dtype == torch.float16 and fp16.is_contiguous() and bool((fp16 == 7.0).all())


def test_cpu_batches_held_across_iterations_keep_their_values(pipeline_shards):
    # CPU batches are zero-copy views (module doc): they must stay valid while DALI goes on
    shards = str(pipeline_shards[0])
    kw = dict(batch_size=4, seed=2, device="cpu", num_threads=2, mean="channel")
    held, snapshots = [], []
    for epoch in (0, 1):
        for x, y in train_loader(shards, **kw).epoch(epoch):
            held.append((x, y))
            snapshots.append((x.clone(), y.clone()))
    assert len(held) == 12
    for (x, y), (xs, ys) in zip(held, snapshots):
        assert torch.equal(x, xs) and torch.equal(y, ys)


# --- the GPU path --------------------------------------------------------------------------------

SLEEP_CYCLES = 50_000_000  # torch.cuda._sleep spins this many GPU clocks: ~25-35 ms at 1.4-2 GHz


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_gpu_batches_survive_a_torch_stream_that_lags_behind(pipeline_shards, dtype):
    # Reference: synchronise after every batch, so DALI can never run ahead of torch's stream.
    # Lagging: ~30 ms of GPU sleep is queued on torch's stream before each batch is used, and the
    # batch is dropped at once; the host, and DALI, run many batches ahead of the stream. A loader that
    # hands out views of DALI's buffers lets DALI write later batches into them before the stream
    # reads them (the bug this guards). Same seed: the two runs must hold the very same batches.
    shards = str(pipeline_shards[0])
    kw = dict(batch_size=2, seed=4, dtype=dtype, device="gpu", num_threads=2, mean="channel")
    reference = []
    for epoch in (0, 1):
        for x, y in train_loader(shards, **kw).epoch(epoch):
            torch.cuda.synchronize()
            reference.append((x.cpu(), y.cpu()))
    lagging = []
    loader = train_loader(shards, **kw)
    for epoch in (0, 1):
        for x, y in loader.epoch(epoch):
            torch.cuda._sleep(SLEEP_CYCLES)
            lagging.append((x * 1, y + 0))  # queued behind the sleep, on torch's stream
            del x, y
    torch.cuda.synchronize()
    assert len(lagging) == len(reference) == 2 * len(loader)
    for i, ((x, y), (xr, yr)) in enumerate(zip(lagging, reference)):
        assert torch.equal(y.cpu(), yr), f"batch {i}: labels differ from the synchronised run"
        assert torch.equal(x.cpu(), xr), f"batch {i}: images differ from the synchronised run"
