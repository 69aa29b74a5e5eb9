"""Command lines: `alexnet-train`, `alexnet-eval`, `alexnet-report`, `alexnet-bench`, `alexnet-ablations`,
`alexnet-figures`, `alexnet-figure1`, `alexnet-table1`, `alexnet-table2` and `alexnet-predict`.

    alexnet-train --shards shards/ --out runs/paper
    alexnet-eval --checkpoint runs/paper --shards shards/ --ten-crop
    alexnet-eval --checkpoint runs/a --checkpoint runs/b --shards shards/ --ten-crop   # §6 ensemble
    alexnet-report runs/paper
    alexnet-predict --checkpoint runs/paper cat.jpg
    alexnet-bench train --shards shards/ --precision bf16

Each command maps its flags onto one settings object and checks it before any work; a bad value
ends with a one-line message and a non-zero exit, and nothing is written. Exit codes of
alexnet-train: 0 done (or --max-steps reached), 1 failed mid-run (bad sample, divergence, a write
the disk refused), 2 bad settings or input, 128 + signal when SIGTERM/SIGINT stopped it with a
checkpoint (143, 130: continue with --resume).
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from typing import Any

import click

import paper
from tools import version
from trainer.config import (
    AUGMENTS,
    INITS,
    LIGHTINGS,
    LR_POLICIES,
    LRN_VARIANTS,
    MEAN_MODES,
    PARALLEL_MODES,
    PRECISIONS,
    SGD_VARIANTS,
    ConfigError,
    TrainConfig,
)
from trainer.model import ACTIVATIONS, COLUMN_CHOICES, NORMS, POOLS

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 110}

DEVICES_HELP = (
    "One replica's devices, comma-separated: cuda:0,cuda:1 (the paper's two columns, one per GPU), cuda:0 "
    "(both columns on one GPU, as grouped kernels) or cpu. [default: two GPUs per process when every "
    "process on the node can have two (the paper's split, §3.2); else one GPU: a process that sees a GPU, "
    "e.g. one a launcher gave it, always uses it; the CPU only when no GPU is visible, with a warning.] "
    "Under torchrun, local rank r shifts GPU indices by r * the number of devices, unless each process "
    "sees fewer GPUs than there are processes on the node (a launcher gave each its own).")


def _devices(value: str | None) -> tuple[str, ...]:
    return tuple(d.strip() for d in value.split(",") if d.strip()) if value else ()


def _milestones(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated epochs, got {value!r}") from None


def _warnings_to_stderr() -> None:
    """One line per warning (a damaged checkpoint that was skipped, an inexact evaluation)."""
    warnings.showwarning = lambda message, category, *_a, **_k: click.echo(
        f"warning: {message}", err=True)


# alexnet-train's options in --help order: a tuple applied by `_options` rather than 40 stacked
# decorators, so that `main` reads as one screen.
TRAIN_OPTIONS = (
    click.option("--shards", required=True, help="Folder from `alexnet-prep shard` + `pca-stats`."),
    click.option("--out", default="runs/alexnet",
                 help="Run folder: params, metrics, TensorBoard, checkpoints."),
    click.option("--epochs", type=int, default=paper.EPOCHS, help="Passes over the training set (§5: ~90)."),
    click.option("--batch-size", type=int, default=paper.BATCH_SIZE,
                 help="GLOBAL batch (§5: 128), split evenly over the torchrun processes."),
    click.option("--lr", type=float, default=paper.LEARNING_RATE, help="Initial learning rate (§5)."),
    click.option("--momentum", type=float, default=paper.MOMENTUM, help="SGD momentum (§5)."),
    click.option("--weight-decay", type=float, default=paper.WEIGHT_DECAY, help="L2 weight decay (§5)."),
    click.option("--lr-policy", type=click.Choice(LR_POLICIES), default="plateau",
                 help="plateau: divide by 10 when val top-1 error stops improving (§5); "
                      "step: at --lr-milestones."),
    click.option("--lr-patience", type=int, default=3,
                 help="plateau: epochs without improvement before a drop (the paper gives none)."),
    click.option("--lr-threshold", type=float, default=1e-3,
                 help="plateau: absolute fall of val top-1 error that counts as improving."),
    click.option("--lr-drops", type=int, default=paper.LR_DROPS, help="At most this many drops (§5: three)."),
    click.option("--lr-milestones", default=None,
                 help="step: comma-separated epochs to divide the lr by 10 at "
                      "[default: --lr-drops evenly spaced]."),
    click.option("--init", type=click.Choice(INITS), default="paper",
                 help="paper: §5 N(0, 0.01) weights, biases 0/1. Paper init needs many epochs before the "
                      "loss moves (measured on a 6-class 240-image sample on CPU: 8 epochs at lr 0.01 stay "
                      "at chance); use kaiming for short CPU demos."),
    click.option("--sgd", type=click.Choice(SGD_VARIANTS), default="paper",
                 help="paper: §5's rule v = 0.9v - 5e-4 lr w - lr g, w += v; torch: torch.optim.SGD "
                      "(identical steps at constant lr, not right after an lr drop)."),
    click.option("--lrn", type=click.Choice(LRN_VARIANTS), default="paper",
                 help="LRN as printed in §3.3, or cuda-convnet's alpha / n."),
    # The paper's ablations (README "The paper's experiments"); each default is the paper's network.
    click.option("--norm", type=click.Choice(NORMS), default="lrn",
                 help="After conv1/conv2's ReLU: §3.3's LRN, nothing, or BatchNorm in LRN's place "
                      "(its scale and shift are not weight-decayed)."),
    click.option("--pool", type=click.Choice(tuple(POOLS)), default="overlap",
                 help="§3.4: overlapping 3x3 stride-2 max-pooling, or nonoverlap 2x2 stride 2."),
    click.option("--columns", type=click.Choice([str(c) for c in COLUMN_CHOICES]), default="2",
                 callback=lambda _ctx, _param, value: int(value),
                 help="§3.2: two columns, or 1: the footnote's one-column net (48-128-192-192-256 kernels, "
                      "FC 4096-4096; one device)."),
    click.option("--dropout", type=float, default=paper.DROPOUT,
                 help="§4.2: dropout p on fc6 and fc7 (0: off)."),
    click.option("--lighting", type=click.Choice(LIGHTINGS), default="paper01",
                 help="§4.1 PCA lighting: alpha ~ N(0, 0.1) (paper01), cuda-convnet's variant, or off."),
    click.option("--augment", type=click.Choice(AUGMENTS), default="full",
                 help="§4.1: random crops, flips and lighting (full), or none: the centre crop only."),
    click.option("--activation", type=click.Choice(tuple(ACTIVATIONS)), default="relu",
                 help="§3.1 / Figure 1: the non-linearity after every conv and hidden FC layer."),
    click.option("--conv6/--no-conv6", default=False,
                 help="§6: a sixth conv layer over pool5 (the paper gives no shape; ours: 3x3, 128 maps per "
                      "column on its own column, padding 1; README)."),
    click.option("--mean", type=click.Choice(MEAN_MODES), default=None,
                 help="Input normalisation: image = §2's raw RGB minus the mean image (what paper init is "
                      "sized for); channel = (x - mean) / std per channel (what kaiming init assumes) "
                      "[default: image with --init paper, channel with --init kaiming]."),
    click.option("--devices", default=None, help=DEVICES_HELP),
    click.option("--parallel", type=click.Choice(PARALLEL_MODES), default="ddp",
                 help="Under torchrun: ddp = model replicas, every gradient all-reduced; hybrid = "
                      "Krizhevsky's 2014 scheme: conv layers and fc8 data-parallel, fc6/fc7 split across all "
                      "processes over the global batch (one device per process; ~6x less traffic at 2 "
                      "processes, 3x at 8). Same network, same gradients, same checkpoints: a run may switch "
                      "at an epoch boundary. One process: no difference."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="tf32",
                 help="fp32: strict; tf32: TF32 tensor cores for convs/matmuls; bf16: autocast. "
                      "Storage is fp32."),
    click.option("--channels-last/--no-channels-last", default=True, help="NHWC memory layout."),
    click.option("--compile", "compile_", is_flag=True, help="torch.compile the model."),
    click.option("--seed", type=int, default=0, help="All randomness flows from (seed, epoch, rank)."),
    click.option("--log-every", type=int, default=50, help="Steps between loss syncs and log lines."),
    click.option("--checkpoint-every", type=int, default=0,
                 help="Steps between mid-epoch checkpoints (0: only at the end of each epoch)."),
    click.option("--max-steps", type=int, default=0,
                 help="Stop with a checkpoint after this many steps in all (0: no limit); "
                      "continue with --resume."),
    click.option("--ten-crop/--no-ten-crop", default=True, help="Final 10-patch evaluation (§6)."),
    click.option("--resume", is_flag=True, help="Continue the run in --out from its latest good checkpoint."),
    click.option("--note", default="",
                 help="Why this run differs from the paper; kept in params.json and the report."),
    click.option("--progress/--no-progress", default=True,
                 help="tqdm progress bars (TQDM_DISABLE=1 turns them off too)."),
    click.option("--init-from", default="",
                 help="Start from these weights (a run's best.pt or final.pt, or a checkpoint): fine-tuning. "
                      "With another class count fc8 starts fresh."),
)


def _options(options: tuple[Any, ...]) -> Any:
    """Apply click options in the order given (decorators apply bottom-up)."""

    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


@click.command(context_settings=CONTEXT)
@version.option("alexnet-train")
@_options(TRAIN_OPTIONS)
def main(shards: str, out: str, epochs: int, batch_size: int, lr: float, momentum: float, weight_decay: float,
         lr_policy: str, lr_patience: int, lr_threshold: float, lr_drops: int, lr_milestones: str | None,
         init: str, sgd: str, lrn: str, mean: str | None, devices: str | None, precision: str,
         channels_last: bool, compile_: bool, seed: int, log_every: int, checkpoint_every: int,
         max_steps: int, ten_crop: bool, resume: bool, note: str, progress: bool, init_from: str,
         **switches: Any) -> None:
    """Train AlexNet as in Krizhevsky et al. (2012), §5: SGD, batch 128, momentum 0.9, weight decay
    5e-4, lr 0.01 divided by 10 when the validation error stops improving, 90 epochs.

    Run under torchrun for data parallelism over replicas (one or two GPUs each), or with
    --parallel hybrid for the 2014 hybrid scheme (one GPU each; README "Scaling out").
    """
    from trainer import train

    _warnings_to_stderr()
    cfg = TrainConfig(shards=shards, out=out, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                      weight_decay=weight_decay, lr_policy=lr_policy, lr_patience=lr_patience,
                      lr_threshold=lr_threshold, lr_drops=lr_drops, lr_milestones=_milestones(lr_milestones),
                      init=init, sgd=sgd, lrn=lrn, mean=mean or "", devices=_devices(devices),
                      precision=precision,
                      channels_last=channels_last, compile=compile_, seed=seed, log_every=log_every,
                      checkpoint_every=checkpoint_every, max_steps=max_steps, ten_crop=ten_crop,
                      resume=resume, note=note, progress=progress, init_from=init_from,
                      **switches)
    from pipeline import PipelineError
    from trainer.checkpoint import CheckpointError

    try:
        train.main(cfg)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    except train.Interrupted as e:
        click.echo(str(e), err=True)
        sys.exit(128 + e.signum)  # the shell's code for "killed by this signal": not finished
    # A bad sample mid-run, a diverged loss, a checkpoint the disk had no room for, any other failed
    # read or write of the run's own files.
    except (PipelineError, FloatingPointError, CheckpointError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{e.filename}: {e.strerror}" if e.filename else str(e)) from None


@click.command(context_settings=CONTEXT)
@version.option("alexnet-eval")
@click.option("--checkpoint", "checkpoint_paths", required=True, multiple=True,
              help="A checkpoint file (step-*.pt), a run's weights (best.pt, final.pt: the run's params.json "
                   "must be beside them) or a run folder (its latest good checkpoint). Repeat it to evaluate "
                   "an ensemble (§6): the mean of the models' softmax outputs.")
@click.option("--shards", required=True, help="Folder from `alexnet-prep shard` + `pca-stats`.")
@click.option("--ten-crop", is_flag=True, help="Average the softmax over the 10 patches of §6.")
@click.option("--split", type=click.Choice(["val", "test"]), default="val",
              help="The shards to evaluate: test is ILSVRC-2010's, on which Table 1 is measured.")
@click.option("--batch-size", type=int, default=paper.BATCH_SIZE, help="Evaluation batch (global).")
@click.option("--devices", default=None, help="As for alexnet-train [default: as for alexnet-train].")
@click.option("--precision", type=click.Choice(PRECISIONS), default="tf32", help="As for alexnet-train.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--progress/--no-progress", default=True,
              help="tqdm progress bar on stderr (TQDM_DISABLE=1 turns it off too).")
def eval_main(checkpoint_paths: tuple[str, ...], shards: str, ten_crop: bool, split: str, batch_size: int,
              devices: str | None, precision: str, as_json: bool, progress: bool) -> None:
    """Evaluate a checkpoint alone: loss, top-1 and top-5 error on --split, every image once.
    With several --checkpoint, each model's numbers and those of their ensemble (§6)."""
    from trainer import distributed, evaluate

    _warnings_to_stderr()
    from pipeline import PipelineError

    try:
        result = evaluate.main(checkpoint_paths, shards, ten_crop=ten_crop, batch_size=batch_size,
                               devices=_devices(devices), precision=precision, progress=progress, split=split)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    except PipelineError as e:
        raise click.ClickException(str(e)) from None
    if not distributed.from_env().main:
        return  # under torchrun every rank holds the same reduced totals: rank 0 alone reports them
    if as_json:
        # The keys keep their val_ names whatever the split; "split" says which one they measure.
        click.echo(json.dumps({**result, "split": split}, sort_keys=True))
        return
    mode = "10-crop" if ten_crop else "centre crop"
    images = "images" if split == "val" else f"{split} images"
    if "ensemble" not in result:
        click.echo(f"{result['val_samples']} {images} ({mode}): {_errors(result)}")
        return
    members = result["members"]
    click.echo(f"{result['ensemble']['val_samples']} {images} ({mode}), {len(members)} models:")
    for member in members:
        click.echo(f"  {member['checkpoint']}: {_errors(member)}")
    click.echo(f"  ensemble (mean of {len(members)} softmaxes): {_errors(result['ensemble'])}")


