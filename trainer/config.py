"""The settings of one training run: a typed object built from the command line, checked at start-up.

Defaults are the paper's (§5, imported from paper.py); anything not in the paper says so. The run
folder keeps these settings in params.json, and `alexnet-report` lists every one that differs
from the default here, with the reason from REASONS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import paper
from trainer.model import ACTIVATIONS, COLUMN_CHOICES, INITS, LRN_VARIANTS, NORMS, POOLS
from trainer.optim import SGD_VARIANTS  # noqa: F401  (re-exported for the CLI)

PARALLEL_MODES = ("ddp", "hybrid")  # under torchrun: trainer/distributed.py, trainer/hybrid.py

PRECISIONS = ("fp32", "tf32", "bf16")
MEAN_MODES = ("image", "channel")  # pipeline.stats.MEAN_MODES (not imported: keeps DALI out of the CLI)
LR_POLICIES = ("plateau", "step")
# §4.1 ablations of the input. pipeline.stats.LIGHTING_MODES plus "off" (not imported: keeps DALI out
# of the CLI); "none" augmentation = the centre crop, no flip, no lighting.
LIGHTINGS = ("paper01", "cuda-convnet", "off")
AUGMENTS = ("full", "none")


MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64 bits; numpy's SeedSequence refuses negative seeds


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the flag."""


def local_path(value: str) -> str:
    """`file:///x` (what fsspec and the prep tools accept) as the local path /x; anything else as is.

    Training and evaluation read and write local folders only (DALI's readers open local files;
    checkpoints are written with os.replace), so a file:// URL is stripped here once rather than
    joined by hand later (which made `file:/x/pca.json` and a stray ./file: folder).
    """
    if value.startswith("file://") and "::" not in value:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(value)
        if parts.netloc in ("", "localhost"):
            return unquote(parts.path)
    return value


def check_local(value: str, name: str) -> None:
    if "://" in value or "::" in value:
        raise ConfigError(f"{name}: {value} is a URL; training and evaluation use local folders only "
                          "(copy or mount it locally; file:///path is accepted)")


