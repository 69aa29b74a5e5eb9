"""Tolerances for comparing results computed in another order, derived from the arithmetic.

Two runs that do the same arithmetic in another order (gloo's all_reduce of two half-batch
gradients vs one full-batch sum, other oneDNN kernels for batch 2 vs batch 4, another CPU's SIMD
width) differ by rounding alone. For a dot product of length K in a float32 accumulator the rounding
error is at most K*u relative (u = 2^-24), and about sqrt(K)*u when the roundings are independent,
which is what the error model of Higham (Accuracy and Stability of Numerical Algorithms, §2.8,
"rule of thumb") and every measurement here show. The relative errors of the layers of a forward
pass add up, so one pass has a relative error of about u * sum_l sqrt(K_l).

Which comparisons run in which precision (the rule, after two fp32 tests that held on one CPU and
failed on another):
- A forward pass alone is continuous in its inputs (ReLU, max-pooling, LRN, softmax), so two orders
  of a float32 forward pass agree to `forward_rtol(model)` on any CPU: compared in float32.
- Anything through a backward pass or an SGD step is not: a ReLU or a max-pooling window sitting
  within rounding of a tie sends that unit's whole gradient elsewhere, and a float32 near-tie turns
  up on one CPU's kernels and not on another's (an AMD EPYC's oneDNN: 2.4% of conv1's gradient in
  grouped vs two columns; 5.1e-5 on fc7's weights after two DDP steps). Those comparisons run in
  float64 (`dtype=torch.float64` below, u = 2^-53), where such a near-tie does not happen.
"""

from __future__ import annotations

import math

import torch
from torch import nn

UNIT_ROUNDOFF = torch.finfo(torch.float32).eps / 2  # u = 2^-24

# The trainer logs float32 losses whatever the model's dtype (train_step and evaluate cast the
# logits): a few float32 units of roundoff, summed in another order (measured: 1 unit, 8e-8).
LOSS_RTOL = 8 * UNIT_ROUNDOFF


def reduction_lengths(model: nn.Module) -> list[int]:
    """K of every conv and linear layer: the number of products each output sums."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out.append(m.in_channels // m.groups * math.prod(m.kernel_size))
        elif isinstance(m, nn.Linear):
            out.append(m.in_features)
    return out


def forward_rtol(model: nn.Module, passes: int = 1, dtype: torch.dtype = torch.float32) -> float:
    """Relative tolerance for a value computed through `passes` reordered forward passes, each
    contributing u * sum_l sqrt(K_l) (~4.5e-5 for the paper's AlexNet). A layer split in two
    columns is counted once per column: the two halves round independently and both feed the next
    layer, so this over-counts by at most sqrt(2), the only margin taken.

    A loss after S SGD steps needs passes = S + 1: each step's gradient carries the reordered
    rounding of its forward and backward pass (the same layers and K), which perturbs that step's
    change of the loss by the same relative amount to first order, and the final forward adds one.
    In float64 the same bound holds at its unit roundoff, 2^-53.
    """
    return passes * torch.finfo(dtype).eps / 2 * sum(math.sqrt(k) for k in reduction_lengths(model))
