"""alexnet-eval's progress bar: on by default, --no-progress and TQDM_DISABLE=1 turn it off."""

from __future__ import annotations

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
from trainer import evaluate
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
