"""What a run measures and where it goes: JSON-lines + TensorBoard logs, the data-wait meter, top-k counts.

metrics.jsonl holds one record per line, each with a "kind":

    {"kind": "train", "epoch", "step", "loss", "top1_err", "lr", "images_per_s", "data_wait",
     "gpu_throttle"}                                                                  every --log-every steps
    {"kind": "epoch", "epoch", "step", "train_loss", "train_top1_err", "val_loss", "val_top1_err",
     "val_top5_err", "val_samples", "lr", "images_per_s", "data_wait", "gpu_throttle", "epoch_s"}
                                                                                      after each epoch
    {"kind": "final", "epoch", "step", "ten_crop_loss", "ten_crop_top1_err", ...}    after the last epoch
    {"kind": "resume", "step", "epoch", "batch", "checkpoint"}                        when a run continues

"step" counts optimizer steps since the start of the run; "epoch" starts at 0. "data_wait" is the
share of wall time the loop waited for input, "gpu_throttle" the share the loader was held back by
the GPU (back-pressure of a GPU-bound run, 0 on the CPU); see DataWait. The train error is that
of the training forward passes (dropout and augmentation on). TensorBoard (<run>/tb)
gets the numbers a reader plots (TB_TAGS), against "step", and the run's settings (RunLog.settings).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from tools import atomic

METRICS = "metrics.jsonl"
T = TypeVar("T")


# What TensorBoard shows: (record kind, key) -> tag. Grouped by what a reader compares (train vs val
# loss on one card, centre vs 10-crop error on another); counts that never change (val_samples) and
# resume bookkeeping stay in metrics.jsonl only.
TB_TAGS = {
    ("train", "loss"): "loss/train_interval",
    ("train", "images_per_s"): "speed/images_per_s_interval",
    ("train", "data_wait"): "speed/data_wait_interval",
    ("train", "gpu_throttle"): "speed/gpu_throttle_interval",
    ("train", "top1_err"): "error/train_top1_interval",
    ("epoch", "train_loss"): "loss/train",
    ("epoch", "train_top1_err"): "error/train_top1",
    ("epoch", "val_loss"): "loss/val",
    ("epoch", "val_top1_err"): "error/val_top1",
    ("epoch", "val_top5_err"): "error/val_top5",
    ("epoch", "images_per_s"): "speed/images_per_s",
    ("epoch", "data_wait"): "speed/data_wait",
    ("epoch", "gpu_throttle"): "speed/gpu_throttle",
    ("epoch", "epoch_s"): "speed/epoch_s",
    ("epoch", "lr"): "lr",  # the schedulers step once per epoch: the train records' lr adds nothing
    ("final", "ten_crop_loss"): "loss/ten_crop",
    ("final", "ten_crop_top1_err"): "error/ten_crop_top1",
    ("final", "ten_crop_top5_err"): "error/ten_crop_top5",
}
HPARAM_METRICS = ("error/val_top1", "error/val_top5", "error/ten_crop_top1", "loss/val")


class RunLog:
    """Appends records to <run>/metrics.jsonl and mirrors the numbers to TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard; only rank 0 pays

        self.path = Path(run_dir) / METRICS
        self.file = open(self.path, "a")  # noqa: SIM115 - open for the life of the run
        # purge_step drops events a killed run wrote after its last checkpoint, so resumed curves
        # do not double back on themselves.
        self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, sort_keys=True) + "\n")
        # One line per log interval: flushing keeps the log complete up to a kill.
        self.file.flush()
        step = record.get("step", 0)
        for key, value in record.items():
            tag = TB_TAGS.get((record["kind"], key))
            if tag and isinstance(value, int | float):
                self.tb.add_scalar(tag, value, step)

    def settings(self, params: dict[str, Any], differences: list[tuple[str, Any, Any]], step: int) -> None:
        """The run's settings for TensorBoard: the HParams dashboard (config values, against the
        HPARAM_METRICS scalars of this same run) and a text card with the config, the settings that
        differ from the paper, git revision, data and machine."""
        from torch.utils.tensorboard.summary import hparams

        config = params["config"]
        flat = {k: v if isinstance(v, bool | int | float | str) else json.dumps(v) for k, v in config.items()}
        # SummaryWriter.add_hparams would write them into a new sub-run; the summaries themselves, written
        # to this run's file, put the settings next to this run's own curves.
        writer = self.tb._get_file_writer()
        for summary in hparams(flat, dict.fromkeys(HPARAM_METRICS, 0.0)):
            writer.add_summary(summary)
        where = {k: params.get(k) for k in ("shards", "world_size", "devices", "machine")}
        rows = "\n".join(f"| {k} | {v} | {d} |" for k, v, d in differences) or "| (none) | | |"
        text = (f"**Differs from the paper**\n\n| option | here | paper |\n|---|---|---|\n{rows}\n\n"
                f"**Note:** {config.get('note') or '-'}\n\n**git:** {params.get('git')}\n\n"
                f"**Settings**\n\n```\n{json.dumps(config, indent=1, sort_keys=True)}\n```\n\n"
                f"**Data and machine**\n\n```\n{json.dumps(where, indent=1)}\n```")
        self.tb.add_text("settings", text, step)
        self.tb.flush()

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def read(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl. A last line without its newline is a write in progress (or one a
    kill cut short) and is left out; any other line that is not a JSON record raises ValueError
    naming the file and line."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines[:-1], 1):  # lines[-1]: after the last newline
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path} line {number}: not a JSON record ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
            raise ValueError(f"{path} line {number}: not a metrics record (no \"kind\")")
        records.append(record)
    return records


