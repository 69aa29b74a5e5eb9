"""alexnet-train / alexnet-eval end to end on the session's sample shards (real DALI CPU pipeline),
and every bad input ending in a one-line error with nothing written.

`demo_run` trains once per module (4 epochs of 47 images at batch 8, kaiming init: ~30-60 s on 2
cores); the other tests read it, or copy its small files.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.tolerance import forward_rtol
from trainer import checkpoint, distributed, metrics, placement
from trainer.cli import eval_main, main, report_main
from trainer.model import AlexNet

# A validation loss computed at another batch size or over two processes: the same float32 forward
# pass in another order (tests/tolerance.py), a relative error of the logits that the cross-entropy
# carries to the loss at about the same relative size.
EVAL_RTOL = forward_rtol(AlexNet(num_classes=4, devices=("cpu",)), passes=2)

DEMO = ["--epochs", "4", "--batch-size", "8", "--init", "kaiming", "--log-every", "1", "--devices", "cpu",
        "--precision", "fp32", "--no-progress"]


def train(*args: str) -> object:
    return CliRunner().invoke(main, list(args))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Name -> (size, mtime_ns) of everything under `folder`: to show nothing was touched."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_run(sample_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "demo"
    result = train("--shards", str(sample_shards), "--out", str(run), *DEMO)
    assert result.exit_code == 0, result.output
    return run


def test_training_loss_falls(demo_run: Path) -> None:
    epochs = [r for r in metrics.read(demo_run) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    first, last = epochs[0]["train_loss"], epochs[-1]["train_loss"]
    assert first == pytest.approx(math.log(4), abs=0.1)  # 4 classes: chance at the start
    assert last < 0.9 * first, [r["train_loss"] for r in epochs]
    assert all(0 <= r["data_wait"] < 1 and r["images_per_s"] > 0 for r in epochs)


def test_run_folder_holds_the_evidence(demo_run: Path, sample_shards: Path) -> None:
    params = json.loads((demo_run / "params.json").read_text())
    assert params["config"]["init"] == "kaiming" and params["config"]["mean"] == "channel"
    assert params["config"]["batch_size"] == 8 and params["world_size"] == 1
    assert params["git"] and len(params["shards"]["train_hash"]) == 64
    assert params["shards"]["manifest_sha256"] == hashlib.sha256(
        (sample_shards / "manifest.json").read_bytes()).hexdigest()
    assert params["shards"]["classes"] == 4
    assert list((demo_run / "tb").glob("events.out.tfevents.*"))
    records = metrics.read(demo_run)
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, 25))  # 47 images / batch 8 -> 6 steps per epoch (last one padded)
    final = records[-1]
    assert final["kind"] == "final" and final["ten_crop_samples"] == 16
    assert [p.name for p in checkpoint.complete(demo_run)] == ["step-00000024.pt", "step-00000018.pt"]


def test_eval_matches_training_and_sees_every_image_once(demo_run: Path, sample_shards: Path) -> None:
    records = metrics.read(demo_run)
    last_epoch = [r for r in records if r["kind"] == "epoch"][-1]
    final = records[-1]
    for extra, expected in (([], last_epoch), (["--ten-crop"], {k.replace("ten_crop_", "val_"): v
                                                               for k, v in final.items()})):
        result = CliRunner().invoke(eval_main, ["--checkpoint", str(demo_run), "--shards", str(sample_shards),
                                                "--batch-size", "6", "--devices", "cpu",
                                                "--precision", "fp32", "--json", *extra])
        assert result.exit_code == 0, result.output
        got = json.loads(result.output.strip().splitlines()[-1])
        assert "warning" not in result.output
        assert got["val_samples"] == 16  # batches of 6: the last one is padded, padding not counted
        assert got["val_top1_err"] == expected["val_top1_err"]
        assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=EVAL_RTOL)


def test_eval_caps_the_batch_at_the_split(demo_run: Path, sample_shards: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """--batch-size 100000 on 16 images: the loader gets 16 (it pads every batch to full size, so the
    request grew to 12.8 GB), and the numbers are those of any other batch size."""
    import pipeline

    asked = []
    real = pipeline.eval_loader

    def eval_loader(*a: object, **k: object) -> object:
        asked.append(k["batch_size"])
        assert k["batch_size"] <= 16, "an uncapped batch: would allocate GBs of padding"
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "eval_loader", eval_loader)
    got = []
    for batch in ("100000", "6"):
        result = CliRunner().invoke(eval_main, ["--checkpoint", str(demo_run), "--shards", str(sample_shards),
                                                "--batch-size", batch, "--devices", "cpu",
                                                "--precision", "fp32", "--json"])
        assert result.exit_code == 0, result.output
        got.append(json.loads(result.output.strip().splitlines()[-1]))
    assert asked == [16, 6]
    assert got[0]["val_samples"] == 16 and got[0]["val_top1_err"] == got[1]["val_top1_err"]


def test_eval_prints_on_rank_0_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer import evaluate

    result_of_every_rank = {"val_samples": 16, "val_top1_err": 0.5, "val_top5_err": 0.0, "val_loss": 1.0}
    monkeypatch.setattr(evaluate, "main", lambda *a, **k: result_of_every_rank)
    args = ["--checkpoint", "c", "--shards", "s", "--json"]
    for rank, lines in (("1", 0), ("0", 1)):
        result = CliRunner().invoke(eval_main, args, env={"RANK": rank, "WORLD_SIZE": "2"})
        assert result.exit_code == 0, result.output
        assert len(result.output.strip().splitlines()) == lines, (rank, result.output)


@pytest.mark.slow  # ~20 s; the default run checks the reduction with test_distributed.py's fakes
def test_eval_under_torchrun_counts_each_image_once(demo_run: Path, sample_shards: Path) -> None:
    """2 gloo processes, 8 images each in batches of 3 (padded): the exact totals of one process."""
    one = CliRunner().invoke(eval_main, ["--checkpoint", str(demo_run), "--shards", str(sample_shards),
                                         "--devices", "cpu", "--precision", "fp32", "--json"])
    assert one.exit_code == 0, one.output
    expected = json.loads(one.output.strip().splitlines()[-1])
    script = Path(sys.executable).parent / "alexnet-eval"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), "--checkpoint", str(demo_run), "--shards", str(sample_shards), "--batch-size", "6",
           "--devices", "cpu", "--precision", "fp32", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1  # every rank holds the reduced totals; rank 0 alone prints them
    assert "warning" not in done.stderr
    got = results[0]
    assert got["val_samples"] == 16 and got["val_top1_err"] == expected["val_top1_err"]
    assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=EVAL_RTOL)


def test_resume_mid_epoch_gives_the_uninterrupted_losses(demo_run: Path, sample_shards: Path,
                                                        tmp_path: Path) -> None:
    """Stop inside epoch 1 (DALI's pipeline state in the checkpoint), resume: the same per-step
    losses and validation numbers as the uninterrupted demo run, to 1e-6."""
    run = tmp_path / "cut"
    args = ["--shards", str(sample_shards), "--out", str(run), "--epochs", "2", *DEMO[2:], "--no-ten-crop",
            "--checkpoint-every", "4"]
    result = train(*args, "--max-steps", "9")
    assert result.exit_code == 0, result.output
    assert [p.name for p in checkpoint.complete(run)] == ["step-00000009.pt", "step-00000008.pt"]
    result = train(*args, "--resume")
    assert result.exit_code == 0, result.output

    def numbers(folder: Path) -> dict[tuple[str, int], float]:
        return {(r["kind"], r["step"]): r["loss"] if r["kind"] == "train" else r["val_loss"]
                for r in metrics.read(folder) if r["kind"] in ("train", "epoch") and r["epoch"] < 2}

    resumed, whole = numbers(run), numbers(demo_run)
    assert resumed.keys() == whole.keys() and len(resumed) == 14
    for key, value in whole.items():
        assert resumed[key] == pytest.approx(value, abs=1e-6), key


def test_report_of_a_real_run(demo_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "demo"
    run.mkdir()
    for name in ("params.json", "metrics.jsonl"):
        shutil.copy(demo_run / name, run / name)
    result = CliRunner().invoke(report_main, [str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "curves.png").stat().st_size > 10_000
    summary = (run / "summary.md").read_text()
    assert "10-crop, final (§6)" in summary and "`--init kaiming`" in summary


# ---- bad input: one line, non-zero exit, nothing written -------------------------------------------


def assert_usage_error(result: object, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_shards(tmp_path: Path) -> None:
    result = train("--shards", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), *DEMO)
    assert_usage_error(result, "no manifest (run `alexnet-prep shard` first")
    assert not (tmp_path / "run").exists()


def test_missing_stats(sample_shards: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    shutil.copy(sample_shards / "manifest.json", shards)
    result = train("--shards", str(shards), "--out", str(tmp_path / "run"), *DEMO)
    assert_usage_error(result, "pca.json is missing (run `alexnet-prep pca-stats")
    assert not (tmp_path / "run").exists()


def test_devices_naming_an_absent_gpu(sample_shards: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a GPU box runs this test too
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = str(tmp_path / "run")
    result = train("--shards", str(sample_shards), "--out", out, "--devices", "cuda:0,cuda:1")
    assert_usage_error(result, "--devices: cuda:0 is not available (this machine has 0 CUDA device(s))")
    result = train("--shards", str(sample_shards), "--out", out, "--devices", "tpu:0")
    assert_usage_error(result, "--devices: 'tpu:0' is not a device name")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("visible, local_rank, local_size, expected", [
    (1, 3, 4, ("cuda:0",)),  # a launcher gave each of 4 processes its own GPU (issue 8: it chose the CPU)
    (2, 1, 4, ("cuda:0", "cuda:1")),  # ... or its own two
    (1, 0, 1, ("cuda:0",)),
    (2, 0, 1, ("cuda:0", "cuda:1")),  # the paper's split
    (8, 1, 4, ("cuda:2", "cuda:3")),  # 4 processes share 8 GPUs: local rank 1 takes the second pair
    (4, 3, 4, ("cuda:3",)),  # ... share 4: one each
])
def test_default_devices_never_leave_a_visible_gpu_for_the_cpu(monkeypatch, visible, local_rank, local_size,
                                                               expected) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    world = distributed.World(rank=local_rank, size=local_size, local_rank=local_rank, local_size=local_size)
    assert placement.replica((), world) == expected
    # The same GPUs named explicitly, as local rank 0 would name them.
    named = placement.default_devices(distributed.World(local_size=local_size))
    assert placement.replica(named, world) == expected


def test_no_visible_gpu_means_the_cpu_with_a_warning(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.warns(UserWarning, match="no GPU visible .*running on the CPU"):
        assert placement.replica((), distributed.World()) == ("cpu",)


def test_help_states_the_default_placement_and_why() -> None:
    text = " ".join(train("--help").output.split())
    assert "two GPUs per process when every process on the node can have two (the paper's split" in text
    assert "a process that sees a GPU, e.g. one a launcher gave it, always uses it" in text
    assert "the CPU only when no GPU is visible" in text


def test_bad_values_fail_at_start_up(sample_shards: Path, tmp_path: Path) -> None:
    for args, message in ((["--lr", "-1"], "--lr must be positive"),
                          (["--lr-policy", "cosine"], "'cosine' is not one of 'plateau', 'step'"),
                          (["--lr-milestones", "30,10"], "--lr-milestones must be increasing"),
                          (["--devices", "cpu,cpu,cpu"], "--devices takes at most 2 devices")):
        result = train("--shards", str(sample_shards), "--out", str(tmp_path / "run"), *args)
        assert_usage_error(result, message)
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten(demo_run: Path, sample_shards: Path) -> None:
    before = snapshot(demo_run)
    result = train("--shards", str(sample_shards), "--out", str(demo_run), *DEMO)
    assert_usage_error(result, "already holds a run; pass --resume to continue it")
    result = train("--shards", str(sample_shards), "--out", str(demo_run), *DEMO[:2], "--batch-size", "16",
                   *DEMO[4:], "--resume")
    assert_usage_error(result, "--resume: --batch-size is 16 but the run")
    assert snapshot(demo_run) == before


def test_resume_without_checkpoint(sample_shards: Path, tmp_path: Path) -> None:
    result = train("--shards", str(sample_shards), "--out", str(tmp_path / "run"), *DEMO, "--resume")
    assert_usage_error(result, "has no checkpoint to resume from")
    assert not (tmp_path / "run").exists()


def damaged_copy(run: Path, dest: Path) -> Path:
    """`run`'s small files, and its checkpoints cut to 1 MB under their intact markers."""
    (dest / "checkpoints").mkdir(parents=True)
    for name in ("params.json", "metrics.jsonl"):
        shutil.copy(run / name, dest / name)
    for pt in checkpoint.complete(run):
        shutil.copy(pt.with_suffix(".json"), dest / "checkpoints")
        with open(pt, "rb") as src:
            (dest / "checkpoints" / pt.name).write_bytes(src.read(1 << 20))
    return dest


def test_corrupt_checkpoints_are_an_error_not_a_fresh_start(demo_run: Path, sample_shards: Path,
                                                           tmp_path: Path) -> None:
    run = damaged_copy(demo_run, tmp_path / "run")
    before = snapshot(run)
    result = train("--shards", str(sample_shards), "--out", str(run), *DEMO, "--resume")
    assert_usage_error(result, "no usable checkpoint (step-00000024.pt: sha256 does not match")
    assert snapshot(run) == before
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(run / "checkpoints" / "step-00000024.pt"),
                                            "--shards", str(sample_shards), "--devices", "cpu"])
    assert_usage_error(result, "--checkpoint: ")
    assert "damaged file" in result.output


