"""The SGD step: what the training loop runs and `alexnet-bench` times.

Apart from the loop (trainer/train.py) so that the benchmarks (trainer/benchmarks/) measure the very
same step without importing the run.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.loader import PAD_LABEL


def to_device(images: Tensor, labels: Tensor, device: torch.device,
              channels_last: bool) -> tuple[Tensor, Tensor]:
    if device.type == "cuda" and images.device.type == "cpu":
        images, labels = images.pin_memory(), labels.pin_memory()  # pinned: the copy can be asynchronous
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True).long()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
               autocast: Callable[[torch.device], AbstractContextManager]) -> Tensor:
    """One SGD step; returns [loss sum, real samples, top-1 hits] on the device (no host sync). The
    hits are those of the training forward pass (dropout and augmentation on), as the field logs them.

    Padding (label PAD_LABEL) adds nothing: the loss is the sum over real samples divided by the
    nominal batch, so with n processes DDP's gradient average equals one process's on the global batch.
    """
    with autocast(labels.device):
        logits = model(images)
    loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=PAD_LABEL, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    (loss_sum / labels.shape[0]).backward()
    optimizer.step()
    hits = (logits.detach().argmax(1) == labels).sum()  # PAD_LABEL (-1) never equals a class
    return torch.stack([loss_sum.detach(), (labels != PAD_LABEL).sum(), hits]).double()