def truncate(run_dir: str | Path, step: int, epochs_done: int) -> None:
    """Forget what a killed run logged after its checkpoint: train records past `step`, epoch
    records of epochs not completed, and the final 10-crop record (redone when the run ends). The
    resumed run writes them again, identically."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    keep = [r for r in read(run_dir)
            if (r["kind"] in ("train", "resume") and r["step"] <= step)
            or (r["kind"] == "epoch" and r["epoch"] < epochs_done)]
    atomic.write_bytes(str(path), "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep).encode())


class DataWait:
    """Shares of wall time the training loop spent waiting for input, and held back by the GPU.

    Wrapped around a loader's batches. Where the batches carry an `InputClock` (pipeline.loader: the
    DALI loader's `epoch()`), only the seconds the loader spent waiting for DALI's outputs count as
    data wait; the seconds it spent waiting for the GPU to run the copy of a batch HELD_BATCHES back
    (back-pressure, the normal state of a GPU-bound run) count as GPU throttle. Elsewhere (stand-in
    loaders, synthetic input) the whole `next()` is data wait. On a GPU the loop runs ahead of the
    device, so data wait is time the queue of GPU work may drain; a share near 0 means input keeps up.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.waited = 0.0  # seconds of data wait
        self.throttled = 0.0  # seconds of GPU back-pressure
        self._mark = (self.start, 0.0, 0.0)  # (time, waited, throttled) at the last interval()

    def wrap(self, batches: Iterable[T], clock: Any = None) -> Iterator[T]:
        """`batches`, timed; `clock` (an InputClock) if the iterable does not carry its own."""
        clock = clock if clock is not None else getattr(batches, "clock", None)
        it = iter(batches)
        while True:
            t = time.perf_counter()
            waited, throttled = (clock.data_wait, clock.gpu_throttle) if clock is not None else (0.0, 0.0)
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                if clock is None:
                    self.waited += time.perf_counter() - t
                else:
                    self.waited += clock.data_wait - waited
                    self.throttled += clock.gpu_throttle - throttled
            yield item

    def share(self) -> float:
        """Data wait over the wall time since the start."""
        return self.summary()["data_wait"]

    def summary(self) -> dict[str, float]:
        """{"data_wait", "gpu_throttle"}: shares of the wall time since the start."""
        elapsed = time.perf_counter() - self.start
        if elapsed <= 0:
            return {"data_wait": 0.0, "gpu_throttle": 0.0}
        return {"data_wait": self.waited / elapsed, "gpu_throttle": self.throttled / elapsed}

    def interval(self) -> dict[str, float]:
        """{"data_wait", "gpu_throttle"}: shares of the wall time since the last call (or the start)."""
        now = time.perf_counter()
        then, waited, throttled = self._mark
        self._mark = (now, self.waited, self.throttled)
        elapsed = now - then
        if elapsed <= 0:
            return {"data_wait": 0.0, "gpu_throttle": 0.0}
        return {"data_wait": (self.waited - waited) / elapsed,
                "gpu_throttle": (self.throttled - throttled) / elapsed}


def correct_topk(logits_or_probs: Tensor, labels: Tensor, ks: tuple[int, ...]) -> list[Tensor]:
    """Per-sample 0/1 tensors: is the label among the k highest scores (k clipped to the classes)."""
    top = logits_or_probs.topk(min(max(ks), logits_or_probs.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return [hit[:, :k].any(dim=1) for k in ks]


def machine() -> dict[str, Any]:
    """What a figure was measured on: host, CPU count, GPU names."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"host": os.uname().nodename, "cpu": cpu, "cpus": os.cpu_count(), "gpus": gpus,
            "torch": torch.__version__}
