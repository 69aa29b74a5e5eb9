"""torch.hub entry: the paper's AlexNet (trainer/model.py), with weights from a path or a URL.

    model = torch.hub.load("<owner>/alexnet-repro", "alexnet", weights="https://.../best.safetensors")
    model = torch.hub.load(".", "alexnet", source="local", weights="runs/paper/best.safetensors").eval()
    model = torch.hub.load(".", "alexnet", source="local", num_classes=10, norm="none")  # untrained

The network is the one-device form: both columns as grouped kernels on `device` (the same
parameters, names and function as the two-GPU form). A .safetensors file written by alexnet-train
names its class count and switches (trainer/weightfile.py): those build the network, and an argument
that contradicts them is refused rather than silently ignored. A .pt file (best.pt, final.pt) is a
bare state dict, so the arguments must match the run that wrote it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

dependencies = ["torch"]  # and the safetensors package for a .safetensors file, imported only then


def _local(weights: str) -> str:
    """A path for `weights`: itself, or a URL downloaded once into torch.hub's cache (as
    load_state_dict_from_url does for a .pt)."""
    from urllib.parse import urlparse

    import torch

    if "://" not in weights:
        return weights
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, os.path.basename(urlparse(weights).path))
    if not os.path.exists(path):
        torch.hub.download_url_to_file(weights, path)  # temp file, then a rename: never half a file
    return path


def alexnet(weights: str | os.PathLike | None = None, num_classes: int = 1000, device: str = "cpu",
            **switches: Any) -> nn.Module:
    """The paper's AlexNet (Krizhevsky et al. 2012) on `device`, with `weights` loaded if given.

    weights: a local path or a URL to a .safetensors file or a .pt state dict (best.pt, final.pt).
    num_classes: fc8's outputs; a .safetensors file with metadata must agree.
    switches: trainer.model.AlexNet's keyword arguments (lrn_variant, norm, pool, columns, dropout,
        activation, conv6, init); their defaults are the paper's network.
    """
    import torch

    from trainer.model import AlexNet  # needs torch alone

    state = None
    weights = None if weights is None else str(weights)  # a pathlib.Path too
    if weights is not None and weights.endswith(".safetensors"):
        from trainer import weightfile  # needs the safetensors package (and numpy)

        loaded = weightfile.load(_local(weights))
        for name, value in [("num_classes", loaded.num_classes), *loaded.switches.items()]:
            given = num_classes if name == "num_classes" else switches.get(name, value)
            if given != value:
                raise ValueError(f"{weights} holds an AlexNet with {name}={value!r}, not {given!r}: "
                                 f"pass {name}={value!r}")
        switches = {**loaded.switches, **switches}
        state = loaded.state
    elif weights is not None:
        if "://" in weights:
            state = torch.hub.load_state_dict_from_url(weights, map_location="cpu", weights_only=True)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state.get("model"), dict):  # an alexnet-train checkpoint (step-*.pt)
            state = state["model"]
    model = AlexNet(num_classes=num_classes, devices=(device,), **switches)
    if state is not None:
        model.load_state_dict(state)
    return model
