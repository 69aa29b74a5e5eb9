import json
import shutil

import pytest
from click.testing import CliRunner

from tools.cli import main
from tools.verify import verify


@pytest.fixture
def shards(sample_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(sample_shards, copy)
    return copy


def _run(shards):
    return CliRunner().invoke(main, ["verify", "--shards", str(shards), "--workers", "1"])


def test_good_shards_verify(shards):
    r = _run(shards)
    assert r.exit_code == 0 and "all shards verified" in r.output


def test_a_flipped_byte_is_caught_with_its_shard(shards):
    tar = shards / "train-000001.tar"
    data = bytearray(tar.read_bytes())
    data[5000] ^= 0xFF
    tar.write_bytes(bytes(data))
    r = _run(shards)
    assert r.exit_code == 1 and "train-000001.tar: sha256 differs" in r.output


def test_truncated_tar_is_caught(shards):
    tar = shards / "train-000000.tar"
    tar.write_bytes(tar.read_bytes()[:20000])
    problems = verify(str(shards))
    assert any(p.startswith("train-000000.tar:") and "bytes, manifest says" in p for p in problems)
    assert any("train-000000.tar:" in p and "samples, manifest says" in p for p in problems)


def test_missing_and_stale_index_are_caught_and_index_rebuilds(shards):
    (shards / "val-000000.idx").unlink()
    (shards / "train-000002.idx").write_text("v1.2 1\njpg 0 1 x.jpg\n")
    r = _run(shards)
    assert r.exit_code == 1
    assert "val-000000.tar: index file val-000000.idx missing" in r.output
    assert "train-000002.tar: index file does not match the tar" in r.output
    assert CliRunner().invoke(main, ["index", "--shards", str(shards)]).exit_code == 0
    assert _run(shards).exit_code == 0


def test_wrong_count_in_manifest_is_caught(shards):
    m = json.loads((shards / "manifest.json").read_text())
    m["splits"]["val"]["shards"][0]["samples"] += 1
    (shards / "manifest.json").write_text(json.dumps(m))
    assert "val-000000.tar: 16 samples, manifest says 17" in verify(str(shards))


def test_bad_sample_contents_are_reported_with_shard_and_key(shards):
    import io
    import tarfile

    from tools import wds
    from tools.writer import sample_dict

    buf = io.BytesIO()
    with wds.TarWriter(buf, mtime=0, encoder=False) as w:
        w.write(sample_dict("good_but_label_99", (shards / "mean.npy").read_bytes()[:10], 99, {"label": 99}))
        w.write({"__key__": "no_jpg", "cls": b"1"})
    (shards / "train-000000.tar").write_bytes(buf.getvalue())
    problems = verify(str(shards))
    assert "train-000000.tar: good_but_label_99: label 99 outside 0..3" in problems
    assert any(p.startswith("train-000000.tar: good_but_label_99: jpg does not decode") for p in problems)
    assert "train-000000.tar: no_jpg: missing jpg, lbl, json" in problems
    assert tarfile.is_tarfile(shards / "train-000000.tar")


def test_extra_tar_and_stale_pca_are_caught(shards):
    shutil.copy(shards / "val-000000.tar", shards / "val-000009.tar")
    pca = json.loads((shards / "pca.json").read_text())
    pca["shards"] = "0" * 64
    (shards / "pca.json").write_text(json.dumps(pca))
    problems = verify(str(shards))
    assert "val-000009.tar: tar not listed in the manifest" in problems
    assert any(p.startswith("pca.json: made from other train shards") for p in problems)


def test_no_manifest_is_one_clear_problem(tmp_path):
    r = _run(tmp_path)
    assert r.exit_code == 1 and "no manifest" in r.output


# --- pca.json and mean.npy, checked as training reads them (issue 9, item 4) ---------------------------

def _nan_pca(path):
    pca = json.loads(path.read_text())
    pca["eigval"][1] = float("nan")
    path.write_text(json.dumps(pca))  # Python writes NaN, which json.loads reads back as nan


def _wrong_shape_pca(path):
    pca = json.loads(path.read_text())
    pca["eigvec"] = pca["eigvec"][:2]
    path.write_text(json.dumps(pca))


def _save(array):
    import numpy as np

    return lambda path: np.save(path, array)


def _statistics_faults():
    import numpy as np

    nan_image = np.zeros((256, 256, 3), np.float32)
    nan_image[3, 4, 1] = np.nan
    return {
        "pca-missing": ("pca.json", lambda p: p.unlink()),
        "pca-empty": ("pca.json", lambda p: p.write_bytes(b"")),
        "pca-malformed": ("pca.json", lambda p: p.write_text('{"mean": [1, 2, 3], ')),
        "pca-wrong-shape": ("pca.json", _wrong_shape_pca),
        "pca-nan": ("pca.json", _nan_pca),
        "mean-missing": ("mean.npy", lambda p: p.unlink()),
        "mean-empty": ("mean.npy", lambda p: p.write_bytes(b"")),
        "mean-malformed": ("mean.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage")),
        "mean-wrong-shape": ("mean.npy", _save(np.zeros((224, 224, 3), np.float32))),
        "mean-nan": ("mean.npy", _save(nan_image)),
    }