@pytest.mark.slow
def test_resume_falls_back_past_a_damaged_latest_checkpoint(demo_run: Path, sample_shards: Path,
                                                           tmp_path: Path) -> None:
    """The newest checkpoint is damaged: resume from the one before, with a warning, and redo the
    last epoch to the same numbers."""
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    latest = run / "checkpoints" / "step-00000024.pt"
    latest.write_bytes(latest.read_bytes()[: 1 << 20])
    result = train("--shards", str(sample_shards), "--out", str(run), *DEMO, "--resume")
    assert result.exit_code == 0, result.output
    assert "warning: skipped damaged checkpoint(s)" in result.output
    assert "resuming from step-00000018.pt" in result.output
    old = [r for r in metrics.read(demo_run) if r["kind"] in ("train", "epoch")]
    new = [r for r in metrics.read(run) if r["kind"] in ("train", "epoch")]
    assert [r.get("loss", r.get("val_loss")) for r in new] == pytest.approx(
        [r.get("loss", r.get("val_loss")) for r in old], abs=1e-6)


# ---- the paper's experiments: switches end to end, §6 ensembles -------------------------------------

SWITCH_FLAGS = ["--norm", "batch", "--pool", "nonoverlap", "--columns", "1", "--dropout", "0.3",
                "--lighting", "off", "--augment", "none", "--activation", "tanh", "--conv6"]


