"""`Loader`: one rank's batches, epoch after epoch, as torch tensors, with a resumable position.

Epochs and exactly-once coverage. One DALI pipeline is built per epoch, reading the shards in that
epoch's order (a pure function of (seed, epoch) for training, the sorted order for evaluation).
DALI's reader splits the concatenated samples into `num_shards` contiguous ranges
(floor(N * i / n)) and, with `pad_last_batch`, pads every rank to the same number of batches by
repeating its last sample. The loader runs exactly `len(loader)` batches per epoch and marks every
position past this rank's share with label -1 (`PAD_LABEL`): over all ranks, each sample of the
split appears exactly once with a real label. Rebuilding per epoch (instead of letting the reader
loop) keeps the order a pure function of the epoch number, whatever ran before.

No stall at the boundary. With `overlap_epochs` the next epoch's pipeline is built on a background
thread once this epoch's first batch is out, and started there too: its reader parses the shard
index and fills its shuffle buffer, and its first `prefetch` batches are made, on DALI's threads
while this epoch runs, so the boundary's `next()` finds a batch ready. The finished epoch's
pipeline is torn down on that thread at the same moment (it lives through the validation between
epochs). DALI's `Pipeline.build()` holds Python's GIL for its whole C++ part (measured), so a
thread alone does not spare the training thread: the reader parses its index at its first run
instead (`lazy_init`, graph.read), on DALI's thread, and what is left of the build (0.01-0.13 s on
the 2-core box, mostly the mean image constant) pauses the training thread once per epoch, inside
the epoch rather than at its boundary (docs/PERFORMANCE.md, "Epoch boundaries"). The price of
starting early: a second pipeline (its shuffle buffer and `prefetch` batches) lives through the
epoch. The evaluation loader reads the same batches every pass, so it keeps one pipeline for all
of them (`reuse_pipeline`): after a complete pass its reader is back at the start of the rank's
range (`pad_last_batch` pads every pass to whole batches).

What the host waits for. `clock` (an `InputClock`) adds up the seconds the host spent inside the
loader waiting for input (DALI's outputs, or a pipeline that was not ready) apart from the seconds
it spent held back by the GPU (`Held`, below); the trainer's data-wait meter reads the first only.

Lifetime of GPU batches. DALI frees an output buffer in the order of its own CUDA stream (its
executor, exec2.cc `Outputs`, makes the consumer's stream wait for the outputs but leaves their
order, the one they are freed in, on DALI's stream), so a
zero-copy view handed to torch could be rewritten by a later DALI iteration while torch's stream,
queued steps behind the host, has not read it yet: one batch's images with another's labels. On the
GPU the loader therefore hands out torch-owned copies made on torch's current stream (the cast to
the requested dtype is that copy) and keeps each batch's DALI outputs alive until a CUDA event
recorded after the copy has completed (`Held`). Torch's caching allocator then orders the reuse of
the copies on torch's stream, like any other tensor. On the CPU there is no stream: a DLPack view
keeps DALI's buffer alive, and the default executor never reuses a buffer handed out, so the CPU
batches stay zero-copy views.

Checkpoints. `state()` is a JSON string: (epoch, batches consumed) and, mid-epoch, DALI's own
pipeline checkpoint (reader position, shuffle buffer and every random operator's state), so a
restored loader continues with the very batches an uninterrupted run would have produced.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch

from pipeline.errors import PipelineError, from_dali, names_a_shard
from pipeline.files import batches_per_epoch, rank_range

PAD_LABEL = -1  # label of padding samples; F.cross_entropy(..., ignore_index=PAD_LABEL) skips them
STATE_FORMAT = 1
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# GPU batches whose DALI outputs may wait for their copy: the host may run this many batches ahead of
# torch's stream before the loader waits (at batch 128 in float16, ~37 MiB of DALI memory each).
HELD_BATCHES = 4


@dataclass(frozen=True)
class Identity:
    """What a checkpoint must agree on to be resumable by this loader."""

    split: str
    shards: tuple[str, ...]  # shard file names, sorted
    samples: int
    seed: int
    batch_size: int
    shard_id: int
    num_shards: int


@dataclass
class InputClock:
    """Seconds the host spent blocked inside a loader, by cause; running totals (read differences).

    data_wait: waiting for input, i.e. for DALI's outputs or for a pipeline that was not ready.
    gpu_throttle: GPU back-pressure, i.e. waiting in `Held` for torch's stream to run the copy of a
    batch HELD_BATCHES back. A GPU-bound run blocks there by design; that is not input being late.
    """

    data_wait: float = 0.0
    gpu_throttle: float = 0.0


class Batches(Iterator):
    """One epoch's `(images, labels)` batches, carrying the `clock` of the loader that makes them, so
    that a meter wrapped around the iteration can tell input waits from GPU back-pressure."""

    def __init__(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], clock: InputClock):
        self._batches = batches
        self.clock = clock

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(self._batches)

    def close(self) -> None:
        self._batches.close()


class Held:
    """DALI outputs kept alive until torch's stream has run the copies made from them (GPU batches).

    `add(outputs, event)` after queuing the copies and recording `event` on torch's stream; entries
    whose event has completed are dropped (events on one stream complete in order), and past `limit`
    entries the host waits for the oldest. Anything that has `query()` and `synchronize()` is an event.
    """

    def __init__(self, limit: int = HELD_BATCHES):
        self._limit = limit
        self._queue: deque[tuple[object, object]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, outputs: object, event) -> None:
        self._queue.append((outputs, event))
        while len(self._queue) > self._limit:
            self._queue[0][1].synchronize()
            self._queue.popleft()
        while self._queue and self._queue[0][1].query():
            self._queue.popleft()

    def drain(self) -> None:
        while self._queue:
            self._queue[0][1].synchronize()
            self._queue.popleft()

    def __del__(self) -> None:
        # a loader dropped mid-stream must not hand DALI buffers back while a copy from them is queued
        with contextlib.suppress(RuntimeError):  # at interpreter exit CUDA may be gone, and reuse with it
            self.drain()


def _drop(pipe: object) -> None:
    """Run on the builder thread with the loader's last reference to `pipe`, which goes with the task."""


