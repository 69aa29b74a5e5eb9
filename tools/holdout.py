"""A held-out split carved from a source that has none (the ImageNet Fall releases), deterministically.

    alexnet-prep shard --src /data/fall11 --out shards-fall11/ --holdout-per-class 50
    alexnet-prep shard --src /data/fall09 --out shards-fall09/ --holdout-fraction 0.5  # §6's Fall 2009

Each class's images are ranked by sha256("<seed>/<wnid>/<key>") (key = the image's file stem); the
first k of that ranking are held out and become the `val` split, the rest stay in `train`. The
rank is a pure function of (seed, wnid, image name): neither the order of the members in the tar,
nor the worker count, nor --limit-classes / --per-class (applied afterwards) changes which images
are held out. `val` is the name the trainer and `alexnet-eval` already evaluate on, so a Fall run
needs no other switch.

k per class of n images: `--holdout-per-class N` holds out min(N, n - 1); `--holdout-fraction f`
holds out floor(n * f), f taken as the decimal it is written as (0.29 of 100 is 29, where the
binary float would give 28). Both keep at least one training image per class, so every class
stays trainable; classes that could not give N are listed in the manifest (`holdout.short`).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tools.layouts import ClassInfo, Layout, LayoutError, SourceRef

SPLIT = "val"  # the held-out images' split: what alexnet-train validates on and alexnet-eval reads
SOURCE = "train"  # the split they are carved from


@dataclass(frozen=True)
class HoldoutRule:
    per_class: int | None = None  # hold out N images of each class ...
    fraction: float | None = None  # ... or this fraction of each class (0 < f < 1)
    seed: int = 0

    def held(self, n: int) -> int:
        """How many of a class's `n` images are held out."""
        if self.per_class is not None:
            return max(0, min(self.per_class, n - 1))
        assert self.fraction is not None
        return math.floor(n * Fraction(repr(self.fraction)))

    def rank(self, ref: SourceRef) -> tuple[bytes, str]:
        # sha256 rather than Python's hash(), which is salted per process (PYTHONHASHSEED).
        return hashlib.sha256(f"{self.seed}/{ref.wnid}/{ref.key}".encode()).digest(), ref.key

    def to_json(self) -> dict[str, Any]:
        rule = "per-class" if self.per_class is not None else "fraction"
        return {"rule": rule, "per_class": self.per_class, "fraction": self.fraction, "seed": self.seed}


def carve(refs: list[SourceRef], rule: HoldoutRule) -> tuple[list[SourceRef], list[SourceRef]]:
    """(kept for training, held out), each sorted by key."""
    by_class: dict[str, list[SourceRef]] = defaultdict(list)
    for r in refs:
        by_class[r.wnid].append(r)
    kept, held = [], []
    for wnid in sorted(by_class):
        ranked = sorted(by_class[wnid], key=rule.rank)
        k = rule.held(len(ranked))
        held += ranked[:k]
        kept += ranked[k:]
    return sorted(kept, key=lambda r: r.key), sorted(held, key=lambda r: r.key)


class HoldoutLayout(Layout):
    """`inner` (train only) seen as train + val, val being the images `rule` holds out."""

    def __init__(self, inner: Layout, rule: HoldoutRule):
        super().__init__(inner.src, inner.fs, inner.root)
        present = inner.splits()
        if SOURCE not in present or SPLIT in present:
            has = ", ".join(present) or "none"
            raise LayoutError(f"{inner.src}: --holdout-* carves {SPLIT} out of {SOURCE} for a source with "
                              f"train only (a Fall release, train/ folders); this {inner.name} copy has "
                              f"{has}")
        self.inner, self.rule, self.name = inner, rule, inner.name
        self._carved: tuple[list[SourceRef], list[SourceRef]] | None = None

    def splits(self) -> list[str]:
        return [SOURCE, SPLIT]

    def _read_classes(self) -> list[ClassInfo]:
        return self.inner.classes()

    def carved(self) -> tuple[list[SourceRef], list[SourceRef]]:
        # Listed once: both splits come from one scan of the source (minutes for a Fall tar).
        if self._carved is None:
            self._carved = carve(self.inner.samples(SOURCE), self.rule)
        return self._carved

    def _samples(self, split: str) -> list[SourceRef]:
        kept, held = self.carved()
        return kept if split == SOURCE else held

    def record(self, wnids: list[str]) -> dict[str, Any]:
        """The manifest's `holdout`: the rule and the counts of the carve over the classes `wnids`
        (after --limit-classes, before --per-class, which caps what is written)."""
        kept, held = self.carved()
        wanted = set(wnids)
        n_kept: dict[str, int] = defaultdict(int)
        n_held: dict[str, int] = defaultdict(int)
        for r in kept:
            n_kept[r.wnid] += r.wnid in wanted
        for r in held:
            n_held[r.wnid] += r.wnid in wanted
        short = []
        if self.rule.per_class is not None:
            short = [{"wnid": w, "images": n_kept[w] + n_held[w], "held_out": n_held[w]}
                     for w in sorted(wanted) if n_held[w] < self.rule.per_class]
        return {"from": SOURCE, "split": SPLIT, **self.rule.to_json(),
                "images": sum(n_kept.values()) + sum(n_held.values()),
                SOURCE: sum(n_kept.values()), SPLIT: sum(n_held.values()), "short": short}


def apply(layout: Layout, rule: HoldoutRule | None) -> Layout:
    """`layout` with the held-out split carved by `rule`; unchanged when there is no rule."""
    return layout if rule is None else HoldoutLayout(layout, rule)
