"""`alexnet-figure1`: the paper's Figure 1 (§3.1), ReLU against tanh on CIFAR-10.

    alexnet-figure1 --cifar10 cifar-10-binary.tar.gz --out runs/figure1                # 40 epochs, 4 lrs each
    alexnet-figure1 --cifar10 cifar-10-binary.tar.gz --out runs/figure1 --lrs 0.01,0.03 --device cuda
    alexnet-figure1 --cifar10 sample.tar.gz --out out/fig1 --epochs 6 --limit 1000     # a tiny run

The paper: "A four-layer convolutional neural network with ReLUs (solid line) reaches a 25% training
error rate on CIFAR-10 six times faster than an equivalent network with tanh neurons (dashed line).
The learning rates for each network were chosen independently to make training as fast as possible.
No regularization of any kind was employed."

So: the same net (`FourLayerNet`) with each activation, trained at every learning rate of `--lrs`
from the same initial weights on the same batches; each activation's best rate is the one that
reaches 25% training error in the fewest epochs (ties: the lower final training error, then the
lower error at the crossing; a run whose loss diverged is never best). No weight decay, no dropout,
no augmentation. Written into `--out`: `figure1.png` (training error per epoch of both best runs,
the 25% line, the ratio of the epochs they needed), `figure1.json` (every run's curve, the best of
each, epochs to 25% or null, the ratio) and `runs/<activation>-lr<lr>.json`, one per run, so that a
rerun with the same settings trains only what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

import paper
from tools import atomic, version
from tools.cifar10 import CLASSES, SIDE, CifarError, read_splits
from trainer.model import ACTIVATIONS

FIGURE_PNG, FIGURE_JSON, RUNS = "figure1.png", "figure1.json", "runs"
EPOCHS = 40  # Figure 1's x axis ends near 35 epochs, where tanh crosses 25%
LRS = (0.003, 0.01, 0.03, 0.1)  # the sweep: half-decades around cuda-convnet's CIFAR-10 rates
BATCH_SIZE = 128  # cuda-convnet's CIFAR-10 minibatch
MOMENTUM = 0.9  # as §5; the paper gives none for Figure 1
DEVICES = ("cpu", "cuda")


class Figure1Error(Exception):
    """A bad setting or input; the message is one line."""


@dataclass(frozen=True)
class Figure1Config:
    cifar10: str  # the binary tarball (cifar-10-binary.tar.gz)
    out: str  # folder for figure1.png, figure1.json and runs/
    epochs: int = EPOCHS
    lrs: tuple[float, ...] = LRS
    batch_size: int = BATCH_SIZE
    momentum: float = MOMENTUM
    seed: int = 0  # initial weights and every epoch's batch order
    limit: int = 0  # use only the first N training (and test) images; 0: all (for tiny runs)
    device: str = ""  # "cpu" or "cuda"; "": cuda when present
    progress: bool = True

    def check(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise Figure1Error(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.limit < 0:
            raise Figure1Error(f"--limit must be >= 0, got {self.limit}")
        if not self.lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise Figure1Error(f"--lrs must be positive learning rates, got {','.join(map(str, self.lrs))}")
        if len(set(self.lrs)) != len(self.lrs):
            raise Figure1Error(f"--lrs names a rate twice: {','.join(map(str, self.lrs))}")
        if not 0 <= self.momentum < 1:
            raise Figure1Error(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.device not in ("", *DEVICES):
            raise Figure1Error(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise Figure1Error("--device cuda: no CUDA device is visible")

    def run_key(self) -> dict[str, Any]:
        """What makes one run's curve: a cached run is reused only if all of these match."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("out", "lrs", "progress")}