def _errors(result: dict[str, Any]) -> str:
    return (f"top-1 error {100 * result['val_top1_err']:.2f}%, "
            f"top-5 error {100 * result['val_top5_err']:.2f}%, loss {result['val_loss']:.4f}")


@click.command(context_settings=CONTEXT)
@version.option("alexnet-report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--compare", is_flag=True,
              help="Compare the runs (the first is the baseline) in compare.md and compare.png, with the "
                   "paper's claimed differences beside the measured ones.")
@click.option("--out", default=".", help="--compare: folder for compare.md and compare.png.")
def report_main(runs: tuple[str, ...], compare: bool, out: str) -> None:
    """Draw RUN's loss, error and lr curves (curves.png) and write summary.md; with --compare,
    one table of RUN [RUN ...] against the first."""
    from trainer.experiments.report import ReportError, report

    try:
        if compare:
            from trainer.experiments.compare import compare as compare_runs

            md, png = compare_runs(list(runs), out)
        else:
            if len(runs) != 1:
                raise click.UsageError("one run folder, or --compare RUN [RUN ...]")
            png, md = report(runs[0])
    except ReportError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {png} and {md}")


@click.command(context_settings=CONTEXT)
@version.option("alexnet-ablations")
@click.option("--shards", required=True, help="Folder from `alexnet-prep shard` + `pca-stats`.")
@click.option("--out", required=True, help="Folder for the runs (one sub-folder each) and compare.md/.png.")
@click.option("--epochs", type=int, default=paper.EPOCHS, help="Epochs of every run (§5: ~90).")
@click.option("--print", "print_only", is_flag=True,
              help="Print one alexnet-train command per line (for a cluster's array job) and run nothing.")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
