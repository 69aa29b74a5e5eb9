"""What a run leaves for its users besides checkpoints: best.pt / final.pt weights, --init-from.

Fast: the fake loaders and tiny model of test_train_faults.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_train_faults import ARGS, Tiny, cli, install_tiny, one_line_error
from trainer import checkpoint, metrics


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    install_tiny(monkeypatch)


def classes(shards: Path) -> int:
    return len(json.loads((shards / "manifest.json").read_text())["classes"])


def test_best_and_final_are_plain_state_dicts(sample_shards: Path, tmp_path: Path, tiny: None) -> None:
    run = tmp_path / "run"
    result = cli("--shards", str(sample_shards), "--out", str(run), *ARGS, "--epochs", "3")
    assert result.exit_code == 0, result.output
    final = torch.load(run / "final.pt", weights_only=True)
    best = torch.load(run / "best.pt", weights_only=True)
    # final.pt is the last checkpoint's model, CPU tensors, nothing else in the file.
    last = checkpoint.load_latest(run)[0]["model"]
    assert final.keys() == last.keys()
    assert all(torch.equal(final[k], last[k]) and final[k].device.type == "cpu" for k in final)
    Tiny(classes(sample_shards)).load_state_dict(best)
    assert len([r for r in metrics.read(run) if r["kind"] == "epoch"]) == 3
    assert "best.pt" in result.output and "final.pt" in result.output


def test_best_is_the_epoch_with_the_lowest_val_error(sample_shards: Path, tmp_path: Path, tiny: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch 1 is made the best by a scripted validation; epoch 2's weights must not replace it."""
    from trainer import train

    errs = iter([0.5, 0.2, 0.9])
    real = train.evaluate
    saved: dict[int, dict[str, torch.Tensor]] = {}

    def scripted(model: torch.nn.Module, *a: object, **k: object) -> dict[str, float]:
        out = real(model, *a, **k)
        saved[len(saved)] = {n: v.clone() for n, v in model.state_dict().items()}
        return {**out, "val_top1_err": next(errs)}

    monkeypatch.setattr(train, "evaluate", scripted)
    run = tmp_path / "run"
    result = cli("--shards", str(sample_shards), "--out", str(run), *ARGS, "--epochs", "3")
    assert result.exit_code == 0, result.output
    best = torch.load(run / "best.pt", weights_only=True)
    assert all(torch.equal(best[k], saved[1][k]) for k in best)
    assert not all(torch.equal(best[k], saved[2][k]) for k in best)


def test_init_from_same_classes_starts_from_the_weights(sample_shards: Path, tmp_path: Path,
                                                        tiny: None) -> None:
    source = Tiny(classes(sample_shards))
    torch.nn.init.constant_(source.net[3].weight, 0.125)
    weights = tmp_path / "w.pt"
    torch.save(source.state_dict(), weights)
    result = cli("--shards", str(sample_shards), "--out", str(tmp_path / "run"), *ARGS, "--epochs", "1",
                 "--lr", "1e-9", "--init-from", str(weights))
    assert result.exit_code == 0, result.output
    w = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["net.3.weight"]
    assert torch.allclose(w, torch.full_like(w, 0.125), atol=1e-6)  # lr 1e-9: still the loaded weights
    assert "replaced" not in result.output


def test_init_from_other_class_count_replaces_the_classifier(sample_shards: Path, tmp_path: Path,
                                                             tiny: None) -> None:
    n = classes(sample_shards)
    source = Tiny(n + 3)
    torch.nn.init.constant_(source.net[3].weight, 0.125)
    weights = tmp_path / "w.pt"
    torch.save(source.state_dict(), weights)
    result = cli("--shards", str(sample_shards), "--out", str(tmp_path / "run"), *ARGS, "--epochs", "1",
                 "--init-from", str(weights))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "--init-from" in line]
    assert len(lines) == 1 and f"{n + 3} classes" in lines[0] and "net.3 is replaced" in lines[0]
    w = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["net.3.weight"]
    assert w.shape[0] == n


