"""`alexnet-bench comm` (trainer/benchmarks/comm.py): the byte counter against hand-computed payloads on
real gloo collectives, the formula against the table of the hybrid design note (HYBRID-NOTES.md §2), and
the command.

Expected bytes are written out by hand here (ring: all-reduce 2(K-1)/K n s, all-gather and
reduce-scatter (K-1)/K n s, n elements in all), not taken from trainer/benchmarks/comm.py's formula functions.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.multiprocessing as mp
from click.testing import CliRunner
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from trainer import distributed
from trainer.benchmarks import comm
from trainer.cli import bench_main
from trainer.model import AlexNet


def _collectives(rank: int, k: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=k)
    try:
        mesh = init_device_mesh("cpu", (k,))
        counts: dict[str, Any] = {}
        # DTensor's redistributions: its functional collectives (_c10d_functional.*)
        shard = DTensor.from_local(torch.ones(3, 5), mesh, [Shard(0)])  # 3x5 per rank
        partial = DTensor.from_local(torch.ones(4 * k, 7), mesh, [Partial()])
        partial64 = DTensor.from_local(torch.ones(11, dtype=torch.float64), mesh, [Partial()])
        for name, work in {
            "all_gather": lambda: shard.redistribute(mesh, [Replicate()]).to_local(),
            "reduce_scatter": lambda: partial.redistribute(mesh, [Shard(0)]).to_local(),
            "all_reduce_fp64": lambda: partial64.redistribute(mesh, [Replicate()]).to_local(),
            # the differentiable all-gather: the same collective, counted once
            "autograd_all_gather": lambda: funcol.all_gather_tensor_autograd(torch.ones(3, 5), 0, mesh) + 0,
            # process-group collectives (c10d.*)
            "c10d_all_reduce": lambda: dist.all_reduce(torch.ones(13)),
            "c10d_all_gather": lambda: dist.all_gather([torch.empty(2) for _ in range(k)], torch.ones(2)),
            "c10d_broadcast": lambda: dist.broadcast(torch.ones(6), src=0),
        }.items():
            counter = comm.CommCounter()
            with counter:
                work()
            counts[name] = (dict(counter.bytes), dict(counter.calls))
        # DDP: a 10x3 Linear (33 parameters, one bucket), counted at its hook, not twice
        torch.manual_seed(0)
        ddp = nn.parallel.DistributedDataParallel(nn.Linear(10, 3))
        counter = comm.CommCounter()
        counter.register(ddp)
        ddp(torch.ones(2, 10)).sum().backward()  # step 1, the counter not active
        counts["ddp"] = [(dict(counter.bytes), dict(counter.calls), counter.seen_in_hook)]
        for _ in range(2):  # steps 2 and 3, each counted alone
            counter.reset()
            with counter:
                ddp(torch.ones(2, 10)).sum().backward()
            counts["ddp"].append((dict(counter.bytes), dict(counter.calls), counter.seen_in_hook))
        # A collective with no formula raises (on every rank, before it is issued) rather than go uncounted
        try:
            with comm.CommCounter():
                dist.all_to_all_single(torch.empty(k), torch.ones(k))
            counts["unknown"] = "counted"
        except NotImplementedError as e:
            counts["unknown"] = str(e)
        everyone: list[Any] = [None] * k
        dist.all_gather_object(everyone, counts)
        if rank == 0:
            torch.save(everyone, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    distributed.leave()  # DDP with the counter's comm hook: see its docstring (a SIGABRT in CI before)


@pytest.mark.parametrize("k", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_counter_counts_each_collective_at_its_ring_cost(k: int, tmp_path: Path) -> None:
    out = tmp_path / "counts.pt"
    mp.spawn(_collectives, args=(k, distributed.free_port(), str(out)), nprocs=k, join=True)
    everyone = torch.load(out, weights_only=False)
    assert all(counts == everyone[0] for counts in everyone)  # every rank sends the same
    c = everyone[0]
    f = Fraction(k - 1, k)
    assert c["all_gather"] == ({"all_gather": f * 3 * 5 * k * 4}, {"all_gather": 1})  # K pieces of 3x5
    assert c["reduce_scatter"] == ({"reduce_scatter": f * 4 * k * 7 * 4}, {"reduce_scatter": 1})
    assert c["autograd_all_gather"] == c["all_gather"]
    assert c["all_reduce_fp64"] == ({"all_reduce": 2 * f * 11 * 8}, {"all_reduce": 1})
    assert c["c10d_all_reduce"] == ({"all_reduce": 2 * f * 13 * 4}, {"all_reduce": 1})
    assert c["c10d_all_gather"] == ({"all_gather": f * 2 * k * 4}, {"all_gather": 1})
    assert c["c10d_broadcast"] == ({"broadcast": 6 * 4}, {"broadcast": 1})
    inactive, second, third = c["ddp"]
    assert inactive == ({}, {}, 0)
    all_reduce = 2 * f * 33 * 4
    # Step 2 also syncs the bucket layout DDP rebuilt after step 1: why the bench counts step 3
    assert second[0]["all_reduce"] == all_reduce and second[1]["broadcast"] >= 1
    assert third[:2] == ({"all_reduce": all_reduce}, {"all_reduce": 1})
    # The hook's all-reduce reaches the dispatcher too in torch 2.13: set aside there, not counted twice
    assert third[2] in (0, all_reduce)
    assert "alltoall" in c["unknown"]


def test_formula_reproduces_the_hybrid_notes_table() -> None:
    """HYBRID-NOTES.md §2 at 128 images per rank (MB, rounded to 0.1): DDP fp32/bf16, the all-reduce of
    conv + fc8, the conv5 and fc7 boundaries, the hybrid fp32/bf16. Measured (test below, and
    `alexnet-bench comm`): the hybrid sends exactly the notes' layout H, nothing more."""
    sz = comm.sizes(AlexNet(num_classes=1000, devices=("cpu",)))
    conv, fc8 = 2_334_080, 4_097_000
    assert sz == comm.Sizes(params=60_965_224, data_parallel=conv + fc8, features=9216, hidden=4096)
    notes = {2: (243.9, 121.9, 25.7, 9.4, 4.2, 39.4, 19.7),
             4: (365.8, 182.9, 38.6, 28.3, 12.6, 79.5, 39.7),
             8: (426.8, 213.4, 45.0, 66.1, 29.4, 140.4, 70.2),
             16: (457.2, 228.6, 48.2, 141.6, 62.9, 252.7, 126.4)}
    for k, row in notes.items():
        parts = comm.hybrid_parts(sz, k, 128, 4)
        got = (comm.ddp_bytes(sz, k, 4), comm.ddp_bytes(sz, k, 2), parts["all_reduce"], parts["conv5"],
               parts["fc7"], comm.hybrid_bytes(sz, k, 128, 4), comm.hybrid_bytes(sz, k, 128, 2))
        assert [float(g) / 1e6 for g in got] == pytest.approx(row, abs=0.05 + 1e-9), k