def ablations_main(shards: str, out: str, epochs: int, print_only: bool, train_args: tuple[str, ...]) -> None:
    """The paper's ablations: the baseline and one run per claim (§3.2-§4.2), in sequence, then
    `alexnet-report --compare`. Flags after `--` go to every alexnet-train run."""
    from trainer.experiments.ablations import main as ablations

    if epochs < 1:
        raise click.BadParameter(f"must be positive, got {epochs}", param_hint="--epochs")
    sys.exit(ablations(shards, out, epochs, train_args, print_only, echo=click.echo))



@click.command(context_settings=CONTEXT)
@version.option("alexnet-table1")
@click.option("--shards", required=True, help="ILSVRC-2010 shards with their labelled test split.")
@click.option("--out", required=True, help="Folder for the run, the evaluations' JSON and table1.md.")
@click.option("--epochs", type=int, default=paper.EPOCHS, help="Epochs of the training run (§5: ~90).")
@click.option("--print", "print_only", is_flag=True, help="Print one command per line and run nothing.")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
def table1_main(shards: str, out: str, epochs: int, print_only: bool, train_args: tuple[str, ...]) -> None:
    """Table 1 (§6): train on ILSVRC-2010, evaluate its test split (centre crop and 10-crop), print the
    table beside the paper's; a rerun skips finished steps. Flags after `--` go to alexnet-train."""
    from trainer.experiments.tables import TableError
    from trainer.experiments.tables import table1_main as table1

    if epochs < 1:
        raise click.BadParameter(f"must be positive, got {epochs}", param_hint="--epochs")
    try:
        sys.exit(table1(shards, out, epochs, train_args, print_only, echo=click.echo))
    except TableError as e:
        raise click.UsageError(str(e)) from None


