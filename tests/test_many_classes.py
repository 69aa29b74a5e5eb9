"""ImageNet Fall 2011's 21,841 classes through the shard writer, verify, the DALI pipeline and AlexNet.

A Fall-shaped source with 21,841 synset tars would take minutes to make and shard, so the class
list is real-sized (a 21,841-line words.txt, parsed and sorted as the Fall layout does) and the
images few: one per label, the labels chosen to span every decimal width of the `cls` member
(1 to 5 digits) up to the last class. What could break with many classes is width, not count:
labels >= 10,000, and the one-hot width of the last layer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline import PAD_LABEL, eval_loader, train_loader
from tests.conftest import pipeline_noise_jpeg
from tools import atomic, cards, manifest
from tools.layouts import SourceRef, parse_words, sorted_classes
from tools.shard import ShardSettings
from tools.stats import compute
from tools.verify import verify
from tools.writer import STATE_DIR, plan_shards, write_shard
from trainer.model import AlexNet
from trainer.startup import check_shards

FALL11_CLASSES = 21_841  # synsets of fall11_whole.tar (the paper's §6: "22K categories")
TRAIN_LABELS = (0, 7, 10, 99, 100, 999, 1_000, 9_999, 10_000, 21_840)
VAL_LABELS = (3, 10_001, 21_840)
CPU = dict(device="cpu", num_threads=2, mean="channel")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, src = tmp_path_factory.mktemp("fall11-classes"), tmp_path_factory.mktemp("fall11-images")
    (root / STATE_DIR).mkdir()  # where write_shard keeps its completion records, as `shard` makes it
    # Spread over the real id range and listed unsorted: the index must come from sorting.
    ids = [1_440_764 + 617 * ((i * 7_919) % FALL11_CLASSES) for i in range(FALL11_CLASSES)]
    text = "".join(f"n{i:08d}\tsynset {i}\n" for i in ids).encode()
    classes = [{"index": c.index, "wnid": c.wnid, "words": c.words}
               for c in sorted_classes(parse_words(text, "words.txt"))]
    wnids = [c["wnid"] for c in classes]
    refs: dict[str, list[SourceRef]] = {}
    for split, labels in (("train", TRAIN_LABELS), ("val", VAL_LABELS)):
        refs[split] = []
        for label in labels:
            path = src / f"{split}_{label}.jpg"
            path.write_bytes(pipeline_noise_jpeg(label))
            refs[split].append(SourceRef(f"{wnids[label]}_{split}", wnids[label], str(path), path=path.name))
    index = {c["wnid"]: c["index"] for c in classes}
    plans = {s: plan_shards(r, s, 4, seed=0) for s, r in refs.items()}
    records = [write_shard(p, str(root), index) for ps in plans.values() for p in ps]
    options = ShardSettings(src=str(src), out=str(root), shard_size=4).options()
    built = manifest.build(options, classes, {s: len(p) for s, p in plans.items()}, records)
    cards.write(str(root), built)  # as `alexnet-prep shard` does, before the manifest
    atomic.write_json(str(root / manifest.MANIFEST), built)
    compute(str(root))
    return root


def collected(loader) -> list[int]:
    labels = torch.cat([y for _, y in loader.epoch(0)])
    return sorted(int(v) for v in labels if v != PAD_LABEL)


def test_21841_classes_verify_and_come_through_the_pipeline_exactly(shards: Path) -> None:
    m = manifest.load(str(shards))
    assert len(m["classes"]) == FALL11_CLASSES
    assert verify(str(shards), workers=1) == []  # labels in range 0..21,840 among them
    train = train_loader(str(shards), batch_size=4, overlap_epochs=False, **CPU)
    assert collected(train) == sorted(TRAIN_LABELS)
    assert collected(eval_loader(str(shards), batch_size=2, **CPU)) == sorted(VAL_LABELS)


def test_alexnet_with_the_manifest_class_count_takes_a_batch(shards: Path) -> None:
    num_classes = len(check_shards(str(shards))["classes"])  # where alexnet-train takes its class count
    torch.manual_seed(0)
    model = AlexNet(num_classes=num_classes, devices=("cpu",)).eval()
    images, labels = next(iter(train_loader(str(shards), batch_size=4, overlap_epochs=False, **CPU)))
    with torch.no_grad():
        logits = model(images.float())
    assert logits.shape == (4, FALL11_CLASSES) and torch.isfinite(logits).all()
    assert int(labels.max()) < num_classes
    loss = F.cross_entropy(logits, labels, ignore_index=PAD_LABEL)
    # At the start a softmax over 21,841 classes is near uniform: the loss is near ln(21,841) = 9.99.
    assert abs(float(loss) - torch.log(torch.tensor(float(FALL11_CLASSES)))) < 0.5
