"""`python -m pipeline.boundary`: what an epoch boundary costs the training thread (CPU or GPU).

    python -m pipeline.boundary                                  # CPU, the bench's photo-like shards
    python -m pipeline.boundary --shards shards/ --batch-size 128 --step-ms 6 --device gpu
    python -m pipeline.boundary --no-overlap                     # build each epoch at its boundary

A stand-in trainer takes `--step-ms` per batch (a sleep: a GPU-bound trainer's host is mostly idle)
over `--epochs` epochs of `train_loader`, so that in steady state the loader is ahead and `next()`
returns at once. Per boundary it reports (a) the boundary's `next()`, the first of the new epoch,
and (b) the worst delay of any step of the epoch before it beyond `--step-ms` ("worst step"): a
build that holds Python's GIL (DALI's `Pipeline.build()` does, loader.py) delays the training
thread wherever it runs, inside a `next()` or not. Medians over the boundaries, every one shown.
Pick `--step-ms` above the loader's time per batch (`alexnet-bench pipeline`), else every step waits.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import click

from pipeline.train import train_loader


def measure(shards: str, batch_size: int, epochs: int, step_s: float, device: str,
            overlap_epochs: bool) -> list[dict[str, float]]:
    """Per boundary (epoch 1 onwards): seconds of its `next()` and of the worst step delay before it."""
    loader = train_loader(shards, batch_size=batch_size, device=device, overlap_epochs=overlap_epochs)
    rows: list[dict[str, float]] = []
    worst = 0.0
    for epoch in range(epochs):
        batches = loader.epoch(epoch)
        for i in range(len(loader)):
            t = time.perf_counter()
            next(batches)
            got = time.perf_counter()
            if i == 0 and epoch > 0:
                rows.append({"boundary_s": got - t, "worst_step_s": worst})
                worst = 0.0
            time.sleep(step_s)  # the trainer's step; a thread holding the GIL makes it return late
            if i > 0:
                worst = max(worst, time.perf_counter() - t - step_s)
        batches.close()
    return rows


@click.command("boundary", context_settings={"show_default": True})
@click.option("--shards", default=None, help="Shard folder [default: the pipeline bench's photo-like set].")
@click.option("--batch-size", type=click.IntRange(1), default=32)
@click.option("--epochs", type=click.IntRange(2), default=6, help="Epochs run: one boundary fewer.")
@click.option("--step-ms", type=click.FloatRange(0), default=40.0, help="The stand-in trainer's step.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu")
@click.option("--overlap/--no-overlap", default=True, help="train_loader's overlap_epochs.")
def command(shards: str | None, batch_size: int, epochs: int, step_ms: float, device: str,
            overlap: bool) -> None:
    """Time of the epoch boundary's next() and the worst step delay, with a stand-in trainer."""
    from pipeline.bench import machine, sample_shards

    shards = shards or sample_shards()
    rows = measure(shards, batch_size, epochs, step_ms / 1000, device, overlap)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    click.echo(f"machine: {machine()} ({platform.node()}, {cores} cores usable)")
    click.echo(f"shards: {shards}; batch {batch_size}, {device}, step {step_ms:g} ms, "
               f"overlap_epochs={overlap}; load average {os.getloadavg()[0]:.2f}")
    for key, name in (("boundary_s", "boundary next()"), ("worst_step_s", "worst step delay")):
        values = [1000 * r[key] for r in rows]
        click.echo(f"{name:<18} median {statistics.median(values):7.1f} ms  "
                   f"(boundaries: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    command()
