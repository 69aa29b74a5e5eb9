"""Hugging Face `datasets` (a dev extra) reads a shard folder as `shard` leaves it.

`load_dataset(folder)` takes the splits and features from `.huggingface.yaml` (tools/cards.py);
the tars are held against themselves, read with tarfile.
"""

import json
import tarfile
from pathlib import Path

import datasets  # the dev extra installs it: a missing one is an error, not a skip
import pytest


def _tar_labels(root: Path, split: str) -> dict[str, int]:
    labels = {}
    for path in sorted(root.glob(f"{split}-*.tar")):
        with tarfile.open(path) as tar:
            labels |= {m.name.split(".", 1)[0]: int(tar.extractfile(m).read())
                       for m in tar if m.name.endswith(".cls")}
    return labels


@pytest.mark.parametrize("fixture", ["sample_shards", "sample2010_shards"])
def test_load_dataset_reads_every_sample_with_wnid_class_labels(fixture, request, tmp_path):
    root = request.getfixturevalue(fixture)
    m = json.loads((root / "manifest.json").read_text())
    ds = datasets.load_dataset(str(root), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {{"val": "validation"}.get(s, s) for s in m["splits"]}
    for split in m["splits"]:
        part = ds[{"val": "validation"}.get(split, split)]
        cls = part.features["cls"]
        assert isinstance(cls, datasets.ClassLabel)
        assert cls.names == [c["wnid"] for c in sorted(m["classes"], key=lambda c: c["index"])]
        got = dict(zip(part["__key__"], part["cls"]))
        assert len(got) == part.num_rows == m["splits"][split]["samples"]
        assert got == _tar_labels(root, split)
        assert [j["wnid"] for j in part["json"]] == [cls.int2str(c) for c in part["cls"]]
    image = ds["train"][0]["jpg"]
    assert image.size == (256, 256)