@pytest.mark.parametrize("fault", list(_statistics_faults()))
def test_bad_statistics_fail_verify_with_the_trainers_own_message(shards, fault):
    name, damage = _statistics_faults()[fault]
    damage(shards / name)
    r = _run(shards)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    lines = [ln for ln in r.output.splitlines() if name in ln]
    assert len(lines) == 1 and lines[0].count(name) == 1, r.output
    # the very check the loaders run (pipeline.stats.load, used by alexnet-train and alexnet-eval)
    from pipeline.errors import PipelineError
    from pipeline.stats import load

    with pytest.raises(PipelineError) as e:
        load(str(shards))
    assert lines[0] == str(e.value)


def _samples(tar_path) -> list[dict]:
    """The shard's samples as webdataset groups them (key -> its members' bytes)."""
    import tarfile

    samples: dict[str, dict] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
    return list(samples.values())


def _write(tar_path, samples: list[dict]) -> None:
    from tools import wds

    with open(tar_path, "wb") as f, wds.TarWriter(f, mtime=0, encoder=False) as w:
        for s in samples:
            w.write(s)


def _stored_jpeg(height: int, width: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("defect, expected", [
    ("key twice", "train-000001.tar: {key}: also in train-000000.tar"),
    ("jpg 255x256", "train-000001.tar: {key}: jpg is (255, 256, 3), expected (256, 256, 3)"),
    ("lbl other", "train-000001.tar: {key}: lbl does not hold the cls label {label} as int32"),
    ("lbl short", "train-000001.tar: {key}: lbl does not hold the cls label {label} as int32"),
    ("json other", "train-000001.tar: {key}: json label differs from cls {label}"),
    ("json garbled", "train-000001.tar: {key}: json is not valid JSON"),
    ("cls text", "train-000001.tar: {key}: cls is not an integer (b'cat')"),
])
def test_each_sample_check_finds_exactly_its_planted_defect(shards, defect: str, expected: str) -> None:
    """One defect planted in one sample of train-000001.tar; verify names it with the shard and key,
    and finds nothing else wrong with the samples (the shard's size and hash differ, as they must)."""
    import struct

    samples = _samples(shards / "train-000001.tar")
    target = samples[1]
    label = int(target["cls"])
    if defect == "key twice":
        target["__key__"] = _samples(shards / "train-000000.tar")[0]["__key__"]
    elif defect == "jpg 255x256":
        target["jpg"] = _stored_jpeg(255, 256)
    elif defect == "lbl other":
        target["lbl"] = struct.pack("<i", (label + 1) % 4)
    elif defect == "lbl short":
        target["lbl"] = struct.pack("<h", label)
    elif defect == "json other":
        target["json"] = json.dumps({**json.loads(target["json"]), "label": (label + 1) % 4}).encode()
    elif defect == "json garbled":
        target["json"] = target["json"][:-1]
    elif defect == "cls text":
        target["cls"] = b"cat"
    _write(shards / "train-000001.tar", samples)
    problems = verify(str(shards))
    sample_problems = [p for p in problems if p.count(": ") >= 2 and not p.startswith("pca.json")
                       and "manifest says" not in p and "sha256" not in p and "index file" not in p]
    assert sample_problems == [expected.format(key=target["__key__"], label=label)]


def test_the_2010_test_split_is_verified(sample2010_shards, tmp_path):
    shards = tmp_path / "shards2010"
    shutil.copytree(sample2010_shards, shards)
    assert _run(shards).exit_code == 0
    m = json.loads((shards / "manifest.json").read_text())
    assert [s["name"] for s in m["splits"]["test"]["shards"]] == ["test-000000.tar", "test-000001.tar"]
    tar = shards / "test-000001.tar"
    data = bytearray(tar.read_bytes())
    data[3000] ^= 0xFF
    tar.write_bytes(bytes(data))
    (shards / "test-000000.idx").unlink()
    r = _run(shards)
    assert r.exit_code == 1 and "test-000001.tar: sha256 differs" in r.output
    assert "test-000000.tar: index file test-000000.idx missing" in r.output
