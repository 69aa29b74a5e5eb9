"""The held-out split carved from a train-only source: exact counts, determinism, disjoint, complete."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from tools.holdout import HoldoutLayout, HoldoutRule, apply, carve
from tools.layouts import LayoutError, SourceRef, detect
from tools.sample import make_sample

# Class sizes as uneven as a Fall release's, including classes of 1 and 2 images.
SIZES = {"n00000001": 1, "n00000002": 2, "n00000003": 3, "n00000004": 7, "n00000005": 10, "n00000006": 100}


def refs(sizes: dict[str, int] = SIZES) -> list[SourceRef]:
    return [SourceRef(f"{w}_{k * 37 + 5}", w, "memory://x.tar", k, 1)
            for w, n in sizes.items() for k in range(n)]


def per_class(rs: list[SourceRef]) -> dict[str, int]:
    return {w: sum(r.wnid == w for r in rs) for w in SIZES}


@pytest.mark.parametrize("n", [1, 2, 5, 50])
def test_per_class_holds_out_n_but_keeps_one_training_image(n: int) -> None:
    kept, held = carve(refs(), HoldoutRule(per_class=n))
    assert per_class(held) == {w: max(0, min(n, size - 1)) for w, size in SIZES.items()}
    assert per_class(kept) == {w: size - max(0, min(n, size - 1)) for w, size in SIZES.items()}


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.29, 0.9])
def test_fraction_holds_out_the_floor_of_the_written_decimal(fraction: float) -> None:
    kept, held = carve(refs(), HoldoutRule(fraction=fraction))
    hundredths = round(fraction * 100)  # integer arithmetic: the decimal as written, no binary float
    assert per_class(held) == {w: size * hundredths // 100 for w, size in SIZES.items()}
    assert all(per_class(kept)[w] >= 1 for w in SIZES)
    if fraction == 0.29:  # the binary double 0.29 is below 29/100: a float floor would give 28
        assert math.floor(100 * fraction) == 28 and per_class(held)["n00000006"] == 29


@pytest.mark.parametrize("rule", [HoldoutRule(per_class=3), HoldoutRule(fraction=0.5)])
def test_disjoint_complete_sorted_and_independent_of_input_order(rule: HoldoutRule) -> None:
    source = refs()
    kept, held = carve(source, rule)
    assert not {r.key for r in kept} & {r.key for r in held}
    assert sorted(kept + held, key=lambda r: r.key) == sorted(source, key=lambda r: r.key)
    assert [r.key for r in held] == sorted(r.key for r in held)
    shuffled = source[:]
    random.Random(1).shuffle(shuffled)
    assert carve(shuffled, rule) == (kept, held)


def test_choice_is_a_function_of_seed_wnid_and_name_only() -> None:
    rule = HoldoutRule(per_class=3, seed=7)
    held = {r.key for r in carve(refs(), rule)[1]}
    # Another class added, or one class's other images gone, leaves the other classes' choice alone.
    more = carve(refs({**SIZES, "n00000007": 20}), rule)[1]
    assert {r.key for r in more if r.wnid != "n00000007"} == held
    assert {r.key for r in carve(refs(), HoldoutRule(per_class=3, seed=8))[1]} != held
    # Not "the first N by name": the seed picks a different subset of the 100-image class.
    big = sorted(r.key for r in refs() if r.wnid == "n00000006")
    assert sorted(r.key for r in carve(refs(), rule)[1] if r.wnid == "n00000006") != big[:3]


@pytest.fixture(scope="module")
def fall_src(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("holdout") / "fall"
    return root, make_sample(str(root), layout="fall", classes=3, train_per_class=6)


def test_holdout_layout_has_train_and_val(fall_src: tuple[Path, dict]) -> None:
    root, summary = fall_src
    n_out = 4
    layout = apply(detect(str(root)), HoldoutRule(per_class=n_out))
    assert isinstance(layout, HoldoutLayout) and layout.name == "fall"
    assert layout.splits() == ["train", "val"]
    train, val = layout.samples("train"), layout.samples("val")
    everything = detect(str(root)).samples("train")
    assert sorted(train + val, key=lambda r: r.key) == everything
    sizes = summary["per_class"]
    assert per_class_counts(val) == {w: min(n_out, n - 1) for w, n in sizes.items()}
    record = layout.record(summary["wnids"])
    assert record["images"] == summary["train"] == record["train"] + record["val"]
    short = [{"wnid": w, "images": n, "held_out": n - 1} for w, n in sorted(sizes.items()) if n <= n_out]
    assert record["val"] == len(val) and record["short"] == short and short  # the sample has a short class
    assert layout.record(summary["wnids"][:1])["images"] == sizes[summary["wnids"][0]]
    assert apply(detect(str(root)), None).splits() == ["train"]


def per_class_counts(rs: list[SourceRef]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rs:
        out[r.wnid] = out.get(r.wnid, 0) + 1
    return out


def test_holdout_refused_for_a_source_with_its_own_val(sample_src: Path) -> None:
    with pytest.raises(LayoutError, match="--holdout-.*train only.*raw-2012 copy has train, val"):
        apply(detect(str(sample_src)), HoldoutRule(fraction=0.5))
