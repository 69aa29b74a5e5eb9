"""Data parallelism on the CPU: 2 gloo processes (torch.multiprocessing) against 1 process.

With --batch-size as the GLOBAL batch, two ranks of half the batch each must train exactly like one
process on the whole batch (dropout off: its masks are per rank by design), log once, and a job
restarted by torchrun (TORCHELASTIC_RESTART_COUNT > 0) must pick up the checkpoint on every rank.
The runs compared are in float64 (tests/tolerance.py says why): in float32 two DDP steps ended
5.1e-5 apart on fc7's weights on an AMD EPYC, a ReLU near-tie, where an Intel Xeon's kernels agreed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner

from tests import fakes
from tests.tolerance import LOSS_RTOL, forward_rtol
from trainer import checkpoint, distributed, metrics, train
from trainer.cli import main as train_cli
from trainer.config import TrainConfig
from trainer.distributed import free_port
from trainer.model import AlexNet

WORLD = 2


def _worker(rank: int, port: int, cfg: dict[str, Any], env: dict[str, str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env)
    torch.set_num_threads(1)  # two processes on two cores
    fakes.in_float64(SimpleNamespace(setattr=setattr), TRAIN_SAMPLES)
    train.main(TrainConfig.from_dict(cfg))


TRAIN_SAMPLES = 8  # 2 steps of global batch 4
# 2 steps and the final forward, reordered (2 ranks x 2 images vs 1 x 4, gloo's sums, the CPU's
# kernels), bounded from the network's reduction lengths at float64's unit roundoff.
RTOL64 = forward_rtol(AlexNet(num_classes=10, devices=("cpu",)), passes=3, dtype=torch.float64)


def close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """Equal to RTOL64 of the tensor's scale (max |value|): rounding bounds are relative to the sums."""
    assert (got - want).abs().max() <= RTOL64 * want.abs().max(), name


def run_ddp(cfg: TrainConfig, env: dict[str, str] | None = None) -> None:
    mp.spawn(_worker, args=(free_port(), cfg.to_dict(), env or {}), nprocs=WORLD, join=True)


def small(shards: Path, out: Path, **kw: Any) -> TrainConfig:
    base = {"shards": str(shards), "out": str(out), "epochs": 1, "batch_size": 4, "init": "kaiming",
            "devices": ("cpu",), "precision": "fp32", "channels_last": False, "log_every": 1,
            "ten_crop": False, "progress": False}
    return TrainConfig(**{**base, **kw})


def test_ddp_two_processes_equal_one_process_and_restart_resumes(sample_shards: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fakes.in_float64(monkeypatch, TRAIN_SAMPLES)
    # One log line for both steps: the restart falls inside a log interval, whose per-rank partial
    # sums must travel in the checkpoint.
    single = train.main(small(sample_shards, tmp_path / "single", log_every=2))

    ddp = tmp_path / "ddp"
    run_ddp(small(sample_shards, ddp, log_every=2, max_steps=1))  # stops after step 1 with a checkpoint
    assert [p.name for p in checkpoint.complete(ddp)] == ["step-00000001.pt"]
    # torchrun restarts every worker with the same arguments (no --resume): they continue from step 1.
    run_ddp(small(sample_shards, ddp, log_every=2), env={"TORCHELASTIC_RESTART_COUNT": "1"})

    one, two = metrics.read(tmp_path / "single"), metrics.read(ddp)
    assert [r["kind"] for r in two] == ["resume", "train", "epoch"]  # rank 0 alone logs
    loss_one = {r["step"]: r["loss"] for r in one if r["kind"] == "train"}
    loss_two = {r["step"]: r["loss"] for r in two if r["kind"] == "train"}
    assert loss_two.keys() == {2}
    for step in loss_two:
        assert loss_two[step] == pytest.approx(loss_one[step], rel=LOSS_RTOL)
    epoch = two[-1]
    assert epoch["train_loss"] == pytest.approx(single["train_loss"], rel=LOSS_RTOL)  # across the restart
    # Val metrics are sums over both ranks' halves of the 16 images, not averages of averages.
    assert epoch["val_samples"] == single["val_samples"] == 16
    assert epoch["val_top1_err"] == single["val_top1_err"]
    assert epoch["val_loss"] == pytest.approx(single["val_loss"], rel=LOSS_RTOL)
    w1, _ = checkpoint.load_latest(tmp_path / "single")
    w2, _ = checkpoint.load_latest(ddp)
    assert w2["world_size"] == WORLD and len(w2["rng"]) == WORLD
    assert w2["model"].keys() == w1["model"].keys()
    for name, value in w1["model"].items():
        assert w2["model"][name].dtype == value.dtype == torch.float64, name
        close(w2["model"][name], value, name)
    for i, state in w1["optimizer"]["state"].items():
        close(w2["optimizer"]["state"][i]["velocity"], state["velocity"], f"velocity {i}")


def test_the_rounding_model_bounds_a_real_forward_pass() -> None:
    """The error model behind forward_rtol, checked against float64 on this CPU: one float32 forward
    pass of AlexNet stays within the bound (it sits ~100x below it on Intel and AMD alike)."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=10, devices=("cpu",), init="kaiming").eval()
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        y32 = model(x).double()
        y64 = model.double()(x.double())
    assert (y32 - y64).abs().max() / y64.abs().max() <= forward_rtol(model)


def _gloo_threads() -> list[str]:
    names = (Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
    return sorted(n for n in names if "gloo" in n)


def _group(port: int, rank: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init(distributed.World(rank, WORLD, rank, WORLD), "gloo")


def _hooked_ddp_then_leave(rank: int, ports: tuple[int, int], out: str) -> None:
    from trainer.benchmarks.comm import CommCounter

    torch.set_num_threads(1)
    _group(ports[0], rank)  # control: a group that only all-reduced ends with destroy_process_group
    distributed.all_reduce_sum(torch.ones(3))
    plain = len(_gloo_threads())
    distributed.shutdown()
    plain_after = len(_gloo_threads())
    _group(ports[1], rank)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(10, 3))
    CommCounter().register(model)  # a Python comm hook, as alexnet-bench comm's
    for _ in range(3):
        model(torch.ones(2, 10)).sum().backward()
    ddp = len(_gloo_threads())
    del model
    distributed.shutdown()
    Path(out, f"rank{rank}.txt").write_text(f"{plain} {plain_after} {ddp} {len(_gloo_threads())}")
    distributed.leave(0)


def test_a_ddp_models_gloo_group_outlives_shutdown_so_its_workers_leave() -> None:
    """Why `distributed.leave` exists: with torch 2.13, a DDP model keeps the gloo group's threads
    running after destroy_process_group, even once the model is gone, where a group used without DDP
    ends there. If this fails on the DDP part, torch now frees the group, and `leave` can go. Both
    workers exit with code 0 through `leave`, their results already written."""
    import tempfile

    ports = (free_port(), free_port())
    while ports[1] == ports[0]:
        ports = (ports[0], free_port())
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_hooked_ddp_then_leave, args=(ports, out), nprocs=WORLD, join=True)
        counts = [[int(n) for n in Path(out, f"rank{r}.txt").read_text().split()] for r in range(WORLD)]
    for plain, plain_after, ddp, ddp_after in counts:
        assert plain > 0 and plain_after == 0
        assert ddp > 0 and ddp_after == ddp


def test_leave_flushes_its_output_and_exits_with_the_code_given() -> None:
    code = ("import sys; from trainer.distributed import leave; print('written', end=''); "
            "print('noted', end='', file=sys.stderr); leave(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "written", "noted")


@pytest.mark.slow  # ~25 s: torchrun, 2 processes, the real DALI CPU pipeline
def test_torchrun_with_the_pipeline(sample_shards: Path, tmp_path: Path) -> None:
    """47 images over 2 ranks (23 and 24, padded): every image trained on and evaluated once."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
           "-m", "trainer.cli", "--shards", str(sample_shards), "--out", str(run), "--epochs", "1",
           "--batch-size", "8", "--init", "kaiming", "--log-every", "1", "--devices", "cpu",
           "--precision", "fp32", "--no-progress", "--no-ten-crop"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = metrics.read(run)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]  # logged once
    (epoch,) = [r for r in records if r["kind"] == "epoch"]
    assert epoch["val_samples"] == 16
    assert [p.name for p in checkpoint.complete(run)] == ["step-00000006.pt"]


