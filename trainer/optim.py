"""§5's update rule, exactly:

    v <- 0.9 v - 0.0005 * eps * w - eps * <dL/dw>
    w <- w + v

torch.optim.SGD keeps the learning rate eps outside the velocity (v <- 0.9 v + g + 0.0005 w;
w <- w - eps v). The two take identical steps while eps is constant, but after each of §5's lr
drops PyTorch applies the velocity accumulated at the old rate at the new one (a 10x smaller first
step), where the paper's velocity still carries the old rate and decays it over ~10 steps.

A two-GPU replica holds parameters on two devices. A foreach kernel takes tensors of one device
and dtype (otherwise PyTorch falls back to one kernel per tensor), so each update runs once per
(device, dtype). The grouping happens in `step`, not in the param groups: param groups by device
would make the optimizer's state dict depend on the placement, and a checkpoint could no longer
move between two GPUs, one GPU and the CPU. torch.optim.SGD groups the same way inside its foreach
path (torch/optim/sgd.py, _multi_tensor_sgd), which it takes by default when every parameter is
on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor
from torch.optim import Optimizer

SGD_VARIANTS = ("paper", "torch")


def by_device(params: list[Tensor]) -> Iterator[list[Tensor]]:
    """`params` split by (device, dtype, tensor type), each part in the original order. The type: a
    foreach kernel refuses a list mixing torch.Tensor and DTensor (the hybrid scheme's fc6/fc7,
    trainer/hybrid.py), while one of DTensors runs on their local shards."""
    parts: dict[tuple[torch.device, torch.dtype, type], list[Tensor]] = {}
    for p in params:
        parts.setdefault((p.device, p.dtype, type(p)), []).append(p)
    yield from parts.values()


class PaperSGD(Optimizer):
    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float, weight_decay: float) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - the Optimizer.step signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for params in by_device([p for p in group["params"] if p.grad is not None]):
                self._update(params, group)
        return loss

    def _update(self, params: list[Tensor], group: dict) -> None:
        """§5's rule for `params` of one device and dtype: one kernel per operation for all of them."""
        velocity = []
        for p in params:
            state = self.state[p]
            if "velocity" not in state:
                state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            velocity.append(state["velocity"])
        lr = group["lr"]
        torch._foreach_mul_(velocity, group["momentum"])
        torch._foreach_add_(velocity, params, alpha=-group["weight_decay"] * lr)
        torch._foreach_add_(velocity, [p.grad for p in params], alpha=-lr)
        torch._foreach_add_(params, velocity)


def make(variant: str, params: Iterable[Tensor] | Iterable[dict], lr: float, momentum: float,
         weight_decay: float) -> Optimizer:
    if variant == "paper":
        return PaperSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if variant == "torch":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"sgd must be one of {SGD_VARIANTS}, got {variant!r}")