@pytest.mark.slow  # a 1-epoch run (~15 s on 2 cores); the default run checks each piece separately below
def test_a_run_with_every_switch(sample_shards: Path, tmp_path: Path) -> None:
    """Recorded in params.json and the checkpoint, listed by the report with reasons, and
    alexnet-eval of the run gives the run's own last validation numbers."""
    run = tmp_path / "switches"
    result = train("--shards", str(sample_shards), "--out", str(run), *DEMO[2:], "--epochs", "1",
                   "--no-ten-crop", *SWITCH_FLAGS)
    assert result.exit_code == 0, result.output
    expected = {"norm": "batch", "pool": "nonoverlap", "columns": 1, "dropout": 0.3, "lighting": "off",
                "augment": "none", "activation": "tanh", "conv6": True}
    params = json.loads((run / "params.json").read_text())["config"]
    assert {k: params[k] for k in expected} == expected
    state = checkpoint.load(checkpoint.complete(run)[0])
    assert {k: state["config"][k] for k in expected} == expected
    assert CliRunner().invoke(report_main, [str(run)]).exit_code == 0
    summary = (run / "summary.md").read_text()
    for line in ("`--norm batch` (default `--norm lrn`): §3.3", "`--columns 1` (default `--columns 2`): §3.2",
                 "`--augment none` (default `--augment full`): §4.1",
                 "`--activation tanh` (default `--activation relu`): §3.1",
                 "`--conv6` (default `--no-conv6`): §6's sixth conv layer over the last pooling layer; "
                 "a choice the paper does not specify"):
        assert line in summary
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(run), "--shards", str(sample_shards),
                                            "--batch-size", "8", "--devices", "cpu", "--precision", "fp32",
                                            "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output.strip().splitlines()[-1])
    last = [r for r in metrics.read(run) if r["kind"] == "epoch"][-1]
    assert got["val_top1_err"] == last["val_top1_err"]
    assert got["val_loss"] == pytest.approx(last["val_loss"], rel=EVAL_RTOL)