@click.command(context_settings=CONTEXT)
@version.option("alexnet-table2")
@click.option("--shards", required=True, help="ILSVRC-2012 shards.")
@click.option("--pretrain-shards", default="",
              help="ImageNet Fall shards for the starred rows (--conv6 pre-training, then fine-tuning).")
@click.option("--out", required=True, help="Folder for the runs, the evaluations' JSON and table2.md.")
@click.option("--epochs", type=int, default=paper.EPOCHS, help="Epochs of each CNN and pre-training (§5).")
@click.option("--finetune-epochs", type=int, default=None, help="Epochs of fine-tuning [default: --epochs].")
@click.option("--finetune-lr", type=float, default=None,
              help="Fine-tuning learning rate (the paper gives none) [default: §5's 0.01 / 10].")
@click.option("--print", "print_only", is_flag=True, help="Print one command per line and run nothing.")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
def table2_main(shards: str, pretrain_shards: str, out: str, epochs: int, finetune_epochs: int | None,
                finetune_lr: float | None, print_only: bool, train_args: tuple[str, ...]) -> None:
    """Table 2 (§6): 5 CNNs and their ensemble; with --pretrain-shards two pre-trained, fine-tuned --conv6
    nets and the 7-CNN* ensemble; the table beside the paper's. Flags after `--` go to alexnet-train."""
    from trainer.experiments.tables import FINETUNE_LR, TableError
    from trainer.experiments.tables import table2_main as table2

    for hint, value in (("--epochs", epochs), ("--finetune-epochs", finetune_epochs)):
        if value is not None and value < 1:
            raise click.BadParameter(f"must be positive, got {value}", param_hint=hint)
    try:
        sys.exit(table2(shards, out, pretrain_shards, epochs, finetune_epochs,
                        FINETUNE_LR if finetune_lr is None else finetune_lr, train_args, print_only,
                        echo=click.echo))
    except TableError as e:
        raise click.UsageError(str(e)) from None