def dali_views(outputs, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) as zero-copy DLPack views of DALI's output buffers; images `[..., C, H, W]`.

    On the GPU, DLPack makes torch's current stream wait for DALI's ready event.
    """
    images = torch.from_dlpack(outputs[0].as_tensor())
    labels = torch.from_dlpack(outputs[1].as_tensor())
    if channels_last:
        # [..., H, W, C] -> [..., C, H, W] view: torch's channels_last strides, no copy
        nd = images.dim()
        images = images.permute(*range(nd - 3), nd - 1, nd - 3, nd - 2)
    return images, labels


def owned_copies(outputs, dtype: torch.dtype, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in `dtype`, labels) copied out of DALI's buffers into new torch tensors, on torch's
    current stream; the cast (float16 -> bfloat16) is the copy. Strides (channels_last) are kept."""
    images, labels = dali_views(outputs, channels_last)
    return images.to(dtype, copy=True), labels.clone()


class Loader:
    """Iterate `loader.epoch(e)` (or plainly `for images, labels in loader`, one epoch per loop).

    Yields `(images, labels)`: images `[B, 3, crop, crop]` (`[B, 10, 3, crop, crop]` for 10-crop)
    on the pipeline's device, labels int64 `[B]` on the same device, `PAD_LABEL` on padding.
    """

    def __init__(
        self,
        build: Callable[[int, bytes | None], object],
        identity: Identity,
        *,
        device: str,
        device_id: int | None,
        dtype: str,
        channels_last: bool,
        checkpoint: str | None,
        diagnose: Callable[[int, int], PipelineError | None],
        prefetch: int,
        overlap_epochs: bool = True,
        reuse_pipeline: bool = False,
    ):
        self._build = build  # (epoch, DALI checkpoint or None) -> built Pipeline
        self._depth = prefetch  # the pipelines' prefetch_queue_depth
        self._overlap = overlap_epochs
        self._ahead: tuple[int, Future] | None = None  # (epoch, its pipeline being built and started)
        self._builder: ThreadPoolExecutor | None = None  # the one thread that builds ahead
        self._kept = None  # reuse_pipeline: the pipeline of the last complete pass, ready for another
        self._retired: list = []  # finished pipelines waiting to be torn down on the builder thread
        self.clock = InputClock()
        self._id = identity
        self._device, self._device_id = device, device_id
        self._dtype, self._channels_last = dtype, channels_last
        self._diagnose = diagnose  # (epoch, batch) -> the bad sample's error, found by re-reading
        start, stop = rank_range(identity.samples, identity.shard_id, identity.num_shards)
        self.samples = stop - start  # real samples this rank sees per epoch
        self.total_samples = identity.samples  # over all ranks
        self.batch_size = identity.batch_size
        self._batches = batches_per_epoch(identity.samples, identity.num_shards, identity.batch_size)
        # Only reusable when a pass consumes every batch it queued: a pipeline's first run queues
        # `prefetch` batches, more than a pass of fewer batches takes (tiny splits only).
        self._reuse = reuse_pipeline and self._batches >= prefetch
        self._pipe = None
        self._held = Held()  # GPU: DALI outputs until their copies have run (module doc)
        self._restore: dict | None = self._parse(checkpoint) if checkpoint is not None else None
        # (epoch, batch) of the next batch to hand out
        self._position = (self._restore["epoch"], self._restore["batch"]) if self._restore else (0, 0)

    @property
    def next_epoch(self) -> int:
        """The epoch `iter(loader)` runs next (the checkpoint's epoch after a restore)."""
        epoch, batch = self._position
        return epoch + 1 if batch >= self._batches else epoch

    def __len__(self) -> int:
        """Batches per epoch; equal on every rank (the last ones may hold padding)."""
        return self._batches

    def __iter__(self) -> Batches:
        return self.epoch(self.next_epoch)

    def epoch(self, epoch: int) -> Batches:
        """The batches of `epoch`; a checkpoint taken inside this epoch resumes where it stopped."""
        return Batches(self._epoch(epoch), self.clock)

    def _epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, cpt = 0, None
        if self._restore is not None and self._restore["epoch"] == epoch:
            start, cpt = self._restore["batch"], self._restore["dali"]
        self._restore = None
        self._position = (epoch, start)
        if start < self._batches:
            yield from self._run(epoch, start, cpt)
        self._position = (epoch + 1, 0)

    def _start(self, epoch: int, cpt: bytes | None):
        pipe = self._build(epoch, cpt)
        pipe.schedule_run()  # the first call queues `prefetch` iterations; DALI's threads start now
        return pipe

    def _build_ahead(self, epoch: int) -> None:
        """Build and start `epoch`'s pipeline on the builder thread (module doc: no stall at the
        boundary). A failure is kept in the future and raised when that epoch starts."""
        if self._builder is None:
            self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dali-build")
        self._ahead = (epoch, self._builder.submit(self._start, epoch, None))

    def _open(self, epoch: int, start: int, cpt: bytes | None):
        """The started pipeline for `epoch` from batch `start`: built ahead, kept from the last
        pass, or built now (the first epoch, a resume, an epoch out of turn)."""
        ahead, self._ahead = self._ahead, None
        kept, self._kept = self._kept, None
        if start == 0 and cpt is None:
            if ahead is not None and ahead[0] == epoch:
                return ahead[1].result()  # waits only if the build has not finished yet
            if kept is not None:
                for _ in range(self._depth):  # past its first run, one call queues one iteration
                    kept.schedule_run()
                return kept
        if ahead is not None:
            ahead[1].cancel()  # if it is running, its pipeline is dropped when it finishes
        return self._start(epoch, cpt)

    def _run(self, epoch: int, start: int, cpt: bytes | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._release()
        t = time.perf_counter()
        try:
            self._pipe = self._open(epoch, start, cpt)
        except RuntimeError as e:
            raise self._translate(e, epoch, start) from None
        finally:
            self.clock.data_wait += time.perf_counter() - t
        scheduled = min(start + self._depth, self._batches)
        for batch in range(start, self._batches):
            stream = torch.cuda.current_stream(self._device_id) if self._device == "gpu" else None
            t = time.perf_counter()
            try:
                outputs = self._pipe.outputs(stream)
                if scheduled < self._batches:
                    self._pipe.schedule_run()
                    scheduled += 1
            except RuntimeError as e:
                self._release()
                raise self._translate(e, epoch, batch) from None
            finally:
                self.clock.data_wait += time.perf_counter() - t
            images, labels = self._to_torch(outputs)
            valid = self.samples - batch * self.batch_size
            if valid < self.batch_size:
                labels = labels.clone()
                labels[max(valid, 0):] = PAD_LABEL
            self._position = (epoch, batch + 1)
            yield images, labels
            if batch == start and self._overlap:
                # Only now: the build holds the GIL (module doc) and the teardown pauses Python too;
                # at the epoch's start they delayed the boundary's own batch (+50-110 ms measured).
                self._retire()  # first: the memory of the finished epoch's pipeline goes first
                self._build_ahead(epoch + 1)
        if self._reuse and start == 0 and cpt is None:
            self._kept = self._pipe  # every batch it queued has been handed out
        self._release()

    def _to_torch(self, outputs) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = TORCH_DTYPES[self._dtype]
        if self._device != "gpu":
            images, labels = dali_views(outputs, self._channels_last)
            # bfloat16 (see graph.dali_dtype); keeps strides
            return (images if images.dtype == dtype else images.to(dtype)), labels
        with torch.cuda.device(self._device_id):
            images, labels = owned_copies(outputs, dtype, self._channels_last)
            copied = torch.cuda.Event()
            copied.record()  # on torch's current stream, after the copies
        t = time.perf_counter()
        self._held.add(outputs, copied)
        self.clock.gpu_throttle += time.perf_counter() - t
        return images, labels

    def _release(self) -> None:
        # The last reference: DALI joins the pipeline's threads and frees its buffers when it goes
        # (measured: no reference cycles keep it alive). That took 40-110 ms inside the boundary's
        # next() on the 2-core box, so with a builder thread the pipeline is dropped there, after
        # the next epoch's first batch (`_retire`): even there it pauses the other Python threads
        # now and then (measured: up to 8-47 ms at a time).
        if self._pipe is not None and self._builder is not None:
            self._retired.append(self._pipe)
        self._pipe = None

    def _retire(self) -> None:
        """Hand the finished pipelines to the builder thread, to be torn down there."""
        while self._retired:
            self._builder.submit(_drop, self._retired.pop())

    def _translate(self, error: RuntimeError, epoch: int, batch: int) -> PipelineError:
        found = from_dali(error, list(self._id.shards))
        if names_a_shard(error):
            return found
        # DALI's decoder names no sample for some failures (e.g. "nvImageCodec failure"): re-read the
        # same sample order without decoding and find the JPEG that does not decode.
        return self._diagnose(epoch, batch) or found

    # --- checkpoints -------------------------------------------------------------------------

    def state(self) -> str:
        """The position after the last batch handed out, as a JSON string for the trainer's checkpoint.

        Take it between batches. Mid-epoch it holds DALI's pipeline checkpoint (base64), which DALI
        takes consistently with the batches already handed out, prefetching notwithstanding.
        """
        epoch, batch = self._position
        if batch >= self._batches:
            epoch, batch = epoch + 1, 0
        dali = None
        if batch > 0:
            if self._pipe is not None:
                dali = base64.b64encode(self._pipe.checkpoint()).decode("ascii")
            elif self._restore is not None:
                dali = self._restore["dali_b64"]
            else:
                raise PipelineError("state(): the epoch's pipeline is gone; take the state between batches")
        return json.dumps({"format": STATE_FORMAT, "epoch": epoch, "batch": batch, "dali": dali,
                           "identity": asdict(self._id)}, sort_keys=True)

    def _parse(self, checkpoint: str) -> dict:
        try:
            state = json.loads(checkpoint)
            epoch, batch, identity = int(state["epoch"]), int(state["batch"]), state["identity"]
            if state.get("format") != STATE_FORMAT:
                raise ValueError(f"format {state.get('format')!r}, expected {STATE_FORMAT}")
            dali = base64.b64decode(state["dali"]) if state.get("dali") else None
        except (ValueError, KeyError, TypeError) as e:
            raise PipelineError(f"checkpoint is not a loader state ({e})") from None
        mine = asdict(self._id)
        for key, value in mine.items():
            theirs = identity.get(key)
            if isinstance(value, tuple):
                theirs = tuple(theirs or ())
            if theirs != value:
                shown = f"{len(theirs)} shards" if key == "shards" else theirs
                raise PipelineError(f"checkpoint was taken with {key}={shown}, this loader has "
                                    f"{f'{len(value)} shards' if key == 'shards' else value}")
        if not 0 <= batch <= self._batches or (0 < batch < self._batches and dali is None):
            raise PipelineError(f"checkpoint position epoch {epoch} batch {batch} is not resumable")
        return {"epoch": epoch, "batch": batch, "dali": dali, "dali_b64": state.get("dali")}
