"""The dataset card's YAML and timm's _info.json: made by `shard`, rewritten by `index`, checked by
`verify`, and read the way timm reads them.

timm itself cannot run here (it needs torchvision, whose only build for this torch is a CUDA one),
so `_timm_split` replicates the lines of timm's ReaderWds that read `_info.json`
(timm/data/readers/reader_wds.py: `_load_info`, `_parse_split_info` for a split name, and
`_lazy_init`'s `os.path.join(self.root, f)` for each filename), and the tests hold the result
against the tars themselves.
"""

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tools import cards, manifest
from tools.cli import main
from tools.shard import ShardSettings, run
from tools.verify import verify


def _tar_labels(path: Path) -> dict[str, int]:
    """{key: class index} of one shard, from its `.cls` members (read with tarfile, not our reader)."""
    with tarfile.open(path) as tar:
        return {m.name.split(".", 1)[0]: int(tar.extractfile(m).read())
                for m in tar if m.name.endswith(".cls")}


def _timm_split(root: Path, split: str) -> dict:
    """What timm's ReaderWds takes from `root` for `split` (see the module docstring)."""
    info = {}
    for name in ("_info.json", "info.json"):  # _load_info: the first that loads
        try:
            with open(os.path.join(root, name)) as f:
                info = json.load(f)
            break
        except OSError:
            continue
    if "splits" not in info or split not in info["splits"]:
        raise RuntimeError(f"split {split} not found in info ({info.get('splits', {}).keys()})")
    d = info["splits"][split]
    return {"num_samples": d["num_samples"], "filenames": tuple(d["filenames"]),
            "shard_lengths": tuple(d["shard_lengths"]), "alt_label": d.get("alt_label", ""),
            "name": d["name"], "paths": [os.path.join(root, f) for f in d["filenames"]]}


@pytest.mark.parametrize("fixture", ["sample_shards", "sample2010_shards"])
def test_timm_reads_every_split_with_the_tars_own_counts(fixture, request):
    root = request.getfixturevalue(fixture)
    m = json.loads((root / "manifest.json").read_text())
    info = json.loads((root / cards.TIMM_INFO).read_text())
    assert info["num_classes"] == len(m["classes"])
    expected = {s: s for s in m["splits"]} | {"validation": "val"}
    assert set(info["splits"]) == set(expected)
    for split, ours in expected.items():
        got = _timm_split(root, split)
        lengths = [len(_tar_labels(Path(p))) for p in got["paths"]]
        assert got["name"] == split and got["alt_label"] == ""
        assert sorted(got["filenames"]) == sorted(p.name for p in root.glob(f"{ours}-*.tar"))
        assert list(got["shard_lengths"]) == lengths and got["num_samples"] == sum(lengths) > 0
    with pytest.raises(RuntimeError, match="split dev not found"):
        _timm_split(root, "dev")


def test_card_names_every_split_its_files_counts_and_wnids_in_label_order(sample2010_shards):
    m = json.loads((sample2010_shards / "manifest.json").read_text())
    card = yaml.safe_load((sample2010_shards / cards.CARD).read_text())
    files = {d["split"]: d["path"] for d in card["configs"][0]["data_files"]}
    assert files == {"train": "train-*.tar", "validation": "val-*.tar", "test": "test-*.tar"}
    info = card["dataset_info"]
    names = info["features"][0]["dtype"]["class_label"]["names"]
    assert [names[str(i)] for i in range(len(names))] == [c["wnid"] for c in m["classes"]]
    counts = {s["name"]: s["num_examples"] for s in info["splits"]}
    assert counts == {cards.HF_SPLITS[s]: body["samples"] for s, body in m["splits"].items()}


@pytest.fixture
def shards(sample_shards: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(sample_shards, copy)
    return copy


@pytest.mark.parametrize("name", [cards.CARD, cards.TIMM_INFO])
def test_verify_reports_a_stale_or_missing_file_and_index_rewrites_it(shards, name):
    assert verify(str(shards)) == []
    good = {n: (shards / n).read_bytes() for n in (cards.CARD, cards.TIMM_INFO)}
    # Made from an earlier manifest: one train shard fewer.
    m = json.loads((shards / "manifest.json").read_text())
    train = m["splits"]["train"]
    train["samples"] -= train["shards"].pop()["samples"]
    cards.write(str(shards), m)
    for other in set(good) - {name}:
        (shards / other).write_bytes(good[other])
    assert (shards / name).read_bytes() != good[name]
    fix = f"(rewrite: alexnet-prep index --shards {shards})"
    what = "dataset card " if name == cards.CARD else ""
    assert verify(str(shards)) == [f"{name}: {what}differs from manifest.json (stale) {fix}"]
    (shards / name).unlink()
    assert verify(str(shards)) == [f"{name}: missing {fix}"]
    r = CliRunner().invoke(main, ["index", "--shards", str(shards)])
    assert r.exit_code == 0 and f"wrote {cards.CARD} and {cards.TIMM_INFO}" in r.output, r.output
    assert (shards / name).read_bytes() == good[name] and verify(str(shards)) == []


def test_the_shard_folders_own_readme_is_left_alone(shards):
    readme = shards / "README.md"
    readme.write_text("# my notes\n")
    assert CliRunner().invoke(main, ["index", "--shards", str(shards)]).exit_code == 0
    assert readme.read_text() == "# my notes\n" and verify(str(shards)) == []


def test_index_without_a_manifest_writes_only_the_index(shards):
    for name in ("manifest.json", cards.CARD, cards.TIMM_INFO):
        (shards / name).unlink()
    r = CliRunner().invoke(main, ["index", "--shards", str(shards)])
    assert r.exit_code == 0 and "no manifest.json" in r.output
    assert not (shards / cards.CARD).exists() and not (shards / cards.TIMM_INFO).exists()


def test_the_card_does_not_depend_on_the_split_order_asked(sample2010_src, sample2010_shards, tmp_path):
    # `shard` builds the card from its manifest in --split order; verify from manifest.json, sorted.
    out = tmp_path / "reordered"
    run(ShardSettings(src=str(sample2010_src), out=str(out), shard_size=8, workers=1,
                      splits=("test", "val", "train")), log=lambda _: None)
    assert cards.check(str(out), manifest.load(str(out))) == []
    assert (out / cards.CARD).read_bytes() == (sample2010_shards / cards.CARD).read_bytes()
