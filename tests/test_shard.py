import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
from click.testing import CliRunner

from tools import cards
from tools.cli import main
from tools.layouts import detect
from tools.sample import make_sample
from tools.shard import ShardError, ShardSettings, run

QUIET = {"log": lambda _: None}


def _members(tar_path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as t:
        for m in t:
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = t.extractfile(m).read()
    return samples


def _all_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".tar", ".idx", ".npy")}


def _made_by_shard(out: Path) -> dict[str, bytes]:
    return {k: v for k, v in _all_bytes(out).items() if k != "mean.npy"}


def _shard(src, out, **kw):
    return run(ShardSettings(src=str(src), out=str(out), workers=kw.pop("workers", 1), **kw), **QUIET)


@pytest.mark.parametrize("layout,year", [("raw", 2012), ("raw", 2010), ("folders", 2012), ("kaggle", 2012)])
def test_every_layout_every_sample_once_with_sorted_wnid_labels(tmp_path, layout, year):
    src = tmp_path / "src"
    make_sample(str(src), layout=layout, classes=3, train_per_class=5, val_per_class=2, seed=1, year=year)
    m = _shard(src, tmp_path / "out", shard_size=4)
    wnids = sorted(c["wnid"] for c in m["classes"])
    assert [c["wnid"] for c in m["classes"]] == wnids and [c["index"] for c in m["classes"]] == [0, 1, 2]
    lay = detect(str(src))
    assert list(m["splits"]) == (["train", "val", "test"] if year == 2010 else ["train", "val"])
    for split in m["splits"]:
        expected = {r.key: r.wnid for r in lay.samples(split)}
        skipped = {s["key"] for s in m["splits"][split]["skipped"]}
        seen = {}
        for entry in m["splits"][split]["shards"]:
            for key, s in _members(tmp_path / "out" / entry["name"]).items():
                assert key not in seen
                meta = json.loads(s["json"])
                seen[key] = meta["wnid"]
                assert int(s["cls"]) == wnids.index(meta["wnid"]) == meta["label"]
                assert int.from_bytes(s["lbl"], "little") == meta["label"]
        assert set(seen) | skipped == set(expected) and not set(seen) & skipped
        assert seen == {k: w for k, w in expected.items() if k not in skipped}
        assert m["splits"][split]["samples"] == len(seen)
    # the sample's one truncated JPEG is the only skipped image (2010's gzip members are decoded),
    # and it is recorded with a reason
    skipped = [s for body in m["splits"].values() for s in body["skipped"]]
    assert len(skipped) == 1 and "truncated" in skipped[0]["reason"]


def test_train_shards_mix_classes_and_val_keeps_file_order(sample_shards):
    m = json.loads((sample_shards / "manifest.json").read_text())
    for entry in m["splits"]["train"]["shards"]:
        labels = {int(s["cls"]) for s in _members(sample_shards / entry["name"]).values()}
        assert len(labels) > 1
    val_keys = [k for e in m["splits"]["val"]["shards"] for k in _members(sample_shards / e["name"])]
    assert val_keys == sorted(val_keys) and val_keys[0].endswith("00000001")


def test_same_seed_same_bytes_other_seed_other_order(tmp_path, sample_src, sample_shards):
    _shard(sample_src, tmp_path / "a", shard_size=16)
    assert _all_bytes(tmp_path / "a") == _made_by_shard(sample_shards)
    _shard(sample_src, tmp_path / "b", shard_size=16, seed=1)
    a, b = _all_bytes(tmp_path / "a"), _all_bytes(tmp_path / "b")
    assert a["val-000000.tar"] == b["val-000000.tar"] and a["train-000000.tar"] != b["train-000000.tar"]