class FourLayerNet(nn.Module):
    """Figure 1's "four-layer convolutional neural network": three 5x5 conv layers and one
    fully-connected layer, the shape of cuda-convnet's CIFAR-10 net layers-18pct (Krizhevsky's own
    four-layer CIFAR-10 net of the time, ~18% test error): 32, 32 and 64 kernels, each followed by
    the activation and a 3x3 stride-2 pooling (max after conv1, average after conv2 and conv3, as
    there), 32 -> 16 -> 8 -> 4 pixels, then 64 * 4 * 4 = 1024 inputs to a 10-way linear layer.
    layers-18pct's response normalisation is left out: it is §3.3's separate ablation, and with
    tanh it would normalise another distribution, a second difference between the two nets.
    89,578 parameters.

    Init: weights N(0, 1/fan_in) (LeCun), biases 0, the same draw for both activations, so the two
    nets differ only in the non-linearity.
    """

    def __init__(self, activation: str = "relu") -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        # ceil_mode: cuda-convnet's pooling covers the border (outputsX 16 from 32 with 3x3 stride 2)
        self.max_pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avg_pool = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.fc = nn.Linear(64 * (SIDE // 8) ** 2, CLASSES)
        for layer in (self.conv1, self.conv2, self.conv3, self.fc):
            nn.init.normal_(layer.weight, 0.0, 1 / math.sqrt(layer.weight[0].numel()))
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.max_pool(self.act(self.conv1(x)))
        x = self.avg_pool(self.act(self.conv2(x)))
        x = self.avg_pool(self.act(self.conv3(x)))
        return self.fc(torch.flatten(x, 1))


def load_data(cfg: Figure1Config, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train and test images as float tensors on `device`, minus the training set's mean image (§2's
    only preprocessing) and divided by the training pixels' std (one number) so both nets start at
    unit-scale inputs; labels as int64."""
    splits = read_splits(cfg.cifar10)  # every member checked (CifarError) before any training
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    if cfg.limit:
        train_x, train_y, test_x, test_y = (a[:cfg.limit] for a in (train_x, train_y, test_x, test_y))
    train_f = train_x.astype(np.float32)
    mean = train_f.mean(axis=0)
    std = float((train_f - mean).std()) or 1.0  # a constant image set: leave the scale alone

    def tensor(images: np.ndarray) -> Tensor:
        return torch.from_numpy((images.astype(np.float32) - mean) / std).to(device)

    return (tensor(train_x), torch.from_numpy(train_y).to(device), tensor(test_x),
            torch.from_numpy(test_y).to(device))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The batch order of an epoch: a pure function of (seed, epoch), the same for every run."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def epochs_to(errors: Sequence[float], target: float = paper.FIGURE1_TARGET_ERR) -> int | None:
    """The first epoch (1-based) whose training error is at or below `target`; None if none is."""
    return next((i + 1 for i, e in enumerate(errors) if e <= target), None)


def train_run(activation: str, lr: float, cfg: Figure1Config, data: tuple[Tensor, Tensor, Tensor, Tensor],
              step: Callable[[dict[str, Any]], None] = lambda _: None) -> dict[str, Any]:
    """One net trained for cfg.epochs at `lr`: its training error and loss per epoch and final test
    error. The training error of an epoch is counted on the minibatches as they are trained, as
    cuda-convnet reports it (no second pass). `step` is called after each epoch with the record."""
    x, y, test_x, test_y = data
    torch.manual_seed(cfg.seed)  # the same initial weights for every run
    net = FourLayerNet(activation).to(x.device)
    # No weight decay, no dropout, no augmentation: "No regularization of any kind was employed."
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=0.0)
    n = len(x)
    record: dict[str, Any] = {"activation": activation, "lr": lr, "train_error": [], "train_loss": [],
                              "diverged": False}
    for epoch in range(cfg.epochs):
        order = torch.from_numpy(epoch_order(n, cfg.seed, epoch)).to(x.device)
        wrong = torch.zeros((), dtype=torch.int64, device=x.device)
        loss_sum = torch.zeros((), device=x.device)
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            logits = net(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            wrong += (logits.argmax(1) != y[idx]).sum()
            loss_sum += loss.detach() * len(idx)
        mean_loss = loss_sum.item() / n  # one host sync per epoch
        if not math.isfinite(mean_loss):
            record["diverged"] = True  # the rest of its curve would be noise; it is never the best
            break
        record["train_error"].append(wrong.item() / n)
        record["train_loss"].append(mean_loss)
        step(record)
    with torch.no_grad():
        net.eval()
        wrong_test = sum(int((net(test_x[i:i + 1000]).argmax(1) != test_y[i:i + 1000]).sum())
                         for i in range(0, len(test_x), 1000))
    record["test_error"] = None if record["diverged"] else wrong_test / max(len(test_x), 1)
    record["epochs_to_target"] = epochs_to(record["train_error"])
    return record


def best(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run: fewest epochs to the target, then the lowest final training error, then the
    lowest error at the epoch it reached the target (two runs that both end at 0% differ there),
    then the first given; a diverged run only if every run diverged."""
    def key(r: dict[str, Any]) -> tuple[bool, float, float, float]:
        final = r["train_error"][-1] if r["train_error"] else 1.0
        reached = r["epochs_to_target"]
        crossing = r["train_error"][reached - 1] if reached is not None else 1.0
        return (r["diverged"], reached if reached is not None else math.inf, final, crossing)

    return min(runs, key=key)


def ratio(relu: int | None, tanh: int | None) -> float | None:
    """How many times fewer epochs ReLU needed than tanh; None unless both reached the target."""
    return tanh / relu if relu is not None and tanh is not None else None


def run_path(out: Path, activation: str, lr: float) -> Path:
    return out / RUNS / f"{activation}-lr{lr:g}.json"


def _read_run(path: Path) -> dict[str, Any] | None:
    """A finished run's file, or None when absent or unreadable (then the run is trained again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sweep(cfg: Figure1Config, data: tuple[Tensor, Tensor, Tensor, Tensor]) -> list[dict[str, Any]]:
    """Every (activation, lr) run; one already in `out/runs/` with the same settings is reused."""
    out = Path(cfg.out)
    (out / RUNS).mkdir(parents=True, exist_ok=True)
    runs, todo = [], []
    for activation in ACTIVATIONS:
        for lr in cfg.lrs:
            path = run_path(out, activation, lr)
            cached = _read_run(path)
            if cached is not None and cached.get("settings") == cfg.run_key():
                runs.append(cached["run"])
            else:
                runs.append(None)
                todo.append((len(runs) - 1, activation, lr))
    # disable= only when asked: tqdm reads TQDM_DISABLE as a default, which an explicit argument overrides.
    with tqdm(total=len(todo) * cfg.epochs, unit="epoch", dynamic_ncols=True,
              disable=None if cfg.progress else True) as bar:
        for i, activation, lr in todo:
            bar.set_description(f"{activation} lr {lr:g}")

            def step(record: dict[str, Any]) -> None:
                bar.update()
                bar.set_postfix(train_err=f"{100 * record['train_error'][-1]:.1f}%")

            record = train_run(activation, lr, cfg, data, step)
            bar.update(cfg.epochs - len(record["train_error"]))  # a diverged run's missing epochs
            atomic.write_bytes(str(run_path(out, activation, lr)),
                               json.dumps({"settings": cfg.run_key(), "run": record}, indent=1).encode())
            runs[i] = record
    return runs


def summary(cfg: Figure1Config, runs: Sequence[dict[str, Any]], device: str) -> dict[str, Any]:
    """figure1.json: the settings, every run, the best of each activation and the ratio."""
    chosen = {a: best([r for r in runs if r["activation"] == a]) for a in ACTIVATIONS}
    return {
        "paper": {"section": "§3.1, Figure 1", "target_error": paper.FIGURE1_TARGET_ERR,
                  "speedup": paper.FIGURE1_SPEEDUP},
        "settings": {**dataclasses.asdict(cfg), "device": device,
                     "net": "FourLayerNet (trainer/experiments/figure1.py)"},
        "target_error": paper.FIGURE1_TARGET_ERR,
        **{a: {k: chosen[a][k] for k in ("lr", "train_error", "train_loss", "epochs_to_target", "test_error",
                                         "diverged")} for a in ACTIVATIONS},
        "ratio": ratio(chosen["relu"]["epochs_to_target"], chosen["tanh"]["epochs_to_target"]),
        "runs": list(runs),
    }


def headline(result: dict[str, Any]) -> str:
    """One line: epochs each net needed to reach the target, and the ratio."""
    parts = []
    for a, name in (("relu", "ReLU"), ("tanh", "tanh")):
        run, epochs = result[a], result[a]["epochs_to_target"]
        when = f"in {epochs} epochs" if epochs is not None else f"not within {len(run['train_error'])} epochs"
        parts.append(f"{name} {when} (lr {run['lr']:g})")
    r = result["ratio"]
    speed = f"ReLU {r:.2g}x faster" if r is not None else "no ratio"
    return (f"{100 * result['target_error']:g}% training error: {', '.join(parts)}; {speed} "
            f"(paper: {result['paper']['speedup']}x)")


def plot(result: dict[str, Any], path: Path) -> None:
    """figure1.png, the paper's layout: training error per epoch, ReLU solid, tanh dashed, the 25%
    line, each net's crossing marked; the ratio in the title. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8), constrained_layout=True)
    target = 100 * result["target_error"]
    for a, name, style in (("relu", "ReLU", "-"), ("tanh", "tanh", "--")):
        errs = result[a]["train_error"]
        line, = ax.plot(range(1, len(errs) + 1), [100 * e for e in errs], style, lw=2,
                        label=f"{name} (lr {result[a]['lr']:g})")
        if result[a]["epochs_to_target"] is not None:
            e = result[a]["epochs_to_target"]
            ax.plot([e], [100 * errs[e - 1]], "o", color=line.get_color())
            ax.annotate(f"{e}", (e, 100 * errs[e - 1]), textcoords="offset points", xytext=(4, 6))
    ax.axhline(target, color="grey", ls=":", lw=1.2, label=f"{target:g}% training error")
    ax.set_xlabel("epochs")
    ax.set_ylabel("training error rate, %")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    first, speed = headline(result).split("; ")
    ax.set_title(f"Figure 1 (§3.1): {speed}\n{first}", fontsize=9)
    with atomic.atomic_write(str(path)) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def main(cfg: Figure1Config, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The sweep, the choice of each activation's rate, figure1.png then figure1.json (last: its
    presence says the figure is complete). Raises Figure1Error or CifarError."""
    cfg.check()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_data(cfg, device)
    echo(f"{len(data[0])} training images, {len(data[2])} test images; {len(ACTIVATIONS)} activations x "
         f"{len(cfg.lrs)} learning rates x {cfg.epochs} epochs on {device.type}")
    runs = sweep(cfg, data)
    result = summary(cfg, runs, device.type)
    out = Path(cfg.out)
    plot(result, out / FIGURE_PNG)
    atomic.write_bytes(str(out / FIGURE_JSON), (json.dumps(result, indent=1) + "\n").encode())
    echo(headline(result))
    return result


def _lrs(_ctx: Any, _param: Any, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated learning rates, got {value!r}") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True,
                                 "max_content_width": 110})
@version.option("alexnet-figure1")
@click.option("--cifar10", required=True, help="CIFAR-10's binary tarball, cifar-10-binary.tar.gz (never the "
              "pickled python version).")
@click.option("--out", required=True,
              help="Folder for figure1.png, figure1.json and runs/ (one file per run).")
@click.option("--epochs", type=int, default=EPOCHS, help="Epochs of every run.")
@click.option("--lrs", default=",".join(map(str, LRS)), callback=_lrs,
              help="Learning rates swept for each activation; each takes its fastest to 25%.")
@click.option("--batch-size", type=int, default=BATCH_SIZE, help="Minibatch (cuda-convnet's CIFAR-10: 128).")
@click.option("--momentum", type=float, default=MOMENTUM,
              help="SGD momentum (no weight decay: no regularisation).")
@click.option("--seed", type=int, default=0, help="Initial weights (the same for every run) and batch order.")
@click.option("--limit", type=int, default=0, help="Use the first N training and test images only (0: all).")
@click.option("--device", type=click.Choice(DEVICES), default=None,
              help="Where to train [default: cuda when present, else cpu].")
@click.option("--progress/--no-progress", default=True, help="tqdm bar on stderr (TQDM_DISABLE=1 too).")
def command(cifar10: str, out: str, epochs: int, lrs: tuple[float, ...], batch_size: int, momentum: float,
            seed: int, limit: int, device: str | None, progress: bool) -> None:
    """Figure 1 (§3.1): a four-layer CNN with ReLUs against the same net with tanh on CIFAR-10, each at
    its fastest learning rate of --lrs, no regularisation; epochs to 25% training error and their ratio."""
    cfg = Figure1Config(cifar10=cifar10, out=out, epochs=epochs, lrs=lrs, batch_size=batch_size,
                        momentum=momentum, seed=seed, limit=limit, device=device or "", progress=progress)
    try:
        main(cfg, echo=click.echo)
    except Figure1Error as e:
        raise click.UsageError(str(e)) from None
    except CifarError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{e.filename}: {e.strerror}" if e.filename else str(e)) from None
    click.echo(f"wrote {Path(out) / FIGURE_PNG} and {Path(out) / FIGURE_JSON}")