def test_comm_help() -> None:
    result = CliRunner().invoke(bench_main, ["comm", "--help"])
    assert result.exit_code == 0, result.output
    for word in ("--nproc", "--per-rank", "--classes", "--json", "2(K-1)/K n s"):
        assert word in result.output


def _fake_measure(counts: dict[str, Fraction]) -> Any:
    """comm.measure returning `counts` (total bytes per mode) for every rank, without processes."""
    sz = comm.sizes(AlexNet(num_classes=10, devices=("cpu",)))

    def measure(mode: str, k: int, per_rank: int, num_classes: int, out: str) -> dict[str, Any]:
        rank = {"bytes": {"all_reduce": counts[mode]}, "calls": {"all_reduce": 1}, "seen_in_hook": 0}
        return {"ranks": [rank] * k, "sizes": sz}

    return sz, measure


def test_comm_prints_the_figures_and_fails_on_a_count_off_the_formula(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    sz, _ = _fake_measure({})
    right = {"ddp": comm.ddp_bytes(sz, 2, 4), "hybrid": comm.hybrid_bytes(sz, 2, 3, 4)}
    args = ["comm", "--nproc", "2", "--per-rank", "3", "--classes", "10", "--json", str(tmp_path / "c.json")]
    monkeypatch.setattr(comm, "measure", _fake_measure(right)[1])
    result = CliRunner().invoke(bench_main, args)
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "c.json").read_text())
    assert figures["modes"]["ddp"]["ratio"] == figures["modes"]["hybrid"]["ratio"] == 1.0
    assert [row["k"] for row in figures["projection"]] == [2, 4, 8, 16, 64]
    assert "machine: " in result.output and "torch " in result.output
    assert f"{float(right['ddp']) / 1e6:.3f}" in result.output

    monkeypatch.setattr(comm, "measure", _fake_measure({**right, "hybrid": right["hybrid"] + 4})[1])
    result = CliRunner().invoke(bench_main, args)
    assert result.exit_code == 1 and "differs from the formula for hybrid" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, pytest.param(4, marks=pytest.mark.heavy)])
def test_one_training_step_sends_the_formulas_bytes(k: int, tmp_path: Path) -> None:
    """The real thing at 1 image per rank and 10 classes: both modes' counts equal the formula exactly,
    with the collectives the notes list (hybrid: 2 all-gathers, 2 reduce-scatters, DDP's all-reduces)."""
    for mode in comm.MODES:
        r = comm.measure(mode, k, 1, 10, str(tmp_path / f"{mode}.pt"))
        want = comm.formula(mode, r["sizes"], k, 1, 4)
        for rank in r["ranks"]:
            assert sum(rank["bytes"].values()) == want, mode
            assert rank["calls"].get("broadcast", 0) == 0  # the steady state: no bucket-layout sync
            assert rank["seen_in_hook"] in (0, rank["bytes"]["all_reduce"])
        calls = r["ranks"][0]["calls"]
        gathers = (calls.get("all_gather", 0), calls.get("reduce_scatter", 0))
        assert gathers == ((2, 2) if mode == "hybrid" else (0, 0))