def test_resume_refuses_a_changed_switch(demo_run: Path, sample_shards: Path) -> None:
    before = snapshot(demo_run)
    for flag, value, saved in (("--norm", "none", "lrn"), ("--columns", "1", "2"),
                               ("--augment", "none", "full"), ("--activation", "tanh", "relu")):
        result = train("--shards", str(sample_shards), "--out", str(demo_run), *DEMO, "--resume", flag, value)
        assert_usage_error(result, f"--resume: {flag} is {value} but the run in {demo_run} used {saved}")
    result = train("--shards", str(sample_shards), "--out", str(demo_run), *DEMO, "--resume", "--conv6")
    assert_usage_error(result, f"--resume: --conv6 is True but the run in {demo_run} used False")
    assert snapshot(demo_run) == before


def test_eval_rebuilds_the_runs_network(sample_shards: Path, tmp_path: Path) -> None:
    """A checkpoint of a net with every architecture switch changed: alexnet-eval builds that net
    (the strict state-dict load would fail otherwise) with its pooling, and gives its numbers."""
    import pipeline
    from trainer.config import TrainConfig
    from trainer.evaluate import evaluate
    from trainer.model import AlexNet

    classes = len(json.loads((sample_shards / "manifest.json").read_text())["classes"])
    cfg = TrainConfig(shards=str(sample_shards), out="", init="kaiming", norm="batch", pool="nonoverlap",
                      columns=1, dropout=0.3, lighting="off", activation="tanh", conv6=True)
    torch.manual_seed(0)
    model = AlexNet(num_classes=classes, devices=("cpu",), init="kaiming", norm="batch", pool="nonoverlap",
                    columns=1, dropout=0.3, activation="tanh", conv6=True)
    path = tmp_path / "step-00000001.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "num_classes": classes}, path)
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(path), "--shards", str(sample_shards),
                                            "--devices", "cpu", "--precision", "fp32", "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output.strip().splitlines()[-1])
    loader = pipeline.eval_loader(str(sample_shards), batch_size=128, device="cpu", mean=cfg.mean)
    expected = evaluate(model, loader, "cpu")
    assert got["val_samples"] == expected["val_samples"] == 16
    assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)
    overlapping = AlexNet(num_classes=classes, devices=("cpu",), norm="batch", columns=1, activation="tanh",
                          conv6=True)
    overlapping.load_state_dict(model.state_dict())  # the same weights with the paper's pooling
    assert evaluate(overlapping, loader, "cpu")["val_loss"] != pytest.approx(got["val_loss"], rel=1e-3)