def test_batch_size_must_divide_across_ranks(sample_shards: Path, tmp_path: Path) -> None:
    env = {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3"}
    result = CliRunner().invoke(train_cli, ["--shards", str(sample_shards), "--out", str(tmp_path / "r"),
                                            "--batch-size", "8"], env=env)
    assert result.exit_code == 2
    assert "--batch-size 8 does not divide across 3 processes" in result.output
    assert not (tmp_path / "r").exists()


def test_replica_devices_shift_by_local_rank() -> None:
    world = distributed.World(rank=5, size=8, local_rank=1, local_size=4)
    assert distributed.replica_devices(("cuda:0", "cuda:1"), world) == ("cuda:2", "cuda:3")
    assert distributed.replica_devices(("cuda:0",), world) == ("cuda:1",)
    assert distributed.replica_devices(("cpu",), world) == ("cpu",)


@pytest.mark.slow
@pytest.mark.heavy  # ~1 min on 2 cores: each process compiles the train and eval graphs (inductor, CPU)
def test_ddp_with_compile_and_two_device_replicas(sample_shards: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile under DDP (2 gloo processes), each replica on two logical devices ("cpu,cpu": the
    two-column path, its `_move`s inside the compiled graph): the losses and weights of one eager
    process on one device (the grouped path), in float64."""
    fakes.in_float64(monkeypatch, TRAIN_SAMPLES)
    train.main(small(sample_shards, tmp_path / "single"))
    run_ddp(small(sample_shards, tmp_path / "ddp", compile=True, devices=("cpu", "cpu")))
    one, two = metrics.read(tmp_path / "single"), metrics.read(tmp_path / "ddp")
    loss_one = {r["step"]: r["loss"] for r in one if r["kind"] == "train"}
    loss_two = {r["step"]: r["loss"] for r in two if r["kind"] == "train"}
    assert loss_one.keys() == loss_two.keys() == {1, 2}
    for step in loss_one:
        assert loss_two[step] == pytest.approx(loss_one[step], rel=LOSS_RTOL)
    val_one, val_two = one[-1], two[-1]
    assert val_two["val_samples"] == val_one["val_samples"] == 16
    assert val_two["val_loss"] == pytest.approx(val_one["val_loss"], rel=LOSS_RTOL)
    w1, _ = checkpoint.load_latest(tmp_path / "single")
    w2, _ = checkpoint.load_latest(tmp_path / "ddp")
    for name, value in w1["model"].items():
        close(w2["model"][name], value, name)
