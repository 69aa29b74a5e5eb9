"""`alexnet-prep shard`: a whole ILSVRC copy (any supported layout) to shards, resumably.

The run is planned once (`writer.plan_shards`), then each shard is an independent unit of work
for the worker pool; shards that already have a completion record are not redone, so killing a
run and rerunning the same command finishes only what is missing, with byte-identical results.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import posixpath
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any

from tqdm import tqdm

from tools import atomic, cards, holdout, manifest, urls
from tools.layouts import SPLITS, Layout, SourceRef, detect
from tools.lock import RunLock
from tools.resize import DEFAULT_QUALITY
from tools.writer import DEFAULT_SHARD_SIZE, STATE_DIR, ShardPlan, finished_record, plan_shards, write_shard

OPTIONS_FILE = f"{STATE_DIR}/options.json"
MAX_SEED = 2**63 - 1  # numpy takes any non-negative int; capped so it fits every JSON reader's int64


class ShardError(ValueError):
    """A problem with the request itself: reported as one line, before any work starts."""


@dataclass(frozen=True)
class ShardSettings:
    src: str
    out: str = "shards"
    splits: tuple[str, ...] | None = None  # None: every split of the source that has labels
    shard_size: int = DEFAULT_SHARD_SIZE
    quality: int = DEFAULT_QUALITY
    seed: int = 0
    workers: int = os.cpu_count() or 1
    strict: bool = False
    limit_classes: int | None = None
    per_class: int | None = None
    overwrite: bool = False
    num_nodes: int = 1
    node_rank: int = 0
    holdout_per_class: int | None = None  # carve a val split: N images of each class ...
    holdout_fraction: float | None = None  # ... or this fraction of each (tools/holdout.py)
    holdout_seed: int = 0  # its own seed: reshuffling the shards (--seed) keeps the same val

    def validate(self) -> None:
        splits = self.splits if self.splits is not None else SPLITS
        bad = [s for s in splits if s not in SPLITS]
        if bad or not splits:
            named = ",".join(bad) or "(none)"
            raise ShardError(f"--split: unknown split {named}; choose from {','.join(SPLITS)}")
        twice = sorted({s for s in splits if splits.count(s) > 1})
        if twice:
            # Refused rather than deduplicated: a split written twice doubled its samples and its
            # pixels in pca-stats; the intent of a repeated split is a guess we do not make.
            raise ShardError(f"--split: {','.join(twice)} given more than once ({','.join(splits)})")
        if self.shard_size < 1:
            raise ShardError(f"--shard-size must be >= 1, got {self.shard_size}")
        if not 1 <= self.quality <= 100:
            raise ShardError(f"--quality must be in 1..100, got {self.quality}")
        if self.workers < 1:
            raise ShardError(f"--workers must be >= 1, got {self.workers}")
        for name, v in (("--limit-classes", self.limit_classes), ("--per-class", self.per_class)):
            if v is not None and v < 1:
                raise ShardError(f"{name} must be >= 1, got {v}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ShardError(f"--seed must be in 0..2**63-1, got {self.seed}")
        if self.num_nodes < 1:
            raise ShardError(f"--num-nodes must be >= 1, got {self.num_nodes}")
        if not 0 <= self.node_rank < self.num_nodes:
            raise ShardError(f"--node-rank must be in 0..{self.num_nodes - 1}, got {self.node_rank}")
        self._validate_holdout()

    def _validate_holdout(self) -> None:
        if self.holdout_per_class is not None and self.holdout_fraction is not None:
            raise ShardError("--holdout-per-class and --holdout-fraction: give one, not both")
        if self.holdout_per_class is not None and self.holdout_per_class < 1:
            raise ShardError(f"--holdout-per-class must be >= 1, got {self.holdout_per_class}")
        if self.holdout_fraction is not None and not 0 < self.holdout_fraction < 1:
            raise ShardError(f"--holdout-fraction must be in (0, 1), got {self.holdout_fraction}")
        if not 0 <= self.holdout_seed <= MAX_SEED:
            raise ShardError(f"--holdout-seed must be in 0..2**63-1, got {self.holdout_seed}")

    def holdout_rule(self) -> holdout.HoldoutRule | None:
        if self.holdout_per_class is None and self.holdout_fraction is None:
            return None
        return holdout.HoldoutRule(self.holdout_per_class, self.holdout_fraction, self.holdout_seed)

    def options(self) -> dict[str, Any]:
        """What determines the output bytes (recorded in the manifest and compared on rerun)."""
        d = asdict(self)
        for k in ("out", "workers", "strict", "overwrite", "node_rank"):
            d.pop(k)
        d["splits"] = None if self.splits is None else list(self.splits)
        if self.holdout_rule() is None:
            # Left out without a holdout, so folders sharded before it existed still match on rerun.
            for k in ("holdout_per_class", "holdout_fraction", "holdout_seed"):
                d.pop(k)
        return d


def resolve_splits(settings: ShardSettings, layout: Layout, log: Callable[[str], None]) -> ShardSettings:
    """`settings` with the default (None) turned into the source's labelled splits, so the manifest
    names what was written. A split present without labels is left out by default, saying why;
    asked for by --split, `select` refuses it."""
    if settings.splits is not None:
        return settings
    splits = []
    for split in layout.splits():
        why = layout.unlabelled(split)
        if why is None:
            splits.append(split)
        else:
            log(f"{split}: left out ({why.split(': ', 1)[-1]})")
    if not splits:
        raise ShardError(f"{settings.src}: no split with labels in this {layout.name} copy")
    return replace(settings, splits=tuple(splits))


def select(
    layout: Layout, settings: ShardSettings
) -> tuple[list[dict[str, Any]], dict[str, list[SourceRef]]]:
    """Classes and per-split sources after `--limit-classes` / `--per-class` (splits resolved)."""
    assert settings.splits is not None, "resolve_splits first"
    classes = layout.classes()
    if settings.limit_classes:
        classes = classes[: settings.limit_classes]
    wanted = {c.wnid for c in classes}
    present = layout.splits()
    sources: dict[str, list[SourceRef]] = {}
    for split in settings.splits:
        if split not in present:
            raise ShardError(f"{settings.src}: no {split} split found in this {layout.name} copy "
                             f"(it has: {', '.join(present) or 'none'}); pass --split {','.join(present)}")
        refs = sorted((r for r in layout.samples(split) if r.wnid in wanted), key=lambda r: r.key)
        if settings.per_class:
            taken: dict[str, int] = defaultdict(int)
            kept = []
            for r in refs:
                if taken[r.wnid] < settings.per_class:
                    taken[r.wnid] += 1
                    kept.append(r)
            refs = kept
        sources[split] = refs
    return [{"index": c.index, "wnid": c.wnid, "words": c.words} for c in classes], sources


def lock_name(settings: ShardSettings) -> str:
    """One lock per node: the nodes of a multi-node run write into one folder at the same time."""
    if settings.num_nodes == 1:
        return ".prep.lock"
    return f".prep.node-{settings.node_rank}-of-{settings.num_nodes}.lock"


def _run_lock(settings: ShardSettings, log: Callable[[str], None]) -> AbstractContextManager[Any]:
    local = urls.local_path(settings.out)
    if local is None:
        if not urls.in_process(settings.out):
            log(f"{settings.out}: not a local folder, so no lock: do not start a second run into it")
        return nullcontext()
    os.makedirs(local, exist_ok=True)
    return RunLock(os.path.join(local, lock_name(settings)), "alexnet-prep shard", log=log)


def _prepare_out(settings: ShardSettings, owned: set[str] | None) -> None:
    """Refuse to mix runs with different options in one folder; clear leftovers of a killed run.

    Under the lock, temp files can only come from a killed run, except in a multi-node run, where
    other nodes write into the same folder right now: there only those of names this node writes
    (`owned`) are removed.
    """
    fs, root = urls.filesystem(settings.out)
    fs.makedirs(posixpath.join(root, STATE_DIR), exist_ok=True)
    earlier = None
    for name in (OPTIONS_FILE, manifest.MANIFEST):
        if fs.exists(posixpath.join(root, name)):
            data = atomic.read_json(urls.join(settings.out, name))
            earlier = data.get("options", data)
            break
    if earlier is not None and earlier != settings.options():
        if not settings.overwrite:
            diff = sorted(k for k in set(earlier) | set(settings.options())
                          if earlier.get(k) != settings.options().get(k))
            raise ShardError(f"{settings.out}: holds shards made with other options ({', '.join(diff)}); "
                             "use another --out, or --overwrite to replace them")
        for p in fs.ls(root, detail=False):
            name = p.rsplit("/", 1)[-1]
            if name.endswith((".tar", ".idx", ".sum.npy")) or name.startswith("manifest") or name in (
                    "pca.json", "mean.npy", cards.CARD, cards.TIMM_INFO):
                fs.rm(p)
        fs.rm(posixpath.join(root, STATE_DIR), recursive=True)
        fs.makedirs(posixpath.join(root, STATE_DIR), exist_ok=True)
    for p in fs.ls(root, detail=False):
        name = p.rsplit("/", 1)[-1]
        if ".tmp-" in name and (owned is None or name[1:].split(".tmp-", 1)[0] in owned):  # temp_name
            fs.rm(p)
    atomic.write_json(urls.join(settings.out, OPTIONS_FILE), settings.options())


def _owned_names(plans: list[ShardPlan], manifest_name: str) -> set[str]:
    stems = [p.name[: -len(".tar")] for p in plans]
    return {manifest_name} | {f"{s}{ext}" for s in stems for ext in (".tar", ".idx", ".sum.npy")}


_counter: Any = None


def _init_worker(counter: Any) -> None:
    global _counter
    _counter = counter


def _tick(n: int) -> None:
    with _counter.get_lock():
        _counter.value += n


def _write_one(job: tuple[ShardPlan, str, dict[str, int], int]) -> dict[str, Any]:
    plan, out, labels, quality = job
    return write_shard(plan, out, labels, quality, progress=_tick)


def _run_jobs(jobs: list[tuple[ShardPlan, str, dict[str, int], int]], workers: int,
              bar: tqdm) -> list[dict[str, Any]]:
    if workers == 1 or len(jobs) <= 1:
        # In-process: also the only way for memory:// outputs, which live in this process.
        return [write_shard(*job, progress=bar.update) for job in jobs]
    ctx = mp.get_context("spawn")  # no fork: the caller may hold threads (torch, DALI) in tests
    counter = ctx.Value("q", 0)
    records = []
    with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(counter,)) as pool:
        pending = pool.imap_unordered(_write_one, jobs)
        while True:
            try:
                records.append(pending.next(timeout=0.5))
            except mp.TimeoutError:
                pass
            except StopIteration:
                break
            bar.update(counter.value - bar.n)
    bar.update(counter.value - bar.n)
    return records


def run(settings: ShardSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Shard everything `settings` asks for; returns the manifest written (node manifest if K > 1)."""
    settings.validate()
    urls.filesystem(settings.out)  # an unknown protocol or a missing package fails before any work
    workers = settings.workers
    if workers > 1 and (urls.in_process(settings.src) or urls.in_process(settings.out)):
        # Worker processes would read an empty memory:// and write into their own copy, lost on exit.
        log("memory:// exists only in this process: writing with 1 worker")
        workers = 1
    # reads only the class list: seconds, before --out is touched
    layout = holdout.apply(detect(settings.src), settings.holdout_rule())
    settings = resolve_splits(settings, layout, log)
    with _run_lock(settings, log):  # before the listing, which takes minutes on the raw train tar
        return _shard_locked(settings, layout, workers, log)


