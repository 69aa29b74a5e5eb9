"""`alexnet-bench pipeline` and `alexnet-bench train`: their --json figures, --copies, and the checks
made before any work. Tiny sizes on the CPU (batches of 2-4, one or two timed steps): the figures
themselves mean nothing here, only their shape."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pipeline.bench import command as pipeline_bench
from pipeline.bench import repeated
from tests.conftest import SAMPLE
from trainer.bench import command as train_bench


def test_repeated_lists_every_train_shard_copies_times(pipeline_shards: tuple[Path, dict]) -> None:
    root, _ = pipeline_shards
    tars = sorted(root.glob("train-*.tar"))
    with repeated(str(root), 1) as same:
        assert same == str(root)
    with repeated(str(root), 3) as folder:
        linked = sorted(Path(folder).glob("train-*.tar"))
        assert len(linked) == 3 * len(tars)
        assert [p.resolve() for p in linked] == [t.resolve() for t in tars] * 3
        assert sorted(p.name for p in Path(folder).glob("*.idx")) == [p.stem + ".idx" for p in linked]
        assert (Path(folder) / "pca.json").exists() and (Path(folder) / "mean.npy").exists()
        assert not (Path(folder) / "manifest.json").exists()
    assert not os.path.exists(folder)


def test_pipeline_bench_writes_json(pipeline_shards: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = pipeline_shards
    out = tmp_path / "pipeline.json"
    result = CliRunner().invoke(pipeline_bench, [
        "--shards", str(root), "--batch-size", "4", "--batches", "2", "--baseline-batches", "1",
        "--passes", "2", "--rounds", "1", "--warmup", "0", "--workers", "1", "--copies", "2",
        "--json", str(out)])
    assert result.exit_code == 0, result.output
    for line in ("machine: ", "(a) webdataset + Pillow + NumPy, DataLoader(1 workers):",
                 "(b) pipeline.train_loader (DALI cpu):", "ratio (b)/(a): "):
        assert line in result.output
    figures = json.loads(out.read_text())
    assert figures["bench"] == "pipeline" and figures["device"] == "cpu" and figures["shards"] == str(root)
    assert figures["machine"] in result.output
    settings = figures["settings"]
    assert [settings[k] for k in ("batch_size", "batches", "baseline_batches", "copies")] == [4, 2, 1, 2]
    assert settings["baseline_warmup"] == 2  # one worker's ready queue: PREFETCH_FACTOR batches
    assert settings["fancy_upsampling"] is True  # the loaders' default; --fast-upsampling turns it off
    a, b = figures["hand_written"], figures["ours"]
    assert len(a["passes"]) == len(b["passes"]) == 2
    assert a["images_per_s"] == statistics.median(a["passes"]) > 0
    assert b["images_per_s"] == statistics.median(b["passes"]) > 0
    assert figures["ratio"] == b["images_per_s"] / a["images_per_s"] > 0


def test_pipeline_bench_checks_before_work(pipeline_shards: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = pipeline_shards
    result = CliRunner().invoke(pipeline_bench,
                                ["--shards", str(root), "--json", str(tmp_path / "no" / "p.json")])
    assert result.exit_code == 2 and "--json: the folder of" in result.output
    result = CliRunner().invoke(pipeline_bench, ["--shards", str(tmp_path)])
    assert result.exit_code == 2 and "holds no train-*.tar" in result.output
    result = CliRunner().invoke(pipeline_bench, ["--shards", str(root), "--fast-upsampling"])
    assert result.exit_code == 2 and "--fast-upsampling applies to the GPU decoder only" in result.output


def test_train_bench_writes_json(sample_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    result = CliRunner().invoke(train_bench, [
        "--shards", str(sample_shards), "--devices", "cpu", "--precision", "fp32", "--batch-size", "2",
        "--steps", "1", "--copies", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "pipeline / synthetic: " in result.output and "2 times per epoch" in result.output
    figures = json.loads(out.read_text())
    assert figures["bench"] == "train" and figures["device"] == "cpu" and figures["machine"] in result.output
    train_images = SAMPLE["classes"] * SAMPLE["train_per_class"] - 1  # one truncated JPEG is skipped
    assert figures["settings"] == {
        "precision": "fp32", "channels_last": True, "batch_size": 2, "steps": 1, "warmup": 3,
        "init": "kaiming", "num_classes": SAMPLE["classes"], "copies": 2,
        "batches_per_epoch": math.ceil(2 * train_images / 2), "compile_mode": "none"}
    for kind in ("synthetic", "pipeline"):
        assert figures[kind]["images"] == 2 and figures[kind]["images_per_s"] > 0
        assert 0 <= figures[kind]["data_wait"] < 1
        assert figures[kind]["gpu_throttle"] == 0.0  # no GPU holds the CPU loader back
    assert figures["pipeline_over_synthetic"] == (figures["pipeline"]["images_per_s"]
                                                  / figures["synthetic"]["images_per_s"])


@pytest.mark.parametrize(("precision", "channels_last"), [("bf16", True), ("fp32", True), ("fp32", False)])
def test_train_bench_synthetic_input_is_what_the_loader_yields(pipeline_shards: tuple[Path, dict],
                                                               precision: str, channels_last: bool) -> None:
    # The ceiling's step must do the real step's work: same dtype (no extra cast), same strides (no
    # channels-last copy in to_device), same shape.
    from trainer import distributed, train
    from trainer.bench import synthetic_batch
    from trainer.config import TrainConfig

    root, _ = pipeline_shards
    cfg = TrainConfig(shards=str(root), out="", batch_size=4, devices=("cpu",), precision=precision,
                      channels_last=channels_last)
    world = distributed.World()
    loader, _ = train.load_data(cfg, world, cfg.devices)
    images, labels = next(iter(loader))
    fake_images, fake_labels = synthetic_batch(cfg, world, cfg.devices, num_classes=5)
    assert fake_images.dtype == images.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert fake_images.shape == images.shape and fake_images.stride() == images.stride()
    assert fake_images.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert fake_labels.shape == labels.shape and fake_labels.dtype == labels.dtype


def test_train_bench_without_shards_is_synthetic_only(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    result = CliRunner().invoke(train_bench, ["--devices", "cpu", "--precision", "fp32", "--batch-size", "1",
                                              "--steps", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["pipeline"] is None and figures["pipeline_over_synthetic"] is None
    assert figures["synthetic"]["images"] == 1 and figures["settings"]["batches_per_epoch"] is None


def test_train_bench_checks_json_folder_first(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_bench, ["--devices", "cpu", "--json", str(tmp_path / "no" / "t.json")])
    assert result.exit_code == 2 and "--json: the folder of" in result.output


@pytest.mark.parametrize("mode, expected", [("default", None), ("max-autotune", "max-autotune")])
def test_train_bench_compile_mode_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
                                         expected: str | None) -> None:
    """The switch reaches torch.compile (whose effect only a GPU measures; the CPU run of a real
    compile is test_model.py's test_compiled_model_equals_eager)."""
    import torch

    compiled = []

    def fake_compile(model, mode=None):
        compiled.append((type(model).__name__, mode))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    out = tmp_path / "train.json"
    result = CliRunner().invoke(train_bench, ["--devices", "cpu", "--precision", "fp32", "--batch-size", "1",
                                              "--steps", "1", "--compile-mode", mode, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert compiled == [("AlexNet", expected)]
    assert json.loads(out.read_text())["settings"]["compile_mode"] == mode
    assert f"compile {mode}" in result.output


def test_prep_bench_reports_interleaved_per_core_ratio_load_and_psnr() -> None:
    """`alexnet-prep bench` on a handful of images: the shape of its figures, not their speed."""
    from tools.bench import SIZES, report, run

    large = sum(n for (w, h), n in SIZES if w * h > 640 * 480)
    assert 0 < large / sum(n for _, n in SIZES) <= 0.05  # ImageNet-like: a few per cent large
    r = run(n=10, repeats=2, workers=1)
    runs = r["runs"]
    assert len(runs["reference"]) == len(runs["ours_1"]) == 2
    ratios = [o / a for o, a in zip(runs["ours_1"], runs["reference"])]
    assert r["per_core_ratio"] == statistics.median(ratios)
    assert r["psnr_vs_reference"] >= 35  # the bar for the stored images against the naive path
    assert len(r["load_before"]) == len(r["load_after"]) == 3
    text = report(r)
    assert "load average (1, 5, 15 min): before " in text and "1600x1200 x1" in text
    assert "per-core ratio by run: " + ", ".join(f"{x:.2f}" for x in ratios) in text


def test_prep_bench_reports_scaling_with_and_without_worker_startup() -> None:
    """With 2 workers the bench times the workers' start-up on its own (one image per worker) and reports
    the scaling of the same runs with that time taken off, beside the raw scaling."""
    from tools.bench import report, run

    n = 8
    r = run(n=n, repeats=1, workers=2)
    one, two, startup = r["runs"]["ours_1"][0], r["runs"]["ours_2"][0], r["startup_s"]
    assert 0 < startup < n / two  # the start-up is part of the 2-worker run's time
    assert r["scaling"] == two / one
    assert r["steady_scaling"] == n / (n / two - startup) / one
    assert f"{r['steady_scaling']:.2f}x without the workers' start-up ({startup:.2f} s a run" in report(r)
