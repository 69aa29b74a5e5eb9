"""`Loader`: one rank's batches, epoch after epoch, as torch tensors, with a resumable position.

Epochs and exactly-once coverage. One DALI pipeline is built per epoch, reading the shards in that
epoch's order (a pure function of (seed, epoch) for training, the sorted order for evaluation).
DALI's reader splits the concatenated samples into `num_shards` contiguous ranges
(floor(N * i / n)) and, with `pad_last_batch`, pads every rank to the same number of batches by
repeating its last sample. The loader runs exactly `len(loader)` batches per epoch and marks every
position past this rank's share with label -1 (`PAD_LABEL`): over all ranks, each sample of the
split appears exactly once with a real label. Rebuilding per epoch (instead of letting the reader
loop) keeps the order a pure function of the epoch number, whatever ran before; with
`overlap_epochs` the next epoch's pipeline is built and started while this epoch's last batches
are consumed, so the rebuild costs the trainer no wait.

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
from collections import deque
from collections.abc import Callable, Iterator
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
    ):
        self._build = build  # (epoch, DALI checkpoint or None) -> built Pipeline
        self._depth = prefetch  # the pipelines' prefetch_queue_depth
        self._overlap = overlap_epochs
        self._prepared: tuple[int, object] | None = None  # (epoch, pipeline) started ahead of time
        self._id = identity
        self._device, self._device_id = device, device_id
        self._dtype, self._channels_last = dtype, channels_last
        self._diagnose = diagnose  # (epoch, batch) -> the bad sample's error, found by re-reading
        start, stop = rank_range(identity.samples, identity.shard_id, identity.num_shards)
        self.samples = stop - start  # real samples this rank sees per epoch
        self.total_samples = identity.samples  # over all ranks
        self.batch_size = identity.batch_size
        self._batches = batches_per_epoch(identity.samples, identity.num_shards, identity.batch_size)
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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(self.next_epoch)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch`; a checkpoint taken inside this epoch resumes where it stopped."""
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

    def _prepare(self, epoch: int) -> None:
        """Start `epoch`'s pipeline now: this one has all its batches queued, so the next one's build
        and first batches overlap this epoch's tail instead of stalling the trainer at the boundary."""
        try:
            self._prepared = (epoch, self._start(epoch, None))
        except RuntimeError:
            self._prepared = None  # fails again, with its message, when that epoch starts

    def _run(self, epoch: int, start: int, cpt: bytes | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._release()
        prepared, self._prepared = self._prepared, None
        try:
            if prepared is not None and prepared[0] == epoch and start == 0:
                self._pipe = prepared[1]
            else:
                del prepared
                self._pipe = self._start(epoch, cpt)
        except RuntimeError as e:
            raise self._translate(e, epoch, start) from None
        scheduled = min(start + self._depth, self._batches)
        for batch in range(start, self._batches):
            stream = torch.cuda.current_stream(self._device_id) if self._device == "gpu" else None
            try:
                outputs = self._pipe.outputs(stream)
                if scheduled < self._batches:
                    self._pipe.schedule_run()
                    scheduled += 1
                elif self._overlap and self._prepared is None:
                    self._prepare(epoch + 1)
            except RuntimeError as e:
                self._release()
                raise self._translate(e, epoch, batch) from None
            images, labels = self._to_torch(outputs)
            valid = self.samples - batch * self.batch_size
            if valid < self.batch_size:
                labels = labels.clone()
                labels[max(valid, 0):] = PAD_LABEL
            self._position = (epoch, batch + 1)
            yield images, labels
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
        self._held.add(outputs, copied)
        return images, labels

    def _release(self) -> None:
        # the last reference: DALI joins the pipeline's threads and frees its buffers here (measured:
        # no reference cycles keep it alive)
        self._pipe = None

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