@dataclass(frozen=True)
class TrainConfig:
    shards: str  # folder written by `alexnet-prep shard` + `pca-stats`
    out: str  # run folder: params.json, metrics.jsonl, TensorBoard events, checkpoints/
    epochs: int = paper.EPOCHS  # §5: "roughly 90 cycles through the training set"
    batch_size: int = paper.BATCH_SIZE  # global: split evenly over the torchrun processes
    lr: float = paper.LEARNING_RATE
    momentum: float = paper.MOMENTUM
    weight_decay: float = paper.WEIGHT_DECAY
    # §5 divides the lr by 10 "when the validation error rate stopped improving", three times.
    # "plateau" is that rule; the paper gives no patience, so patience/threshold are ours.
    sgd: str = "paper"  # §5's update rule exactly (trainer/optim.py), or "torch": torch.optim.SGD
    lr_policy: str = "plateau"
    lr_patience: int = 3  # epochs without improvement of val top-1 error before a drop (not in the paper)
    lr_threshold: float = 1e-3  # absolute fall in val top-1 error that counts as improving (not in the paper)
    lr_drops: int = paper.LR_DROPS  # at most this many drops
    lr_milestones: tuple[int, ...] = ()  # "step" policy: epochs to drop at; () = LR_DROPS evenly spaced
    init: str = "paper"  # §5 weights N(0, 0.01), biases 0/1; "kaiming" for short CPU demos
    lrn: str = "paper"  # §3.3 formula as printed, or "cuda-convnet" (alpha / n)
    # Input normalisation. "image": §2's raw RGB minus the mean image (0-255 scale), which §5's
    # N(0, 0.01) init is sized for; "channel": (x - mean_c) / std_c, the unit-variance input He init
    # assumes (with "image" kaiming diverged within 6 steps at lr 0.01 on the test sample).
    # "" picks by init.
    mean: str = ""
    devices: tuple[str, ...] = ()  # one model replica's devices; () = 2 GPUs, 1 GPU or the CPU, as present
    precision: str = "tf32"  # fp32 storage everywhere; tf32/bf16 only change the matmul/conv arithmetic
    channels_last: bool = True  # NHWC activations: the tensor-core convolution layout
    compile: bool = False  # torch.compile the model (minutes of compile time; GPU runs only pay off)
    seed: int = 0  # all randomness flows from (seed, epoch, rank)
    log_every: int = 50  # steps between loss syncs / log lines; the only host syncs in the loop
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: at the end of each epoch only
    max_steps: int = 0  # stop (with a checkpoint) after this many steps in all; 0: no limit
    ten_crop: bool = True  # §6: the final 10-patch evaluation
    resume: bool = False
    note: str = ""  # free text kept in params.json: why this run differs from the paper
    progress: bool = True  # tqdm bars (rank 0)
    # The paper's controlled experiments (README "The paper's experiments"); defaults = the paper's net.
    norm: str = "lrn"  # §3.3: "lrn", "none", or "batch" (BatchNorm in LRN's place)
    pool: str = "overlap"  # §3.4: 3x3 stride-2 windows, or "nonoverlap" 2x2 stride 2
    columns: int = paper.COLUMNS  # §3.2: 2, or 1 (the footnote's one-column net)
    dropout: float = paper.DROPOUT  # §4.2: p on fc6 and fc7 outputs
    lighting: str = "paper01"  # §4.1 PCA lighting: "paper01", "cuda-convnet" or "off"
    augment: str = "full"  # §4.1: random crops + flips + lighting, or "none" (centre crop only)
    activation: str = "relu"  # §3.1 / Figure 1: "relu", or "tanh" after every conv and hidden FC layer
    conv6: bool = False  # §6: a sixth conv layer over pool5 (its shape is ours: trainer/model.py CONV6_*)
    init_from: str = ""  # weights file (best.pt, final.pt, a checkpoint) to start from: fine-tuning
    # Under torchrun: "ddp" (model replicas, all gradients all-reduced) or "hybrid" (Krizhevsky 2014:
    # conv trunk and fc8 data-parallel, fc6/fc7 split across the ranks; trainer/hybrid.py). The same
    # function and gradients either way, so a run may switch at an epoch boundary.
    parallel: str = "ddp"

    def __post_init__(self) -> None:
        if not self.mean:
            object.__setattr__(self, "mean", "image" if self.init == "paper" else "channel")
        # file:///x is the local /x; other URLs are refused by check()
        for name in ("shards", "out", "init_from"):
            object.__setattr__(self, name, local_path(getattr(self, name)))

    def check(self, world_size: int = 1) -> None:
        """Everything that can be checked without touching files or devices; raises ConfigError."""
        for name in ("epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{flag(name)} must be positive, got {getattr(self, name)}")
        for name in ("checkpoint_every", "max_steps", "lr_patience", "lr_drops"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("shards", "out"):
            check_local(getattr(self, name), f"--{name}")
        if self.init_from:
            check_local(self.init_from, "--init-from")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must be in 0..{MAX_SEED} (2^63 - 1), got {self.seed}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        for name, allowed in (("precision", PRECISIONS), ("lr_policy", LR_POLICIES),
                              ("init", INITS), ("lrn", LRN_VARIANTS), ("mean", MEAN_MODES),
                              ("sgd", SGD_VARIANTS), ("norm", NORMS), ("pool", tuple(POOLS)),
                              ("columns", COLUMN_CHOICES), ("lighting", LIGHTINGS), ("augment", AUGMENTS),
                              ("parallel", PARALLEL_MODES), ("activation", tuple(ACTIVATIONS))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{flag(name)} must be one of {', '.join(map(str, allowed))}, "
                                  f"got {getattr(self, name)!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.columns == 1 and len(self.devices) > 1:
            raise ConfigError(f"--columns 1 is a one-device network; --devices names {len(self.devices)}")
        if self.parallel == "hybrid" and len(self.devices) > 1:
            raise ConfigError(f"--parallel hybrid runs one device per process; --devices names "
                              f"{len(self.devices)} ({','.join(self.devices)}): give one, or use "
                              "--parallel ddp for two-GPU replicas")
        if self.parallel == "hybrid" and self.compile:
            raise ConfigError("--compile is not supported with --parallel hybrid (DTensor layers under "
                              "torch.compile are untested here); drop one of them")
        if self.augment == "none" and self.lighting not in ("paper01", "off"):
            raise ConfigError(f"--augment none already turns lighting off; drop --lighting {self.lighting}")
        ms = list(self.lr_milestones)
        if ms != sorted(set(ms)) or any(m < 1 for m in ms):
            raise ConfigError(f"--lr-milestones must be increasing positive epochs, "
                              f"got {','.join(map(str, ms))}")
        if len(self.devices) > paper.COLUMNS:
            raise ConfigError(f"--devices takes at most {paper.COLUMNS} devices (one per column), "
                              f"got {','.join(self.devices)}")
        if self.batch_size % world_size:
            raise ConfigError(f"--batch-size {self.batch_size} does not divide across {world_size} processes "
                              "(it is the global batch; each process takes batch-size / world-size)")

    def milestones(self) -> tuple[int, ...]:
        """The "step" policy's drop epochs: given, or LR_DROPS drops evenly spaced over the run."""
        if self.lr_milestones:
            return self.lr_milestones
        return tuple(self.epochs * (i + 1) // (self.lr_drops + 1) for i in range(self.lr_drops))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["devices"], d["lr_milestones"] = list(self.devices), list(self.lr_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["devices"], d["lr_milestones"] = tuple(d.get("devices", ())), tuple(d.get("lr_milestones", ()))
        return cls(**d)


# A resumed run must agree with the interrupted one on these, or it would not be the same run.
# epochs, max_steps, log/checkpoint intervals, devices, precision and compile may change.
RESUME_MUST_MATCH = ("batch_size", "lr", "momentum", "weight_decay", "lr_policy", "lr_patience",
                     "lr_threshold", "lr_drops", "lr_milestones", "init", "lrn", "mean", "seed", "sgd",
                     "norm", "pool", "columns", "dropout", "lighting", "augment", "activation", "conv6")

# Why an option can differ from the paper's default; alexnet-report prints these next to the value.
REASONS = {
    "epochs": "shorter run than the paper's ~90 epochs",
    "batch_size": "global batch differs from §5's 128 (lr was not rescaled unless --lr says so)",
    "lr": "initial learning rate differs from §5's 0.01",
    "momentum": "momentum differs from §5's 0.9",
    "weight_decay": "weight decay differs from §5's 0.0005",
    "lr_policy": "fixed epochs instead of §5's drop-on-plateau",
    "lr_drops": "number of lr drops differs from §5's three",
    "init": "paper init needs many epochs before the loss moves; kaiming for short demos",
    "lrn": "LRN alpha divided by n, as in the released cuda-convnet",
    "sgd": "torch.optim.SGD: same steps as §5's rule at constant lr, not right after an lr drop",
    "mean": "per-channel standardised input, the unit variance He (kaiming) init assumes",
    "precision": "bf16 autocast or strict fp32 instead of the default TF32 arithmetic (storage is fp32)",
    "ten_crop": "final 10-crop evaluation (§6) skipped",
    "norm": "§3.3 ablation: no response normalisation, or BatchNorm in its place (after ReLU)",
    "pool": "§3.4 ablation: non-overlapping 2x2 stride-2 pooling instead of 3x3 stride 2",
    "columns": "§3.2 ablation: the one-column net of the footnote (48-128-192-192-256 kernels, FC 4096)",
    "dropout": "§4.2 ablation: dropout probability on fc6/fc7 differs from 0.5",
    "lighting": "§4.1 ablation: PCA lighting off, or cuda-convnet's variant",
    "augment": "§4.1 ablation: no augmentation (centre crop, no flip, no lighting)",
    "activation": "§3.1 / Figure 1 ablation: tanh instead of ReLU after every conv and hidden FC layer",
    "conv6": "§6's sixth conv layer over the last pooling layer; a choice the paper does not specify: "
             "its shape is ours (3x3, 256 maps as 128 per column on its own column's pool5 maps, padding 1, "
             "the activation, no pooling, bias 1 under paper init; fc6 keeps its 9216 inputs)",
    "init_from": "started from earlier weights (fine-tuning) instead of §5's initialisation",
}


def flag(name: str) -> str:
    return name.replace("_", "-")


def paper_differences(params: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(option, value, default) for every option in `params` whose value is not the default."""
    defaults = TrainConfig(shards="", out="").to_dict()
    skip = {"shards", "out", "resume", "note", "progress", "devices", "log_every",
            "checkpoint_every", "max_steps", "seed", "compile", "channels_last", "parallel"}
    return [(k, params[k], defaults[k]) for k in defaults
            if k not in skip and k in params and params[k] != defaults[k]]