def test_init_from_a_full_checkpoint_or_bad_file(sample_shards: Path, tmp_path: Path, tiny: None) -> None:
    first = tmp_path / "first"
    assert cli("--shards", str(sample_shards), "--out", str(first), *ARGS, "--epochs", "1").exit_code == 0
    ckpt = checkpoint.complete(first)[0]
    result = cli("--shards", str(sample_shards), "--out", str(tmp_path / "b"), *ARGS, "--epochs", "1",
                 "--init-from", str(ckpt))
    assert result.exit_code == 0, result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torch")
    result = cli("--shards", str(sample_shards), "--out", str(tmp_path / "c"), *ARGS, "--init-from", str(bad))
    one_line_error(result, 2, f"--init-from: {bad}: not a readable weights file")
    assert not (tmp_path / "c").exists()
    other = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    result = cli("--shards", str(sample_shards), "--out", str(tmp_path / "d"), *ARGS,
                 "--init-from", str(other))
    one_line_error(result, 2, "does not fit this model (missing net.3.weight, unexpected conv1.weight")
    assert not (tmp_path / "d").exists()


def test_alexnet_loads_final_pt(tmp_path: Path) -> None:
    """The weights file of a real AlexNet loads into trainer.model.AlexNet with weights_only=True."""
    from trainer.model import AlexNet

    model = AlexNet(num_classes=5, devices=("cpu",), init="kaiming")
    path = checkpoint.save_weights(tmp_path / "final.pt", model.state_dict())
    again = AlexNet(num_classes=5, devices=("cpu",))
    again.load_state_dict(torch.load(path, weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


TRAIN_SCRIPT = """
import torch
from tests import fakes
from tests.test_train_faults import Tiny
from trainer import train
from trainer.state import Position
model = Tiny(3)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
loader = fakes.FakeTrainLoader(8, 4, 3)
train.train_one_epoch(model, opt, loader.epoch(0), Position(), torch.device("cpu"), global_batch=4,
                      log_every=50, total=len(loader), progress=True)
"""


@pytest.mark.parametrize("disable", ["1", ""])
def test_train_bar_honours_tqdm_disable(disable: str) -> None:
    """--progress (the default) shows the bar unless TQDM_DISABLE=1 (read by tqdm at import: a fresh
    process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    if disable:
        env["TQDM_DISABLE"] = disable
    out = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT], cwd=Path(__file__).resolve().parent.parent,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert ("epoch 0:" in out.stderr) == (not disable), out.stderr


def test_tensorboard_tags_settings_and_hparams(sample_shards: Path, tmp_path: Path, tiny: None) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    result = cli("--shards", str(sample_shards), "--out", str(run), *ARGS, "--ten-crop", "--lr", "0.02",
                 "--note", "a note")
    assert result.exit_code == 0, result.output
    acc = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    intervals = {tag for tag in metrics.TB_TAGS.values() if tag.endswith("_interval")}
    assert scalars == set(metrics.TB_TAGS.values()) - intervals  # --log-every 50: no interval ends
    per_epoch = acc.Scalars("speed/images_per_s")
    assert len(per_epoch) == 2 and all(e.value > 0 for e in per_epoch)
    assert len(acc.Scalars("speed/data_wait")) == 2
    assert len(acc.Scalars("error/train_top1")) == 2
    text = acc.Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| lr | 0.02 | 0.01 |" in text and "a note" in text and "train_hash" in text
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == 0.02
    assert start.session_start_info.hparams["init"].string_value == "kaiming"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert tags >= {"error/val_top1", "error/ten_crop_top1"}


def test_resumed_run_keeps_the_earlier_best(sample_shards: Path, tmp_path: Path, tiny: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The best epoch before a stop stays best.pt when the resumed run's epochs are worse."""
    from trainer import train

    errs = iter([0.2, 0.5, 0.4])
    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: {**real(*a, **k), "val_top1_err": next(errs)})
    run = tmp_path / "run"
    first = cli("--shards", str(sample_shards), "--out", str(run), *ARGS, "--epochs", "3", "--max-steps", "2")
    assert first.exit_code == 0, first.output
    before = torch.load(run / "best.pt", weights_only=True)
    again = cli("--shards", str(sample_shards), "--out", str(run), *ARGS, "--epochs", "3", "--resume")
    assert again.exit_code == 0, again.output
    best = torch.load(run / "best.pt", weights_only=True)
    final = torch.load(run / "final.pt", weights_only=True)
    assert all(torch.equal(best[k], before[k]) for k in best)
    assert not all(torch.equal(best[k], final[k]) for k in best)
