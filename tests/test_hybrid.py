"""The 2014 hybrid scheme (trainer/hybrid.py) on the CPU: K gloo processes against one process.

One SGD step of the real AlexNet (dropout off: its masks are per rank by design) on the same global
batch: the K ranks' loss, gradients and updated weights must be one process's, for both SGD rules,
and the checkpoint layout (names, momentum) must be the one-device AlexNet's.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.tolerance import forward_rtol
from trainer import hybrid, optim
from trainer.model import AlexNet

PER_RANK = 2
CLASSES = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def net(dtype: torch.dtype = torch.float32, norm: str = "lrn") -> AlexNet:
    torch.manual_seed(0)
    model = AlexNet(num_classes=CLASSES, devices=("cpu",), init="kaiming", dropout=0.0, norm=norm)
    return model.to(dtype)


def batch(k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(k * PER_RANK, 3, 224, 224, generator=g).to(dtype)
    return images, torch.randint(0, CLASSES, (k * PER_RANK,), generator=g)


def one_step(model: torch.nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor,
             labels: torch.Tensor) -> float:
    """train.train_step's arithmetic: the loss is the mean over this process's images."""
    loss = F.cross_entropy(model(images), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def single(k: int, sgd: str, dtype: torch.dtype) -> dict[str, Any]:
    model = net(dtype)
    opt = optim.make(sgd, model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = batch(k, dtype)
    loss = one_step(model, opt, images, labels)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return {"loss": loss, "grads": grads, "weights": {n: t.clone() for n, t in model.state_dict().items()},
            "optimizer": opt.state_dict()}


def _rank(rank: int, k: int, port: int, sgd: str, dtype: torch.dtype, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=k)
    try:
        device = torch.device("cpu")
        model = hybrid.parallelize(net(dtype), hybrid.mesh(k, device), device)
        inner = hybrid.hybrid_of(model)
        opt = optim.make(sgd, model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        images, labels = batch(k, dtype)
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        loss = one_step(model, opt, images[mine], labels[mine])
        losses = [None] * k
        dist.all_gather_object(losses, loss)
        grads = {}
        for name, p in inner.named_parameters():
            full = hybrid._full(p.grad)
            grads.update({part: g.clone() for part, g in hybrid._split(inner, name, full)})
        weights = hybrid.full_state_dict(inner)
        state = hybrid.full_optimizer_state(opt, inner)
        if rank == 0:
            torch.save({"loss": sum(losses) / k, "grads": grads, "weights": weights, "optimizer": state}, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def hybrid_step(k: int, sgd: str, dtype: torch.dtype, tmp: Path) -> dict[str, Any]:
    out = tmp / "rank0.pt"
    mp.spawn(_rank, args=(k, free_port(), sgd, dtype, str(out)), nprocs=k, join=True)
    return torch.load(out)


@pytest.mark.parametrize(("k", "sgd", "dtype"), [
    (2, "paper", torch.float32),
    (2, "torch", torch.float64),
    pytest.param(4, "paper", torch.float32, marks=pytest.mark.slow),
    pytest.param(4, "paper", torch.float64, marks=pytest.mark.slow),
])
def test_hybrid_step_equals_one_process_on_the_global_batch(k: int, sgd: str, dtype: torch.dtype,
                                                           tmp_path: Path) -> None:
    want, got = single(k, sgd, dtype), hybrid_step(k, sgd, dtype, tmp_path)
    # fp32: the same sums in another order (two half batches, the split fc6/fc7, gloo), bounded from
    # the network's reduction lengths (tests/tolerance.py); fp64: the same at 2^-53.
    rtol = forward_rtol(net(), passes=2) * (2.0 ** -29 if dtype == torch.float64 else 1.0)
    assert got["loss"] == pytest.approx(want["loss"], rel=rtol)
    assert got["grads"].keys() == want["grads"].keys()  # today's names: fc6.0.weight, fc6.1.weight, ...
    for name, g in want["grads"].items():
        # A missing or doubled division by K would show as exactly K (or 1/K) on fc6/fc7.
        scale = g.abs().max()
        assert (got["grads"][name] - g).abs().max() <= rtol * scale, name
    assert got["weights"].keys() == want["weights"].keys()
    for name, w in want["weights"].items():
        torch.testing.assert_close(got["weights"][name], w, rtol=rtol, atol=rtol * 1e-2, msg=name)
    # The momentum in the one-device layout: same groups, same parameter order, same values.
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]
    key = "velocity" if sgd == "paper" else "momentum_buffer"
    for i, s in want["optimizer"]["state"].items():
        torch.testing.assert_close(got["optimizer"]["state"][i][key], s[key], rtol=rtol, atol=rtol * 1e-2)
