"""Krizhevsky's 2014 hybrid parallelism ("One weird trick for parallelizing convolutional neural
networks", arXiv 1404.5997, variant (a)) on PyTorch's own engine.

    torchrun --nproc-per-node 8 -m trainer.cli --shards shards/ --parallel hybrid

The convolutions hold ~4% of the weights and do ~90% of the work, the fully-connected layers the
reverse. So with K processes (one device each):

- the conv trunk (conv1-conv5) and fc8 are data-parallel: a full copy on every rank, gradients
  averaged by DistributedDataParallel, which overlaps its bucketed all-reduces with the backward;
- fc6 and fc7 are split across all K ranks over the whole global batch: every rank sends its pool5
  features to all others (fc6 is `ColwiseParallel` with batch-sharded input: an all-gather of the
  features), each rank computes 4096/K of fc6's units for all K*B images, and fc7 is
  `RowwiseParallel` whose partial sums are reduce-scattered back to the ranks that own the images,
  which apply fc8 and the loss to their own B images. Backward mirrors it (all-gather of fc7's
  output gradient, reduce-scatter of the feature gradient). torch.distributed.tensor (DTensor) does
  all of this; there is no hand-written communication here.

The network is the paper's two-column AlexNet as `AlexNet(devices=(one,))` runs it: grouped conv2,
conv4 and conv5, and fc6/fc7 as the two columns' halves concatenated in column order (column 0's
units first). A merged layer computes exactly what `forward_grouped` computes (the same weights
concatenated the same way), so a hybrid run's numbers compare with every other placement.

Gradient scale. Each rank's loss is the mean over its B images, and DDP averages, so the trunk and
fc8 get the gradient of the mean over all K*B images. fc6 and fc7 see every rank's images: their
gradient is the SUM of the K ranks' losses' gradients, K times the global mean's, so a hook divides
it by K as it is accumulated.

Checkpoints keep today's parameter names: `full_state_dict` gathers the shards and splits the merged
layers back into `fc6.0`/`fc6.1` (all ranks call it: it is a collective); a checkpoint loads into
the plain AlexNet before `parallelize` splits it. The optimizer state (momentum) moves the same way
(`full_optimizer_state`, `load_optimizer_state`), so a checkpoint moves between one device, two
columns, DDP and the hybrid at any K.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from trainer.model import AlexNet

SPLIT = ("fc6", "fc7")  # the tensor-parallel layers; everything else is data-parallel


class HybridAlexNet(nn.Module):
    """A one-device AlexNet with fc6 and fc7 each merged into one full-width Linear (column 0's units
    first), ready to be split across ranks by `parallelize`. Parameter names are AlexNet's, except
    `fc6.weight`/`fc6.bias` for `fc6.0.*`, `fc6.1.*` (and fc7 likewise)."""

    def __init__(self, net: AlexNet) -> None:
        super().__init__()
        if not net.grouped:
            raise ValueError("the hybrid scheme runs one device per process; got a two-device AlexNet")
        self.columns = net.columns
        # AlexNet's parameter names in its order: the checkpoint's (and optimizer state's) layout.
        self.column_names = [n for n, _ in net.named_parameters()]
        for name, child in net.named_children():
            self.add_module(name, _merged(child) if name in SPLIT else child)
        # The trunk's forward is AlexNet's, on these very modules; kept out of the module tree (a
        # list) so its parameters are not registered twice.
        self._net = [net]

    def forward(self, x: Tensor) -> Tensor:
        net = self._net[0]
        x = net.features_grouped(x)  # conv1-conv5, and conv6 when the net has it
        x = self.dropout(net.act(self.fc6(x)))  # the net's own non-linearity (--activation)
        x = self.dropout(net.act(self.fc7(x)))
        return self.fc8(x)

    def column_parts(self, name: str) -> list[str]:
        """`fc6.weight` -> [`fc6.0.weight`, `fc6.1.weight`] (one per column); other names -> [name]."""
        layer, leaf = name.split(".", 1)
        return [f"{layer}.{c}.{leaf}" for c in range(self.columns)] if layer in SPLIT else [name]


def _merged(columns: nn.ModuleList) -> nn.Linear:
    first = columns[0]
    out = sum(layer.out_features for layer in columns)
    merged = nn.Linear(first.in_features, out, device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        merged.weight.copy_(torch.cat([layer.weight for layer in columns]))
        merged.bias.copy_(torch.cat([layer.bias for layer in columns]))
    return merged


def mesh(world_size: int, device: torch.device) -> DeviceMesh:
    """One dimension over all ranks: the same ranks are the conv data-parallel group and the FC
    tensor-parallel group (the 2014 scheme; not a 2-D data x tensor mesh)."""
    return init_device_mesh(device.type, (world_size,))


def parallelize(net: AlexNet, device_mesh: DeviceMesh, device: torch.device) -> nn.Module:
    """The hybrid model of `net` (weights equal on every rank, e.g. from one seed or one checkpoint):
    fc6/fc7 split across `device_mesh`, the rest wrapped in DistributedDataParallel."""
    model = HybridAlexNet(net)
    k = device_mesh.size()
    parallelize_module(model, device_mesh, {
        # batch-sharded features in -> all-gathered; each rank keeps 4096/K output units for all images
        "fc6": ColwiseParallel(input_layouts=Shard(0)),
        # its 4096/K input units in -> partial sums reduce-scattered back to each rank's own images
        "fc7": RowwiseParallel(output_layouts=Shard(0)),
    })
    ignored = []
    for layer in SPLIT:
        for leaf, p in getattr(model, layer).named_parameters():
            ignored.append(f"{layer}.{leaf}")
            p.register_post_accumulate_grad_hook(_mean_over(k))
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None)


def _mean_over(k: int) -> Callable[[Tensor], None]:
    def hook(param: Tensor) -> None:
        param.grad.div_(k)  # the sum over the K ranks' losses -> the global batch's mean (module doc)

    return hook


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def _split(model: HybridAlexNet, name: str, full: Tensor) -> Iterator[tuple[str, Tensor]]:
    parts = model.column_parts(name)
    yield from zip(parts, full.chunk(len(parts), dim=0), strict=True)


def full_state_dict(model: HybridAlexNet) -> dict[str, Tensor]:
    """AlexNet's state dict (today's names, full tensors) on every rank; a collective."""
    out: dict[str, Tensor] = {}
    for name, t in model.state_dict().items():
        for part, value in _split(model, name, _full(t).detach()):
            out[part] = value.clone()
    return out


def _local(full: Tensor, like: Tensor) -> Tensor:
    """`full` laid out as the parameter `like` (this rank's shard if it is a DTensor)."""
    if isinstance(like, DTensor):
        return distribute_tensor(full.to(like.device), like.device_mesh, like.placements)
    return full.to(like.device)


def _param_names(model: HybridAlexNet) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _group_names(model: HybridAlexNet, group: dict[str, Any]) -> list[str]:
    """A param group's parameters as AlexNet names, in AlexNet's order (how an AlexNet optimizer with
    the same grouping lists them)."""
    names = _param_names(model)
    mine = {part for p in group["params"] for part in model.column_parts(names[id(p)])}
    return [n for n in model.column_names if n in mine]


def full_optimizer_state(optimizer: torch.optim.Optimizer, model: HybridAlexNet) -> dict[str, Any]:
    """The optimizer's state dict as an optimizer of the one-device AlexNet with the same param
    groups would have it (full tensors, AlexNet's parameter order); a collective on every rank."""
    names = _param_names(model)
    by_name: dict[str, dict[str, Any]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            columns = model.column_parts(names[id(p)])
            for part in columns:
                by_name.setdefault(part, {})
            for key, value in state.items():
                if isinstance(value, Tensor) and value.dim() > 0:
                    for part, piece in _split(model, names[id(p)], _full(value).detach()):
                        by_name[part][key] = piece.clone()
                else:
                    for part in columns:
                        by_name[part][key] = value
    groups, state_out, index = [], {}, 0
    for group in optimizer.param_groups:
        ordered = _group_names(model, group)
        ids = list(range(index, index + len(ordered)))
        index += len(ordered)
        for i, n in zip(ids, ordered, strict=True):
            if by_name[n]:
                state_out[i] = by_name[n]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
    return {"state": state_out, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: HybridAlexNet,
                         saved: dict[str, Any]) -> None:
    """Load a one-device AlexNet optimizer state dict (`full_optimizer_state`'s layout, or any
    placement's checkpoint) into the hybrid model's optimizer."""
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(f"the checkpoint's optimizer has {len(saved['param_groups'])} param groups, "
                         f"this one {len(optimizer.param_groups)}")
    names = _param_names(model)
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=True):
        ordered = _group_names(model, group)
        if len(ordered) != len(saved_group["params"]):
            raise ValueError(f"the checkpoint's optimizer group holds {len(saved_group['params'])} "
                             f"parameters, this model's {len(ordered)}")
        columns = {n: saved["state"].get(i, {}) for n, i in zip(ordered, saved_group["params"], strict=True)}
        for key, value in saved_group.items():
            if key != "params":
                group[key] = value
        for p in group["params"]:
            name = names[id(p)]
            parts = [columns[n] for n in model.column_parts(name)]
            if not parts[0]:
                optimizer.state.pop(p, None)
                continue
            state = {}
            for key, value in parts[0].items():
                if isinstance(value, Tensor) and value.dim() > 0:
                    full = torch.cat([part[key] for part in parts]).to(dtype=p.dtype)
                    state[key] = _local(full, p)
                else:
                    state[key] = value
            optimizer.state[p] = state
