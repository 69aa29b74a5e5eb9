"""The training loop: resume equality, the lr policies, exact evaluation, and a short real run.

A step of the real AlexNet on 2 CPU cores takes ~1-2 s at batch 8, so these runs are a handful of
steps. Loop-logic tests use the loaders of fakes.py; `test_loss_falls_on_sample_shards`
and `test_resume_with_pipeline` use the real DALI CPU pipeline on the session's sample shards.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

import paper
from tests import fakes
from trainer import checkpoint, metrics, train
from trainer.config import TrainConfig
from trainer.evaluate import evaluate


def small(shards: Path, out: Path, **kw: object) -> TrainConfig:
    base = {"shards": str(shards), "out": str(out), "epochs": 2, "batch_size": 4, "init": "kaiming",
            "devices": ("cpu",), "precision": "fp32", "channels_last": False, "log_every": 1,
            "ten_crop": False, "progress": False}
    return TrainConfig(**{**base, **kw})


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics.read(run) if r["kind"] == "train"}


@pytest.mark.slow  # the default run has the same test with the DALI pipeline (test_cli_train.py)
def test_resume_mid_epoch_equals_uninterrupted(sample_shards: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop at step 3 (mid epoch 1), resume: the same per-step losses and val error as one run."""
    fakes.install(monkeypatch, train_samples=8)  # 2 steps of 4 per epoch
    whole = train.main(small(sample_shards, tmp_path / "whole"))

    cut = tmp_path / "cut"
    train.main(small(sample_shards, cut, max_steps=3))
    assert sorted(losses(cut)) == [1, 2, 3]
    assert [p.name for p in checkpoint.candidates(cut)] == ["step-00000003.pt", "step-00000002.pt"]
    resumed = train.main(small(sample_shards, cut, resume=True))

    assert sorted(losses(cut)) == [1, 2, 3, 4]
    for step, loss in losses(tmp_path / "whole").items():
        assert losses(cut)[step] == pytest.approx(loss, abs=1e-6), step
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-6)
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-6)  # the whole epoch's
    assert resumed["val_top1_err"] == whole["val_top1_err"]
    kinds = [r["kind"] for r in metrics.read(cut)]
    assert kinds.count("epoch") == 2 and kinds.count("resume") == 1


def test_plateau_policy_drops_at_most_lr_drops_times() -> None:
    cfg = TrainConfig(shards="", out="", lr_patience=0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = train.make_scheduler(cfg, opt)
    lrs = []
    for _ in range(8):  # never improving after the first epoch
        train.scheduler_step(sched, 0.5)
        lrs.append(opt.param_groups[0]["lr"])
    assert len({round(lr, 12) for lr in lrs}) == paper.LR_DROPS + 1
    assert lrs[-1] == pytest.approx(paper.LEARNING_RATE * paper.LR_DROP_FACTOR ** paper.LR_DROPS)


def test_step_policy_milestones() -> None:
    cfg = TrainConfig(shards="", out="", lr_policy="step")
    assert cfg.milestones() == (22, 45, 67)  # three drops spread over 90 epochs
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = train.make_scheduler(cfg, opt)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        train.scheduler_step(sched, 0.0)
    assert lrs[21] == cfg.lr and lrs[22] == pytest.approx(cfg.lr * paper.LR_DROP_FACTOR)
    assert lrs[-1] == pytest.approx(cfg.lr * paper.LR_DROP_FACTOR ** 3)


class Fixed(torch.nn.Module):
    """Logits read off the image: class = pixel [0, 0, 0] (a stand-in model for evaluate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long().clamp(0, 5), 6).float() * 10


def test_evaluate_counts_each_sample_once_and_masks_padding() -> None:
    # 5 samples in batches of 2: the last batch has one padding sample, which is wrong on purpose.
    x = torch.zeros(6, 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor([0, 1, 2, 3, 4, 0])
    labels = torch.tensor([0, 1, 2, 3, 3, 5])  # sample 4 is wrong; sample 5 is padding
    batches = [(x[i:i + 2], labels[i:i + 2], torch.tensor([True, i + 1 < 5])) for i in range(0, 6, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate(Fixed(), batches, "cpu", expected=5)
    assert r["val_samples"] == 5 and r["val_top1_err"] == pytest.approx(1 / 5)
    with pytest.warns(UserWarning, match="evaluated 5 samples, but the split has 6"):
        evaluate(Fixed(), batches, "cpu", expected=6)


def test_evaluate_ten_crop_averages_softmax() -> None:
    # Two of ten crops vote for class 1 very confidently, eight weakly for class 0: the mean of the
    # softmax (§6) picks class 1 while a majority vote would pick class 0.
    class Crops(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0, 0, :2]

    x = torch.zeros(1, paper.TEN_CROP, 3, 1, 2)
    x[0, :, 0, 0, 0] = 0.1
    x[0, :2, 0, 0, 1] = 20.0
    r = evaluate(Crops(), [(x, torch.tensor([1]))], "cpu")
    assert r["val_top1_err"] == 0.0


def test_config_round_trip() -> None:
    cfg = TrainConfig(shards="s", out="o", devices=("cuda:0", "cuda:1"), lr_milestones=(3, 5))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert dataclasses.replace(cfg, epochs=3).epochs == 3
