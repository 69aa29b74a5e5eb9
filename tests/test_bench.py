"""`alexnet-bench pipeline` and `alexnet-bench train`: their --json figures, --copies, and the checks
made before any work. Tiny sizes on the CPU (batches of 2-4, one or two timed steps): the figures
themselves mean nothing here, only their shape."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from pipeline.bench import command as pipeline_bench
from pipeline.bench import repeated
from tests.conftest import SAMPLE
from trainer.benchmarks.bench import command as train_bench


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


def clock(*stamps: float) -> SimpleNamespace:
    """A stand-in for a bench module's `time`: perf_counter returns `stamps` in turn, so that each
    timed pass lasts a duration the test chose and its figures can be worked out by hand."""
    it = iter(stamps)
    return SimpleNamespace(perf_counter=lambda: next(it))


def test_pipeline_bench_writes_json(pipeline_shards: tuple[Path, dict], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.bench

    root, _ = pipeline_shards
    # Passes of (a), 1 batch of 4 images: 0.5 s and 0.25 s; of (b), 2 batches: 0.2 s and 0.4 s.
    monkeypatch.setattr(pipeline.bench, "time", clock(0, 0.5, 10, 10.25, 20, 20.2, 30, 30.4))
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
    assert a["passes"] == pytest.approx([4 / 0.5, 4 / 0.25]) and a["images_per_s"] == pytest.approx(12)
    assert b["passes"] == pytest.approx([8 / 0.2, 8 / 0.4]) and b["images_per_s"] == pytest.approx(30)
    assert figures["ratio"] == pytest.approx(2.5)


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
    from trainer import build, distributed
    from trainer.benchmarks.bench import synthetic_batch
    from trainer.config import TrainConfig

    root, _ = pipeline_shards
    cfg = TrainConfig(shards=str(root), out="", batch_size=4, devices=("cpu",), precision=precision,
                      channels_last=channels_last)
    world = distributed.World()
    loader, _ = build.load_data(cfg, world, cfg.devices)
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


def test_prep_bench_reports_interleaved_per_core_ratio_load_and_psnr(monkeypatch: pytest.MonkeyPatch) -> None:
    """`alexnet-prep bench` on a handful of images: the shape of its figures, not their speed."""
    import tools.bench
    from tools.bench import SIZES, report, run

    # Two repeats of 10 images: the reference takes 1 s then 2 s, ours 0.5 s both times.
    monkeypatch.setattr(tools.bench, "time", clock(0, 1, 10, 10.5, 20, 22, 30, 30.5))
    large = sum(n for (w, h), n in SIZES if w * h > 640 * 480)
    assert 0 < large / sum(n for _, n in SIZES) <= 0.05  # ImageNet-like: a few per cent large
    r = run(n=10, repeats=2, workers=1)
    runs = r["runs"]
    assert runs["reference"] == pytest.approx([10, 5]) and runs["ours_1"] == pytest.approx([20, 20])
    ratios = [2.0, 4.0]
    assert r["per_core_ratio"] == pytest.approx(3.0)
    assert r["psnr_vs_reference"] >= 35  # the bar for the stored images against the naive path
    assert len(r["load_before"]) == len(r["load_after"]) == 3
    text = report(r)
    assert "load average (1, 5, 15 min): before " in text and "1600x1200 x1" in text
    assert "per-core ratio by run: " + ", ".join(f"{x:.2f}" for x in ratios) in text


def test_prep_bench_reports_scaling_with_and_without_worker_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 2 workers the bench times the workers' start-up on its own (one image per worker) and reports
    the scaling of the same runs with that time taken off, beside the raw scaling."""
    import tools.bench
    from tools.bench import report, run

    # 8 images: the reference 1 s, one worker 2 s, two workers 1.5 s, of which 0.5 s is their start.
    monkeypatch.setattr(tools.bench, "time", clock(0, 1, 10, 12, 20, 21.5, 30, 30.5))
    r = run(n=8, repeats=1, workers=2)
    assert r["runs"]["ours_1"] == pytest.approx([4.0]) and r["runs"]["ours_2"] == pytest.approx([8 / 1.5])
    assert r["startup_s"] == pytest.approx(0.5)
    assert r["scaling"] == pytest.approx(4 / 3)  # 8/1.5 against 8/2 images/s
    assert r["steady_scaling"] == pytest.approx(2.0)  # 8 images in 1.5 - 0.5 s against 8 in 2 s
    assert "2.00x without the workers' start-up (0.50 s a run" in report(r)
