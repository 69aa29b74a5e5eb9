"""`alexnet-bench train`: training images/s with synthetic on-device input and with the real pipeline.

    alexnet-bench train --shards shards/                          # GPU: batch 128, 50 steps each
    alexnet-bench train --shards shards/ --precision bf16 --devices cuda:0
    alexnet-bench train --shards shards/ --devices cpu            # CPU: batch 16, 5 steps, ~1-2 minutes
    alexnet-bench train --devices cuda:0 --precision bf16 --compile-mode max-autotune   # synthetic only
    python -m trainer.benchmarks.bench --shards sample/ --precision bf16 --copies 5 --json out/train-bf16.json

Both measurements run the same train step (forward, loss, backward, SGD) in one process, so their
ratio is the cost of the input: synthetic input is the ceiling (one batch already on the device, in
the dtype and memory format the loader yields, so the step does the same work), and the data-wait
share says how much of the pipeline run went to waiting for DALI's next batch. The GPU-throttle
share is the time the loader was held back by the GPU (a GPU-bound run, see trainer/metrics.py
DataWait); it is not data wait. Not a test: numbers vary run to run.
`--json PATH` also writes the figures, with the machine and settings they were measured with.
`--copies N` reads each train shard N times per epoch, so that a small sample's epoch outlasts the
timed steps as ImageNet's does (why: `alexnet-bench pipeline --help`, pipeline/bench.py).

`--compile-mode` runs the model through torch.compile first. At the 20,000 images/s target a
step of 128 images has ~6 ms, and one AlexNet step launches a few hundred kernels (forward,
backward, optimizer), so launch overhead is worth measuring: "reduce-overhead" replays the model's
forward and backward as CUDA graphs, "max-autotune" also benchmarks Triton/cuBLAS kernel choices.
Compilation happens in the untimed warm-up steps. Only a GPU can say what a mode gains; on the CPU
it merely checks that the mode runs. `--devices cuda:0,cuda:0` times the two-column path on one GPU
(the placement as it ran before the grouped path), for comparison with `--devices cuda:0`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Any

import click

import paper
from trainer.config import PRECISIONS

WARMUP = 3  # steps before timing: cuDNN autotuning, allocator growth, DALI prefetch fill
CPU_BATCH, CPU_STEPS = 16, 5  # ~2 s per step of 16 on 2 cores; keeps the CPU run to a minute or two
GPU_STEPS = 50
# torch.compile modes ("default" is mode=None); "none" runs eagerly.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _sync(devices: tuple[str, ...]) -> None:
    """Wait for every GPU of the replica (a two-column model runs on two)."""
    import torch

    for d in devices:
        if torch.device(d).type == "cuda":
            torch.cuda.synchronize(d)


def synthetic_batch(cfg: Any, world: Any, devices: tuple[str, ...], num_classes: int) -> tuple[Any, Any]:
    """One fixed (images, labels) batch on the replica's first device, shaped as the loader yields
    it for `cfg`: its batch, its dtype (bf16 runs take bf16 input) and, with channels-last, its
    strides. Float32 NCHW input would add a cast and a layout copy per step that the real input does
    not pay, and lower the ceiling."""
    import torch

    from trainer.startup import loader_args

    args = loader_args(cfg, world, devices)
    device = torch.device(devices[0])
    images = torch.randn(args["batch_size"], 3, paper.CROP_SIZE, paper.CROP_SIZE, device=device,
                         dtype=getattr(torch, args["dtype"]))  # the loader's names are torch's
    if args["channels_last"]:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (args["batch_size"],), device=device)
    return images, labels


def measure(model: Any, optimizer: Any, batches: Any, steps: int, devices: tuple[str, ...], autocast: Any,
            channels_last: bool, clock: Any = None) -> dict[str, float]:
    """images/s, data-wait and GPU-throttle shares over `steps` timed steps after WARMUP untimed ones;
    `clock`: the loader's InputClock (pipeline.loader), which the chained epochs do not carry."""
    import torch

    from trainer.metrics import DataWait
    from trainer.step import to_device, train_step

    model.train()
    device = torch.device(devices[0])
    it = iter(batches)

    def step(images: Any, labels: Any) -> int:
        images, labels = to_device(images, labels, device, channels_last)
        train_step(model, optimizer, images, labels, autocast)
        return labels.shape[0]

    for images, labels in itertools.islice(it, WARMUP):
        step(images, labels)
    _sync(devices)
    wait = DataWait()
    n = 0
    for images, labels in itertools.islice(wait.wrap(it, clock), steps):
        n += step(images, labels)
    _sync(devices)
    elapsed = time.perf_counter() - wait.start
    return {"images_per_s": n / elapsed, "data_wait": wait.waited / elapsed,
            "gpu_throttle": wait.throttled / elapsed, "images": n}


@click.command(context_settings={"show_default": True})
@click.option("--shards", default=None, help="Shard folder for the pipeline run (omit: synthetic only).")
@click.option("--devices", default=None,
              help="One replica's devices, e.g. cuda:0,cuda:1 or cpu [default: as present].")
