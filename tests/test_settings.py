"""`pipeline/settings.py`: the default DALI thread count on a node shared by torchrun's local ranks."""

from __future__ import annotations

import os

import pytest

from pipeline.settings import default_threads


@pytest.mark.parametrize(("cores", "local_world_size", "cpu", "gpu"), [
    (16, None, 16, 8),  # alone: every core on the CPU path, at most 8 threads for a GPU
    (16, "4", 4, 4),
    (16, "8", 2, 2),
    (64, "2", 32, 8),
    (2, "8", 1, 1),  # more ranks than cores: still one thread each
    (16, "0", 16, 8),  # not a rank count: as if alone
    (16, "two", 16, 8),
])
def test_default_threads_divide_the_cores_among_the_local_ranks(monkeypatch: pytest.MonkeyPatch, cores: int,
                                                                local_world_size: str | None, cpu: int,
                                                                gpu: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    assert (default_threads("cpu"), default_threads("gpu")) == (cpu, gpu)