def _shard_locked(settings: ShardSettings, layout: Layout, workers: int,
                  log: Callable[[str], None]) -> dict[str, Any]:
    raw = layout.name.startswith("raw")
    slow = " (reads every tar member header: ~1.5 min for the full train tar)" if raw else ""
    if layout.name == "fall":  # 14M headers at the 74 us a header measured on the 2012 train tar
        slow = " (reads every tar member header: ~17 min for fall11_whole.tar)"
    log(f"{settings.src}: {layout.name} layout; listing the images{slow}")
    classes, sources = select(layout, settings)
    labels = {c["wnid"]: c["index"] for c in classes}
    plans = {s: plan_shards(sources[s], s, settings.shard_size, settings.seed) for s in settings.splits}
    every = [p for s in settings.splits for p in plans[s]]
    mine = [p for i, p in enumerate(every) if i % settings.num_nodes == settings.node_rank]
    name = (manifest.MANIFEST if settings.num_nodes == 1
            else manifest.node_manifest_name(settings.node_rank, settings.num_nodes))
    _prepare_out(settings, None if settings.num_nodes == 1 else _owned_names(mine, name))
    done = {p.name: r for p in mine if (r := finished_record(p, settings.out)) is not None}
    todo = [p for p in mine if p.name not in done]
    log(f"{len(classes)} classes, "
        + ", ".join(f"{s} {len(sources[s])} images in {len(plans[s])} shards" for s in settings.splits)
        + (f"; resuming, {len(done)} shards already done" if done else ""))
    jobs = [(p, settings.out, labels, settings.quality) for p in todo]
    with tqdm(total=sum(len(p.refs) for p in todo), unit="img", desc="shard", smoothing=0.1) as bar:
        records = list(done.values()) + _run_jobs(jobs, workers, bar)
    result = manifest.build(settings.options(), classes, {s: len(plans[s]) for s in settings.splits}, records)
    if isinstance(layout, holdout.HoldoutLayout):
        result["holdout"] = layout.record([c["wnid"] for c in classes])
    if settings.num_nodes == 1:  # a node's manifest covers its shards only: merge-manifest writes these
        cards.write(settings.out, result)  # before the manifest, which stays the completion mark
    atomic.write_json(urls.join(settings.out, name), result)
    return result