@click.command(context_settings=CONTEXT)
@version.option("alexnet-figures")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--shards", required=True, help="The shards the run trained on (val images, training set).")
@click.option("--images", type=int, default=5,
              help="Figure 4: validation images shown, spread over the split.")
@click.option("--max-train", type=int, default=None,
              help="Figure 4: search at most this many training images (shard order) [default: all].")
@click.option("--batch-size", type=int, default=128, help="Batch of the feature pass.")
@click.option("--device", default=None, help="cuda:0, cpu, ... [default: the first GPU, else the CPU].")
def figures_main(run_dir: str, shards: str, images: int, max_train: int | None, batch_size: int,
                 device: str | None) -> None:
    """The paper's Figures 3 and 4 (§6.1) from RUN_DIR's latest checkpoint: figure3.png (conv1 kernels per
    column, with a colourfulness score each) and figure4.png (val images, their top-5 and the 6 training
    images nearest in fc7 space), written into RUN_DIR."""
    from trainer.experiments.figures import FigureError
    from trainer.experiments.figures import main as figures

    for name, value in (("--images", images), ("--batch-size", batch_size), ("--max-train", max_train or 1)):
        if value < 1:
            raise click.BadParameter(f"must be positive, got {value}", param_hint=name)
    try:
        png3, png4 = figures(run_dir, shards, images, max_train, batch_size, device, echo=click.echo)
    except FigureError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {png3} and {png4}")


