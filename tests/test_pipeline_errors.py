"""Every way a shard folder can be broken gives a one-line PipelineError naming the shard (and key)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from pipeline import PipelineError, eval_loader, train_loader
from tests.conftest import pipeline_noise_jpeg, write_pipeline_shard, write_pipeline_stats
from tools.writer import sample_dict

CPU = dict(device="cpu", num_threads=2)


def make(root: Path, *broken: dict, good: int = 3, split: str = "train") -> Path:
    """Shard 0 holds `good` valid samples, shard 1 the given (possibly broken) samples."""
    root.mkdir(parents=True, exist_ok=True)
    samples = [sample_dict(f"good_{i}", pipeline_noise_jpeg(i), i, {}) for i in range(good)]
    write_pipeline_shard(root / f"{split}-000000.tar", samples)
    if broken:
        write_pipeline_shard(root / f"{split}-000001.tar", list(broken))
    write_pipeline_stats(root)
    return root


def sample(key: str, **members) -> dict:
    s = sample_dict(key, pipeline_noise_jpeg(7), 7, {})
    s.update(members)
    return {k: v for k, v in s.items() if v is not None}


def fails(root: Path, *names: str, loader=train_loader, **kw) -> str:
    """Run one epoch; the error must be a one-line PipelineError mentioning every name."""
    with pytest.raises(PipelineError) as info:
        for _ in loader(str(root), batch_size=2, **{**CPU, **kw}):
            pass
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    return message


def test_missing_folder_or_no_shards(tmp_path):
    fails(tmp_path / "nowhere", "nowhere")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "empty", "train-*.tar")
    fails(make(tmp_path / "only-train"), "val-*.tar", loader=eval_loader)


def test_missing_index_file(tmp_path):
    root = make(tmp_path / "s", sample("b0"))
    os.remove(root / "train-000001.idx")
    fails(root, "train-000001.tar", "index")


def test_unreadable_shard(tmp_path):
    root = make(tmp_path / "s", sample("b0"))
    os.remove(root / "train-000001.tar")
    (root / "train-000001.tar").mkdir()  # exists but cannot be read as a file (root ignores chmod)
    fails(root, "train-000001.tar", "cannot be read")


def test_truncated_shard_is_caught_before_the_epoch_starts(tmp_path):
    root = make(tmp_path / "s", sample("b0"), sample("b1"))
    size = os.path.getsize(root / "train-000001.tar")
    with open(root / "train-000001.tar", "r+b") as f:
        f.truncate(size // 2)
    fails(root, "train-000001.tar", "truncated")


def test_shard_listed_in_the_manifest_but_missing_or_miscounted(tmp_path):
    root = make(tmp_path / "s", sample("b0"))
    manifest = {"splits": {"train": {"shards": [{"name": "train-000000.tar", "samples": 3},
                                                {"name": "train-000001.tar", "samples": 2}]}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    fails(root, "train-000001.tar", "manifest.json", "1 samples")
    os.remove(root / "train-000001.tar")
    fails(root, "train-000001.tar", "missing")


@pytest.mark.parametrize("member", ["jpg", "lbl"])
def test_sample_without_a_needed_member(tmp_path, member):
    root = make(tmp_path / "s", sample("b0"), sample("lacking", **{member: None}), sample("b2"))
    fails(root, "train-000001", "lacking")


def test_jpeg_that_does_not_decode(tmp_path):
    root = make(tmp_path / "s", sample("b0"), sample("garbage", jpg=b"\xff\xd8\xff\xe0 not a jpeg" * 20))
    fails(root, "train-000001.tar", "garbage", "does not decode")


def test_truncated_jpeg(tmp_path):
    jpeg = pipeline_noise_jpeg(3)
    root = make(tmp_path / "s", sample("cut", jpg=jpeg[: len(jpeg) // 2]), split="val")
    fails(root, "val-000001.tar", "cut", "does not decode", loader=eval_loader)


@pytest.mark.parametrize("name", ["pca.json", "mean.npy"])
def test_missing_statistics(tmp_path, name):
    root = make(tmp_path / "s")
    os.remove(root / name)
    fails(root, name, "pca-stats")


def test_mean_npy_not_needed_for_channel_normalisation(tmp_path):
    root = make(tmp_path / "s")
    os.remove(root / "mean.npy")
    assert len(list(train_loader(str(root), batch_size=2, mean="channel", **CPU))) == 2


def test_malformed_statistics(tmp_path):
    root = make(tmp_path / "s")
    (root / "pca.json").write_text(json.dumps({"mean": [1, 2], "std": [1, 1, 1]}))
    fails(root, "pca.json", "mean")


def test_gpu_requested_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU box runs this test too
    fails(make(tmp_path / "s"), "CUDA", device="gpu")


@pytest.mark.parametrize(("option", "value"), [("dtype", "int8"), ("mean", "pixel"), ("lighting", "pca"),
                                               ("crop", "ten"), ("device", "tpu"), ("shard_id", 2)])
def test_unknown_option_values_fail_before_any_work(tmp_path, option, value):
    root = make(tmp_path / "s")
    shutil.rmtree(root)  # options are checked before the folder is looked at
    fails(root, option, **{option: value})