def test_killed_run_resumes_to_byte_identical_shards(tmp_path, sample_src, sample_shards):
    """SIGKILL a real run after its first shard, rerun the same command, compare with a clean run."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tools.cli", "shard", "--src", str(sample_src), "--out", str(out),
           "--shard-size", "16", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / ".prep").glob("train-*.json")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list((out / ".prep").glob("train-*.json"))
    assert 1 <= len(done) < 4 and not (out / "manifest.json").exists()
    (out / ".train-000003.tar.tmp-1-deadbeef").write_bytes(b"half a shard")  # as a kill mid-write leaves
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "already done" in result.stdout
    expected = _made_by_shard(sample_shards)
    assert _all_bytes(out) == expected
    assert not list(out.glob(".*tmp*"))
    m1 = json.loads((out / "manifest.json").read_text())
    m2 = json.loads((sample_shards / "manifest.json").read_text())
    assert m1["splits"] == m2["splits"]


def test_rerun_with_other_options_is_refused_unless_overwrite(tmp_path, sample_src):
    _shard(sample_src, tmp_path / "o", shard_size=16, splits=("val",))
    before = (tmp_path / "o" / "val-000000.tar").read_bytes()
    with pytest.raises(ShardError, match="other options.*quality"):
        _shard(sample_src, tmp_path / "o", shard_size=16, splits=("val",), quality=80)
    assert (tmp_path / "o" / "val-000000.tar").read_bytes() == before
    _shard(sample_src, tmp_path / "o", shard_size=16, splits=("val",), quality=80, overwrite=True)
    assert (tmp_path / "o" / "val-000000.tar").read_bytes() != before


def test_nodes_write_disjoint_shards_that_merge_into_single_node_result(tmp_path, sample_src, sample_shards):
    out = tmp_path / "nodes"
    for rank in range(3):
        _shard(sample_src, out, shard_size=16, num_nodes=3, node_rank=rank)
    owned = [json.loads((out / f"manifest.node-{r}-of-3.json").read_text()) for r in range(3)]
    names = [s["name"] for m in owned for body in m["splits"].values() for s in body["shards"]]
    assert len(names) == len(set(names)) == 4
    # A node sees only its own shards: the card and _info.json wait for the merged manifest.
    assert not (out / cards.CARD).exists() and not (out / cards.TIMM_INFO).exists()
    result = CliRunner().invoke(main, ["merge-manifest", "--shards", str(out)])
    assert result.exit_code == 0, result.output
    merged = json.loads((out / "manifest.json").read_text())
    single = json.loads((sample_shards / "manifest.json").read_text())
    assert merged["splits"] == single["splits"]
    for name in (cards.CARD, cards.TIMM_INFO):
        assert (out / name).read_bytes() == (sample_shards / name).read_bytes(), name


def test_merge_refuses_when_a_node_is_missing(tmp_path, sample_src):
    out = tmp_path / "nodes"
    _shard(sample_src, out, shard_size=16, num_nodes=2, node_rank=0)
    result = CliRunner().invoke(main, ["merge-manifest", "--shards", str(out)])
    assert result.exit_code == 1 and "1 of 2 node manifests" in result.output
    assert not (out / "manifest.json").exists()


def test_subsets_limit_classes_and_per_class(tmp_path, sample_src):
    m = _shard(sample_src, tmp_path / "s", shard_size=100, limit_classes=2, per_class=3)
    # The first 2 wnids in sorted order (the labels' order), read from the source tar by hand.
    with tarfile.open(sample_src / "ILSVRC2012_img_train.tar") as t:
        first = sorted(n.removesuffix(".tar") for n in t.getnames())[:2]
    assert [c["wnid"] for c in m["classes"]] == first
    with tarfile.open(tmp_path / "s" / "train-000000.tar") as t:
        keys = {n.split(".")[0] for n in t.getnames()}
    assert keys and {k.split("_")[0] for k in keys} == set(first)
    assert m["splits"]["train"]["samples"] + len(m["splits"]["train"]["skipped"]) == 6
    assert m["splits"]["val"]["samples"] == 6


def test_memory_urls_for_src_and_out():
    make_sample("memory://m/src", layout="folders", classes=2, train_per_class=3, val_per_class=2)
    m = _shard("memory://m/src", "memory://m/out", shard_size=8)
    fs = fsspec.filesystem("memory")
    assert fs.exists("/m/out/manifest.json") and fs.exists("/m/out/train-000000.idx")
    with tarfile.open(fileobj=io.BytesIO(fs.cat_file("/m/out/val-000000.tar"))) as t:
        assert len(t.getnames()) == 4 * m["splits"]["val"]["samples"]


def test_parallel_workers_give_the_same_bytes(tmp_path, sample_src, sample_shards):
    _shard(sample_src, tmp_path / "p", shard_size=16, workers=2)
    assert _all_bytes(tmp_path / "p") == _made_by_shard(sample_shards)


def test_cli_strict_exits_1_after_finishing_and_bad_src_lists_layouts(tmp_path, sample_src):
    runner = CliRunner()
    r = runner.invoke(main, ["shard", "--src", str(sample_src), "--out", str(tmp_path / "x"),
                             "--shard-size", "64", "--workers", "1", "--strict"])
    assert r.exit_code == 1 and "skipped 1 undecodable" in r.output
    assert (tmp_path / "x" / "manifest.json").exists()
    (tmp_path / "empty").mkdir()
    r = runner.invoke(main, ["shard", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "y")])
    assert r.exit_code == 1 and "ILSVRC2012_img_train.tar" in r.output and "LOC_synset_mapping" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(main, ["shard", "--src", str(sample_src), "--out", str(tmp_path / "z"),
                             "--shard-size", "0"])
    assert r.exit_code == 1 and "--shard-size" in r.output and not (tmp_path / "z").exists()


def test_prep_never_imports_torch_or_dali(tmp_path, sample_src):
    code = (
        "import sys; from tools.cli import main\n"
        f"main(['shard', '--src', {str(sample_src)!r}, '--out', {str(tmp_path / 'n')!r}, '--workers', '1',"
        " '--split', 'val'], standalone_mode=False)\n"
        f"main(['verify', '--shards', {str(tmp_path / 'n')!r}, '--workers', '1'], standalone_mode=False)\n"
        "bad = [m for m in ('torch', 'nvidia.dali') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_manifest_skip_reasons_are_stable_and_16_bit_pngs_keep_their_tone(tmp_path):
    """Issue 9, item 1: two runs record the same reason text (Pillow's names a memory address)."""
    from PIL import Image

    src = tmp_path / "src"
    make_sample(str(src), layout="folders", classes=2, train_per_class=3, val_per_class=1, seed=3)
    wnid = sorted(p.name for p in (src / "train").iterdir())[0]
    (src / "train" / wnid / f"{wnid}_90001.JPEG").write_bytes(b"an HTML error page, not an image" * 20)
    Image.fromarray(np.full((300, 400), 32768, np.uint16)).save(src / "train" / wnid / f"{wnid}_90002.JPEG",
                                                               "PNG")
    runs = [_shard(src, tmp_path / f"out{i}", shard_size=100) for i in range(2)]
    reasons = [[s["reason"] for s in m["splits"]["train"]["skipped"] if s["key"].endswith("_90001")]
               for m in runs]
    assert reasons[0] == reasons[1] and len(reasons[0]) == 1 and "0x" not in reasons[0][0]
    grey = _members(tmp_path / "out0" / "train-000000.tar")[f"{wnid}_90002"]["jpg"]
    from tools.resize import decode_stored

    assert abs(float(decode_stored(grey).mean()) - 128) < 2  # was 255: clipped 16-bit values


# --- ILSVRC-2010 as published --------------------------------------------------------------------


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def test_2010_test_split_patches_and_gzip_members(sample2010_src, sample2010_shards):
    """Measured before: 2 images lost (gzip), 2 grey banners stored instead of their patches, no test
    split."""
    from tools.resize import process

    m = json.loads((sample2010_shards / "manifest.json").read_text())
    summary = json.loads((sample2010_src / ".sample.json").read_text())["summary"]
    assert m["options"]["splits"] == ["train", "val", "test"]
    test = m["splits"]["test"]
    assert test["samples"] == summary["test"] == 9 and test["skipped"] == []
    for entry in test["shards"]:
        assert (sample2010_shards / entry["name"]).exists() and entry["name"].startswith("test-")
        assert (sample2010_shards / entry["index"]).exists()
    stored = {k: s for body in m["splits"].values() for e in body["shards"]
              for k, s in _members(sample2010_shards / e["name"]).items()}
    quirks = {q["key"]: q for q in summary["quirks"]}
    gzipped = [k for k, q in quirks.items() if q["kind"] == "gzip"]
    assert len(gzipped) == 2 and all(k in stored for k in gzipped)
    patched = {k: q for k, q in quirks.items() if q["kind"] == "patched"}
    assert len(patched) == 2
    with tarfile.open(sample2010_src / "patch_images.tar") as tar:
        patches = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    for key, q in patched.items():
        member = q["path"].split("/", 1)[1]
        assert stored[key]["jpg"] == process(patches[member]).jpeg  # the patch, not the banner
        assert json.loads(stored[key]["json"])["source"] == q["path"]
    replaced = [r for body in m["splits"].values() for r in body["replaced"]]
    assert sorted(replaced, key=lambda r: r["key"]) == sorted(
        ({"key": k, "source": q["path"], "replaces": q["replaces"]} for k, q in patched.items()),
        key=lambda r: r["key"])
    assert m["splits"]["val"]["replaced"] == []


def test_2010_shards_the_test_split_alone(sample2010_src, sample2010_shards, tmp_path):
    m = _shard(sample2010_src, tmp_path / "t", shard_size=8, splits=("test",))
    assert list(m["splits"]) == ["test"]
    assert _all_bytes(tmp_path / "t") == {k: v for k, v in _made_by_shard(sample2010_shards).items()
                                          if k.startswith("test-")}


def test_2010_test_without_labels_is_refused_in_one_line_and_left_out_by_default(sample2010_src, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(sample2010_src, src)
    (src / "ILSVRC2010_test_ground_truth.txt").unlink()
    runner = CliRunner()
    r = runner.invoke(main, ["shard", "--src", str(src), "--out", str(tmp_path / "a"), "--split", "test",
                             "--workers", "1"])
    assert r.exit_code == 1 and _error_lines(r.output) == r.output.strip().splitlines()[-1:], r.output
    assert "ILSVRC2010_images_test.tar has no labels" in r.output
    assert "ILSVRC2010_test_ground_truth.txt" in r.output
    assert not list((tmp_path / "a").glob("*.tar")) and not (tmp_path / "a" / "manifest.json").exists()
    r = runner.invoke(main, ["shard", "--src", str(src), "--out", str(tmp_path / "b"), "--split", "val",
                             "--workers", "1"])
    assert r.exit_code == 0, r.output
    logs = []
    m = run(ShardSettings(src=str(src), out=str(tmp_path / "c"), shard_size=64, workers=1), log=logs.append)
    assert list(m["splits"]) == ["train", "val"] and m["options"]["splits"] == ["train", "val"]
    assert any(line.startswith("test: left out") and "no labels" in line for line in logs)


def test_2010_patch_without_its_original_fails_and_corrupts_nothing(sample2010_src, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(sample2010_src, src)
    out = tmp_path / "out"
    cmd = ["shard", "--src", str(src), "--out", str(out), "--split", "val,test", "--workers", "1"]
    assert CliRunner().invoke(main, cmd).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with tarfile.open(src / "patch_images.tar") as tar:
        files = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    with tarfile.open(src / "patch_images.tar", "w") as tar:
        for name, data in files + [("patch_images/val/ILSVRC2010_val_00000099.JPEG", files[0][1])]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    r = CliRunner().invoke(main, [*cmd, "--overwrite"])
    assert r.exit_code == 1 and _error_lines(r.output) == r.output.strip().splitlines()[-1:], r.output
    assert _error_lines(r.output)[0].startswith(
        "Error: patch_images.tar/patch_images/val/ILSVRC2010_val_00000099.JPEG: ")
    assert "original ILSVRC2010_val_00000099 is not in ILSVRC2010_images_val.tar" in r.output
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_2010_nodes_merge_into_the_single_node_manifest_replacements_included(sample2010_src,
                                                                              sample2010_shards, tmp_path):
    out = tmp_path / "nodes"
    for rank in range(2):
        _shard(sample2010_src, out, shard_size=8, num_nodes=2, node_rank=rank)
    assert CliRunner().invoke(main, ["merge-manifest", "--shards", str(out)]).exit_code == 0
    merged = json.loads((out / "manifest.json").read_text())
    single = json.loads((sample2010_shards / "manifest.json").read_text())
    assert merged["splits"] == single["splits"]
    assert len([r for body in merged["splits"].values() for r in body["replaced"]]) == 2


def test_2010_patches_added_after_a_run_redo_the_shards_they_touch(sample2010_src, sample2010_shards,
                                                                   tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(sample2010_src, src)
    (src / "patch_images.tar").rename(tmp_path / "patch_images.tar")
    out = tmp_path / "out"
    m = _shard(src, out, shard_size=8, splits=("test",))
    assert m["splits"]["test"]["replaced"] == []
    (tmp_path / "patch_images.tar").rename(src / "patch_images.tar")
    m = _shard(src, out, shard_size=8, splits=("test",))
    assert len(m["splits"]["test"]["replaced"]) == 1
    fresh = _made_by_shard(sample2010_shards)
    assert _all_bytes(out) == {k: v for k, v in fresh.items() if k.startswith("test-")}


# --- ImageNet Fall: a held-out val split carved from a train-only source --------------------------

FALL = {"classes": 4, "train_per_class": 6, "seed": 2}


@pytest.fixture(scope="module")
def fall_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("fall") / "fall11"
    return root, make_sample(str(root), layout="fall", **FALL)


def _keys_and_labels(out: Path, m: dict, split: str) -> dict[str, int]:
    seen = {}
    for entry in m["splits"][split]["shards"]:
        for key, s in _members(out / entry["name"]).items():
            assert key not in seen
            seen[key] = int.from_bytes(s["lbl"], "little")
    return seen


@pytest.mark.parametrize("rule,expect", [
    ({"holdout_per_class": 2}, lambda n: min(2, n - 1)),
    ({"holdout_fraction": 0.5}, lambda n: n // 2),  # §6's Fall 2009: half for training, half for testing
])
def test_fall_holdout_exact_counts_disjoint_complete_and_recorded(tmp_path, fall_src, rule, expect):
    src, summary = fall_src
    m = _shard(src, tmp_path / "out", shard_size=5, **rule)
    assert list(m["splits"]) == ["train", "val"] and m["options"]["splits"] == ["train", "val"]
    wnids = sorted(summary["wnids"])
    train = _keys_and_labels(tmp_path / "out", m, "train")
    val = _keys_and_labels(tmp_path / "out", m, "val")
    skipped = {s["key"] for body in m["splits"].values() for s in body["skipped"]}
    everything = {r.key: r.wnid for r in detect(str(src)).samples("train")}
    assert not set(train) & set(val) and set(train) | set(val) | skipped == set(everything)
    assert all(label == wnids.index(everything[k]) for k, label in {**train, **val}.items())
    held = {w: expect(n) for w, n in summary["per_class"].items()}
    val_all = set(val) | {s["key"] for s in m["splits"]["val"]["skipped"]}  # as carved, before decoding
    assert {w: sum(everything[k] == w for k in val_all) for w in wnids} == held
    h = m["holdout"]
    assert (h["split"], h["from"], h["seed"]) == ("val", "train", 0)
    assert h["rule"] == ("per-class" if "holdout_per_class" in rule else "fraction")
    assert (h["images"], h["val"], h["train"]) == (summary["train"], sum(held.values()),
                                                   summary["train"] - sum(held.values()))
    assert {k: m["options"][k] for k in rule} == rule


def test_fall_holdout_same_for_any_worker_count_and_rerun(tmp_path, fall_src):
    src, _ = fall_src
    one = _shard(src, tmp_path / "one", shard_size=5, holdout_fraction=0.5, workers=1)
    two = _shard(src, tmp_path / "two", shard_size=5, holdout_fraction=0.5, workers=2)
    again = _shard(src, tmp_path / "again", shard_size=5, holdout_fraction=0.5, workers=1)
    made = _made_by_shard(tmp_path / "one")
    assert made == _made_by_shard(tmp_path / "two") == _made_by_shard(tmp_path / "again") and made
    assert one["holdout"] == two["holdout"] == again["holdout"]
    other = _shard(src, tmp_path / "other", shard_size=5, holdout_fraction=0.5, holdout_seed=1)
    assert set(_keys_and_labels(tmp_path / "other", other, "val")) != set(
        _keys_and_labels(tmp_path / "one", one, "val"))
    # --seed reshuffles the train shards but holds out the same images
    reshuffled = _shard(src, tmp_path / "reshuffled", shard_size=5, holdout_fraction=0.5, seed=5)
    assert _keys_and_labels(tmp_path / "reshuffled", reshuffled, "val") == _keys_and_labels(
        tmp_path / "one", one, "val")


def test_fall_holdout_nodes_merge_into_the_single_node_manifest(tmp_path, fall_src):
    src, _ = fall_src
    single = _shard(src, tmp_path / "single", shard_size=5, holdout_per_class=1)
    out = tmp_path / "nodes"
    for rank in range(2):
        _shard(src, out, shard_size=5, holdout_per_class=1, num_nodes=2, node_rank=rank)
    result = CliRunner().invoke(main, ["merge-manifest", "--shards", str(out)])
    assert result.exit_code == 0, result.output
    merged = json.loads((out / "manifest.json").read_text())
    assert merged["splits"] == single["splits"] and merged["holdout"] == single["holdout"]
    part = out / "manifest.node-0-of-2.json"
    node = json.loads(part.read_text())
    part.write_text(json.dumps(dict(node, holdout=dict(node["holdout"], val=0))))
    result = CliRunner().invoke(main, ["merge-manifest", "--shards", str(out)])
    assert result.exit_code == 1 and "different held-out splits" in result.output


def test_fall_holdout_options_checked_in_one_line(tmp_path, fall_src, sample_src):
    src, _ = fall_src
    runner = CliRunner()
    for args, message in (
        (["--holdout-per-class", "1", "--holdout-fraction", "0.5"], "give one, not both"),
        (["--holdout-fraction", "1"], r"--holdout-fraction must be in \(0, 1\)"),
        (["--holdout-per-class", "0"], "--holdout-per-class must be >= 1"),
    ):
        result = runner.invoke(main, ["shard", "--src", str(src), "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 1 and len(_error_lines(result.output)) == 1, result.output
        assert re.search(message, result.output), result.output
    result = runner.invoke(main, ["shard", "--src", str(sample_src), "--out", str(tmp_path / "y"),
                                  "--holdout-fraction", "0.5"])
    assert result.exit_code == 1 and "train only" in result.output and not (tmp_path / "y").exists()
    # without a holdout, the options are those of a folder sharded before holdouts existed
    assert not any(k.startswith("holdout") for k in ShardSettings(src="x").options())


def test_fall_without_holdout_writes_train_only(tmp_path, fall_src):
    src, summary = fall_src
    m = _shard(src, tmp_path / "out", shard_size=8)
    assert list(m["splits"]) == ["train"] and "holdout" not in m
    assert m["splits"]["train"]["samples"] + len(m["splits"]["train"]["skipped"]) == summary["train"]