def test_eval_of_an_ensemble_reports_each_model_and_the_mean(demo_run: Path, sample_shards: Path) -> None:
    """Two checkpoints of the demo run: each member's numbers are what alexnet-eval gives it alone."""
    earlier = checkpoint.complete(demo_run)[-1]
    common = ["--shards", str(sample_shards), "--devices", "cpu", "--precision", "fp32", "--batch-size", "6"]
    alone = []
    for ckpt in (earlier, demo_run):
        result = CliRunner().invoke(eval_main, ["--checkpoint", str(ckpt), *common, "--json"])
        assert result.exit_code == 0, result.output
        alone.append(json.loads(result.output.strip().splitlines()[-1]))
    args = ["--checkpoint", str(earlier), "--checkpoint", str(demo_run), *common]
    result = CliRunner().invoke(eval_main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output.strip().splitlines()[-1])
    assert [m.pop("checkpoint") for m in got["members"]] == [str(earlier), str(demo_run)]
    for member, single in zip(got["members"], alone, strict=True):
        assert member["val_samples"] == 16 and member["val_top1_err"] == single["val_top1_err"]
        assert member["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
    assert got["ensemble"]["val_samples"] == 16
    text = CliRunner().invoke(eval_main, [*args, "--no-progress"])
    assert text.exit_code == 0, text.output
    lines = text.output.strip().splitlines()
    assert lines[0] == "16 images (centre crop), 2 models:"
    assert lines[1].startswith(f"  {earlier}: top-1 error") and lines[2].startswith(f"  {demo_run}: top-1")
    assert lines[3].startswith("  ensemble (mean of 2 softmaxes): top-1 error")
