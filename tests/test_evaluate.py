"""alexnet-eval's progress bar: on by default, --no-progress and TQDM_DISABLE=1 turn it off."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from tests import fakes
from trainer import checkpoint, evaluate
from trainer.cli import eval_main

ROOT = Path(__file__).resolve().parent.parent


def tiny(classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, classes))


def test_bar_on_stderr_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = tiny(3)
    on = evaluate.evaluate(model, list(fakes.fake_val(10, 4, 3)), "cpu", progress=True)
    err = capsys.readouterr().err
    assert "eval:" in err and "0/3 [" in err  # 10 samples in batches of 4: three batches, total known
    off = evaluate.evaluate(model, list(fakes.fake_val(10, 4, 3)), "cpu", progress=False)
    assert capsys.readouterr().err == ""
    assert on == off


SCRIPT = """
import torch
from torch import nn
from tests import fakes
from trainer.evaluate import evaluate
model = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 3))
evaluate(model, list(fakes.fake_val(10, 4, 3)), "cpu", progress=True)
"""


@pytest.mark.parametrize("disable", ["1", ""])
def test_tqdm_disable_is_honoured(disable: str) -> None:
    """tqdm reads TQDM_DISABLE when it is imported: a fresh process, as a user's shell gives."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    if disable:
        env["TQDM_DISABLE"] = disable
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert ("eval:" in out.stderr) == (not disable), out.stderr


@pytest.mark.parametrize("flag, expected", [([], True), (["--no-progress"], False)])
def test_eval_command_passes_the_flag(monkeypatch: pytest.MonkeyPatch, flag: list[str],
                                     expected: bool) -> None:
    seen: dict[str, Any] = {}

    def main(*a: Any, **k: Any) -> dict[str, float]:
        seen.update(k)
        return {"val_samples": 1, "val_top1_err": 0.0, "val_top5_err": 0.0, "val_loss": 0.0}

    monkeypatch.setattr(evaluate, "main", main)
    result = CliRunner().invoke(eval_main, ["--checkpoint", "x", "--shards", "y", *flag])
    assert result.exit_code == 0, result.output
    assert seen["progress"] is expected


# torchvision.models.alexnet()'s state dict: names and shapes, written out so the test needs no torchvision.
TORCHVISION_SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def test_the_message_quotes_torchvisions_parameter_count() -> None:
    """The figure the message quotes is the count of the shapes above."""
    assert f"{sum(math.prod(s) for s in TORCHVISION_SHAPES.values()):,}" in checkpoint.TORCHVISION


@pytest.mark.parametrize("wrapped", [False, True], ids=["state-dict", "references-checkpoint"])
def test_torchvision_checkpoint_is_explained(sample_shards: Path, tmp_path: Path, wrapped: bool) -> None:
    # Tiny tensors under torchvision's names: detection is by keys, so shapes need not be real.
    state: dict[str, Any] = {k: torch.zeros(1) for k in TORCHVISION_SHAPES}
    if wrapped:  # what torchvision's references/classification/train.py saves
        state = {"model": state, "optimizer": {}, "epoch": 89}
    path = tmp_path / "alexnet-owt.pth"
    torch.save(state, path)
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(path), "--shards", str(sample_shards),
                                            "--devices", "cpu"])
    assert result.exit_code == 2, result.output
    assert "torchvision AlexNet" in result.output and "64/192/384/256/256" in result.output
    assert "61,100,840" in result.output and "60,965,224" in result.output
    assert "not an alexnet-train checkpoint" not in result.output and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "torchvision" in line]
    assert len(errors) == 1 and str(path) in errors[0]


def _run_with_best_pt(tmp_path: Path, num_classes: int) -> Path:
    """A run folder holding only best.pt: a seeded Kaiming-initialized AlexNet's weights."""
    from trainer.model import AlexNet

    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = AlexNet(num_classes=num_classes, devices=("cpu",), init="kaiming")
    checkpoint.save_weights(run / "best.pt", model.state_dict())
    return run


def _write_params(run: Path) -> None:
    """The run's params.json with the training config eval rebuilds the model from."""
    from tools import atomic
    from trainer.config import TrainConfig

    atomic.write_json(str(run / "params.json"),
                      {"config": TrainConfig(shards="", out="", init="kaiming").to_dict()})


def test_eval_of_a_runs_best_pt(sample_shards: Path, tmp_path: Path) -> None:
    run = _run_with_best_pt(tmp_path, num_classes=4)
    args = ["--checkpoint", str(run / "best.pt"), "--shards", str(sample_shards), "--devices", "cpu",
            "--precision", "fp32", "--json", "--no-progress"]
    result = CliRunner().invoke(eval_main, args)
    assert result.exit_code == 2 and "params.json" in result.output and "is not beside it" in result.output
    _write_params(run)
    result = CliRunner().invoke(eval_main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["val_samples"] == 16


def test_eval_of_the_2010_test_split(sample2010_shards: Path, tmp_path: Path) -> None:
    """--split test reads the test shards (9 images; val has 6): one model, and an ensemble with ten crops."""
    run = _run_with_best_pt(tmp_path, num_classes=3)
    _write_params(run)
    common = ["--shards", str(sample2010_shards), "--devices", "cpu", "--precision", "fp32", "--no-progress"]
    one = ["--checkpoint", str(run / "best.pt"), *common]
    seen = {}
    for split in ("val", "test"):
        result = CliRunner().invoke(eval_main, [*one, "--split", split, "--json"])
        assert result.exit_code == 0, result.output
        seen[split] = json.loads(result.output.strip().splitlines()[-1])
    assert (seen["val"]["val_samples"], seen["test"]["val_samples"]) == (6, 9)
    assert (seen["val"]["split"], seen["test"]["split"]) == ("val", "test")
    both = ["--checkpoint", str(run / "best.pt"), *one, "--split", "test", "--ten-crop"]
    result = CliRunner().invoke(eval_main, both)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "9 test images (10-crop), 2 models:"


def test_eval_of_a_split_the_shards_lack(sample_shards: Path) -> None:
    result = CliRunner().invoke(eval_main, ["--checkpoint", "x", "--shards", str(sample_shards), "--split",
                                            "test", "--devices", "cpu"])
    assert result.exit_code == 2, result.output
    assert "--split test:" in result.output and "has no test shards" in result.output