@click.command(context_settings=CONTEXT)
@version.option("alexnet-predict")
@click.argument("images", nargs=-1, required=True)
@click.option("--checkpoint", required=True,
              help="A run folder (its best.safetensors, else final.safetensors, else its latest checkpoint) "
                   "or a weights file (.safetensors, best.pt, final.pt, step-*.pt).")
@click.option("--shards", default=None,
              help="The shards the weights were trained on: their statistics and class names, for weights "
                   "that do not carry them (anything but best/final.safetensors).")
@click.option("--device", default=None, help="cuda:0, cpu, ... [default: the first GPU, else the CPU].")
@click.option("--top", "k", type=click.IntRange(min=1), default=5, help="Classes printed per image.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
def predict_main(images: tuple[str, ...], checkpoint: str, shards: str | None, device: str | None, k: int,
                 as_json: bool) -> None:
    """Print the most probable classes of each IMAGE, preprocessed exactly as alexnet-eval's centre crop."""
    from trainer.predict import PredictError, main

    try:
        main(checkpoint, images, shards=shards, device=device, k=k, echo=click.echo, as_json=as_json)
    except PredictError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)  # bad input, as for the other commands


@click.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def figure1_main(args: tuple[str, ...]) -> None:
    """`alexnet-figure1` (Figure 1, ReLU against tanh on CIFAR-10): every argument, --help and --version
    too, goes to the command in trainer/experiments/figure1.py, imported only when it runs."""
    from trainer.experiments.figure1 import command

    command.main(list(args), prog_name="alexnet-figure1")


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is looked up (click's pattern
    for lazily loaded subcommands). trainer.cli is imported by every alexnet-* entry point; loading
    the benches at import pulled DALI (pipeline.bench) into alexnet-report, measured ~4 s of its
    start on a 2-core VM."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # command name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(n for n in self.lazy if self.get_command(ctx, n))})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module_name, attr = self.lazy[cmd_name].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # The pipeline benchmark ships with pipeline/; without it the train one still works. A
            # missing dependency of a module that is there is an error, not a missing command.
            if e.name is not None and module_name.startswith(e.name):
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings=CONTEXT, lazy={
    "train": "trainer.benchmarks.bench:command", "comm": "trainer.benchmarks.comm:command",
    "pipeline": "pipeline.bench:command"})
@version.option("alexnet-bench")
def bench_main() -> None:
    """Throughput benchmarks: the input pipeline alone (pipeline) and training (train); bytes sent per
    training step by DDP and the 2014 hybrid (comm)."""


if __name__ == "__main__":  # torchrun -m trainer.cli ...
    sys.exit(main())