@click.option("--precision", type=click.Choice(PRECISIONS), default="tf32")
@click.option("--channels-last/--no-channels-last", default=True)
@click.option("--batch-size", type=int, default=None,
              help=f"[default: {paper.BATCH_SIZE} on a GPU, {CPU_BATCH} on the CPU]")
@click.option("--steps", type=int, default=None,
              help=f"Timed steps [default: {GPU_STEPS} on a GPU, {CPU_STEPS} on the CPU]")
@click.option("--init", default="kaiming", help="Weight init (does not change speed).")
@click.option("--copies", type=click.IntRange(1), default=1,
              help="Pipeline run: read each train shard this many times per epoch.")
@click.option("--compile-mode", type=click.Choice(COMPILE_MODES), default="none",
              help="torch.compile the model first: reduce-overhead = CUDA graphs, max-autotune = tuned "
                   "kernels + CUDA graphs (only a GPU gains; compile time falls in the warm-up).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures (machine, settings, images/s, data wait, ratio) to this file.")
def command(shards: str | None, devices: str | None, precision: str, channels_last: bool,
            batch_size: int | None, steps: int | None, init: str, copies: int, compile_mode: str,
            json_path: str | None) -> None:
    """Training throughput: synthetic on-device input vs the real pipeline, and the data-wait share."""
    if json_path and not os.path.isdir(os.path.dirname(os.path.abspath(json_path))):
        raise click.UsageError(f"--json: the folder of {json_path} does not exist")
    import torch

    from tools import atomic
    from trainer import build, distributed, placement, startup
    from trainer.config import ConfigError, TrainConfig
    from trainer.metrics import machine

    world = distributed.World()
    devs = tuple(d for d in (devices or "").split(",") if d) or placement.default_devices(world)
    try:
        placement.check_devices(devs)
        manifest = startup.check_shards(shards) if shards else None
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    device = torch.device(devs[0])
    on_gpu = device.type == "cuda"
    batch_size = batch_size or (paper.BATCH_SIZE if on_gpu else CPU_BATCH)
    steps = steps or (GPU_STEPS if on_gpu else CPU_STEPS)
    if batch_size < 1 or steps < 1:
        raise click.UsageError("--batch-size and --steps must be positive")
    num_classes = len(manifest["classes"]) if manifest else paper.NUM_CLASSES
    cfg = TrainConfig(shards=shards or "", out="", batch_size=batch_size, init=init, devices=devs,
                      precision=precision, channels_last=channels_last)
    autocast = placement.set_precision(precision)

    rows = []
    model = build.build_model(cfg, num_classes, devs)
    optimizer = build.make_optimizer(cfg, model)
    if compile_mode != "none":
        model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
    # One fixed batch already on the device, as the loader yields it: the ceiling with free input.
    synthetic = itertools.repeat(synthetic_batch(cfg, world, devs, num_classes))
    rows.append(("synthetic", measure(model, optimizer, synthetic, steps, devs, autocast, channels_last)))
    batches_per_epoch = None
    if shards:
        from pipeline.bench import repeated

        with repeated(shards, copies) as folder:
            loader, _ = build.load_data(dataclasses.replace(cfg, shards=folder), world, devs)
            batches_per_epoch = len(loader)
            # Epochs back to back, as in training.
            batches = itertools.chain.from_iterable(loader.epoch(e) for e in itertools.count())
            rows.append(("pipeline", measure(model, optimizer, batches, steps, devs, autocast, channels_last,
                                             loader.clock)))
            del batches, loader  # its DALI pipelines go before their folder

    m = machine()
    hw = ", ".join(m["gpus"]) if on_gpu else f"{m['cpu']} ({m['cpus']} cores)"
    host = f"{m['host']}: {hw}; torch {m['torch']}"
    click.echo(f"machine: {host}")
    click.echo(f"device: {','.join(devs)}; precision {precision}; channels-last {channels_last}; "
               f"compile {compile_mode}; batch {batch_size}; {steps} timed steps after {WARMUP} warm-up")
    if batches_per_epoch is not None and copies > 1:
        click.echo(f"pipeline: each train shard read {copies} times per epoch ({batches_per_epoch} batches)")
    click.echo(f"{'input':<10} {'images/s':>10} {'data wait':>10} {'GPU throttle':>13}")
    for name, r in rows:
        click.echo(f"{name:<10} {r['images_per_s']:>10.1f} {100 * r['data_wait']:>9.1f}% "
                   f"{100 * r['gpu_throttle']:>12.1f}%")
    ratio = rows[1][1]["images_per_s"] / rows[0][1]["images_per_s"] if len(rows) == 2 else None
    if ratio is not None:
        click.echo(f"pipeline / synthetic: {ratio:.2f}")
    if json_path:
        atomic.write_json(json_path, {
            "bench": "train", "machine": host, "machine_info": m, "device": ",".join(devs),
            "shards": shards,
            "settings": {"precision": precision, "channels_last": channels_last, "batch_size": batch_size,
                         "steps": steps, "warmup": WARMUP, "init": init, "num_classes": num_classes,
                         "copies": copies, "batches_per_epoch": batches_per_epoch,
                         "compile_mode": compile_mode},
            "pipeline": None, **dict(rows), "pipeline_over_synthetic": ratio})
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    command()
