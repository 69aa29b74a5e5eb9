"""`trainer/metrics.py` DataWait: the data-wait meter counts the host's wait for input, never the
GPU's back-pressure.

The real `pipeline.loader.Loader` runs over stand-in DALI pipelines whose `outputs()` sleeps (the
producer) and, for the GPU path, stand-in CUDA events whose `synchronize()` sleeps (a GPU still busy
with earlier steps); the loop sleeps per batch (the consumer). Sleeps never return early, so each
bound below follows from the sleep lengths, and fails a meter stuck at 0 or at 1.
"""

from __future__ import annotations

import time

import pytest

from pipeline.loader import HELD_BATCHES
from tests.fakes import fake_cuda, fake_pipeline_loader
from trainer.metrics import DataWait

BATCHES = 12
STEP = 0.02  # s: one sleep of the consumer, producer or GPU


def consume(batches, seconds: float) -> DataWait:
    wait = DataWait()
    for _ in wait.wrap(batches):
        time.sleep(seconds)
    return wait


def test_slow_consumer_fast_producer_waits_for_no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    # GPU path, events already complete when first asked: input and GPU both keep up. The loop
    # sleeps 12 x 20 ms; the loader's own work per batch is well under a millisecond.
    fake_cuda(monkeypatch, sync_seconds=0.0)
    shares = consume(fake_pipeline_loader(BATCHES, device="gpu").epoch(0), STEP).summary()
    assert shares["data_wait"] < 0.1 and shares["gpu_throttle"] < 0.1


def test_slow_producer_data_wait_is_its_share() -> None:
    # Producer 30 ms a batch, consumer 10 ms: 0.75 of the time goes to waiting. Below 0.5 would need
    # 20 ms of overhead per batch, above 0.95 the 30 ms sleeps overshooting by 160 ms each.
    loader = fake_pipeline_loader(BATCHES, produce=1.5 * STEP)
    shares = consume(loader.epoch(0), 0.5 * STEP).summary()
    assert 0.5 < shares["data_wait"] < 0.95, shares
    assert shares["gpu_throttle"] == 0.0  # no GPU on this path


def test_gpu_back_pressure_is_gpu_throttle_not_data_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # GPU-bound: input is instant and the host loop does nothing, but every batch past HELD_BATCHES
    # waits 20 ms for the GPU to run an earlier copy (Held.add). 8 x 20 ms of the run's wall time go
    # there; the rest is microseconds of loop (plus, in a fresh process, ~10 ms of torch's first
    # calls inside the stand-in's outputs()). Timing the loader's whole next() (the meter before)
    # reported 1.0 here.
    fake_cuda(monkeypatch, sync_seconds=STEP)
    wait = consume(fake_pipeline_loader(BATCHES, device="gpu").epoch(0), 0.0)
    shares = wait.summary()
    assert wait.throttled >= (BATCHES - HELD_BATCHES) * STEP
    assert shares["data_wait"] < 0.25 and shares["gpu_throttle"] > 0.5, shares


def test_interval_shares_restart_at_each_call() -> None:
    loader = fake_pipeline_loader(4, produce=STEP)
    wait = DataWait()
    batches = wait.wrap(loader.epoch(0))
    next(batches)
    first = wait.interval()
    time.sleep(2 * STEP)  # no input asked for: the next interval starts without waiting
    second = wait.interval()
    assert first["data_wait"] > 0.5 and second["data_wait"] == 0.0
    assert wait.summary()["data_wait"] < first["data_wait"]


def test_loaders_without_a_clock_count_their_whole_next() -> None:
    def slow():
        for i in range(3):
            time.sleep(STEP)
            yield i

    assert consume(slow(), 0.0).share() > 0.5
