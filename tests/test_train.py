"""The training loop: resume equality, the lr policies, exact evaluation, and a short real run.

A step of the real AlexNet on 2 CPU cores takes ~1-2 s at batch 8, so these runs are a handful of
steps. Loop-logic tests use the loaders of fakes.py; `test_loss_falls_on_sample_shards`
and `test_resume_with_pipeline` use the real DALI CPU pipeline on the session's sample shards.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import paper
from pipeline.loader import PAD_LABEL
from tests import fakes
from trainer import build, checkpoint, distributed, metrics, placement, startup, train
from trainer.config import REASONS, ConfigError, TrainConfig, paper_differences
from trainer.evaluate import evaluate, evaluate_ensemble
from trainer.model import AlexNet
from trainer.step import train_step


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
    assert resumed["train_top1_err"] == whole["train_top1_err"]  # the hits travel in the checkpoint
    kinds = [r["kind"] for r in metrics.read(cut)]
    assert kinds.count("epoch") == 2 and kinds.count("resume") == 1


def test_train_step_counts_the_top1_hits_of_real_samples() -> None:
    """The train error curves.png draws: hits of the step's own forward pass, padding excluded."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the forward below is the step's
    images = torch.randn(8, 3, 2, 2)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, PAD_LABEL, PAD_LABEL])
    predicted = model(images).argmax(1)
    expected = int((predicted[:6] == labels[:6]).sum())
    loss_sum, n, hits = train_step(model, optimizer, images, labels,
                                         lambda d: torch.autocast(d.type, enabled=False)).tolist()
    assert (n, hits) == (6, expected)
    assert train._top1_err(3, 6) == {"top1_err": 0.5}
    assert train._top1_err(float("nan"), 6) == {}  # resumed from a checkpoint that did not count hits


def test_epoch_records_hold_the_train_error(sample_shards: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fakes.install(monkeypatch, train_samples=8)
    result = train.main(small(sample_shards, tmp_path / "run", epochs=1))
    records = metrics.read(tmp_path / "run")
    steps = [r for r in records if r["kind"] == "train"]
    assert all(0 <= r["top1_err"] <= 1 for r in steps)
    # The epoch's error is the sample-weighted mean of its intervals' (equal-sized here).
    assert result["train_top1_err"] == pytest.approx(sum(r["top1_err"] for r in steps) / len(steps))
    # Both input meters in every train and epoch record; no GPU, so nothing held the loop back.
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert epochs and all(0 <= r["data_wait"] < 1 and r["gpu_throttle"] == 0.0 for r in steps + epochs)


def test_plateau_policy_drops_at_most_lr_drops_times() -> None:
    cfg = TrainConfig(shards="", out="", lr_patience=0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build.make_scheduler(cfg, opt)
    lrs = []
    for _ in range(8):  # never improving after the first epoch
        build.scheduler_step(sched, 0.5)
        lrs.append(opt.param_groups[0]["lr"])
    assert len({round(lr, 12) for lr in lrs}) == paper.LR_DROPS + 1
    assert lrs[-1] == pytest.approx(paper.LEARNING_RATE * paper.LR_DROP_FACTOR ** paper.LR_DROPS)


def test_plateau_counts_only_a_gain_of_lr_threshold_as_progress() -> None:
    """--lr-threshold is absolute, in top-1 error: a gain smaller than it is a plateau (the lr drops
    after --lr-patience such epochs), a larger one is progress (the lr stays)."""
    def lrs(threshold: float, errors: list[float]) -> list[float]:
        cfg = TrainConfig(shards="", out="", lr_patience=1, lr_threshold=threshold)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        sched = build.make_scheduler(cfg, opt)
        out = []
        for err in errors:
            build.scheduler_step(sched, err)
            out.append(opt.param_groups[0]["lr"])
        return out

    creeping = [0.50, 0.49, 0.48, 0.47]  # 0.01 an epoch
    lr, drop = paper.LEARNING_RATE, paper.LEARNING_RATE * paper.LR_DROP_FACTOR
    assert lrs(0.0, creeping) == [lr, lr, lr, lr]  # any gain is progress
    # 0.02: epochs 2 and 3 are no progress; after patience 1 the lr drops at epoch 3.
    assert lrs(0.02, creeping) == pytest.approx([lr, lr, drop, drop])
    assert lrs(0.005, creeping) == [lr, lr, lr, lr]


def test_step_policy_milestones() -> None:
    cfg = TrainConfig(shards="", out="", lr_policy="step")
    assert cfg.milestones() == (22, 45, 67)  # three drops spread over 90 epochs
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build.make_scheduler(cfg, opt)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        build.scheduler_step(sched, 0.0)
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


# ---------------------------------------------------------------------------------------------
# The paper's ablations: settings, their wiring into the model, the loader and the optimizer.

SWITCHES = {"norm": "batch", "pool": "nonoverlap", "columns": 1, "dropout": 0.0, "lighting": "off",
            "augment": "none", "activation": "tanh", "conv6": True}


def test_switch_defaults_are_the_papers_and_old_runs_read_as_such() -> None:
    cfg = TrainConfig(shards="s", out="o")
    assert (cfg.norm, cfg.pool, cfg.columns, cfg.dropout, cfg.lighting, cfg.augment, cfg.activation,
            cfg.conv6) == ("lrn", "overlap", 2, paper.DROPOUT, "paper01", "full", "relu", False)
    old = {k: v for k, v in cfg.to_dict().items() if k not in SWITCHES}  # params.json before the switches
    assert TrainConfig.from_dict(old) == cfg
    changed = dataclasses.replace(cfg, **SWITCHES)
    assert TrainConfig.from_dict(changed.to_dict()) == changed


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "layer"}, "--norm must be one of"), ({"pool": "avg"}, "--pool must be one of"),
    ({"columns": 3}, "--columns must be one of"), ({"dropout": 1.0}, r"--dropout must be in \[0, 1\)"),
    ({"lighting": "on"}, "--lighting must be one of"), ({"augment": "some"}, "--augment must be one of"),
    ({"activation": "sigmoid"}, "--activation must be one of"),
    ({"columns": 1, "devices": ("cuda:0", "cuda:1")}, "--columns 1 is a one-device network"),
    ({"augment": "none", "lighting": "cuda-convnet"}, "--augment none already turns lighting off"),
])
def test_bad_switches_fail_at_start_up(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(shards="s", out="o", **kwargs).check()


@pytest.mark.parametrize("kwargs, expected", [
    ({}, {"crop": "random", "mirror": True, "lighting": "paper01"}),
    ({"lighting": "cuda-convnet"}, {"crop": "random", "mirror": True, "lighting": "cuda-convnet"}),
    ({"lighting": "off"}, {"crop": "random", "mirror": True, "lighting": False}),
    ({"augment": "none"}, {"crop": "center", "mirror": False, "lighting": False}),
    ({"augment": "none", "lighting": "off"}, {"crop": "center", "mirror": False, "lighting": False}),
])
def test_lighting_and_augment_reach_the_training_loader(monkeypatch, kwargs: dict, expected: dict) -> None:
    """What each rank's loaders are asked for, written out here (not with loader_args, the code under
    test): rank 1 of 2 takes shard 1 of 2 and half the global batch, and the augmentation switches
    reach the training loader alone."""
    import pipeline

    seen: dict[str, dict] = {}
    monkeypatch.setattr(pipeline, "train_loader", lambda shards, **kw: seen.setdefault("train", kw))
    monkeypatch.setattr(pipeline, "eval_loader", lambda shards, **kw: seen.setdefault("val", kw))
    cfg = TrainConfig(shards="s", out="o", batch_size=64, **kwargs)
    world = distributed.World(rank=1, size=2, local_rank=1, local_size=2)
    _, val = build.load_data(cfg, world, ("cpu",))
    val(False)
    rank = {"batch_size": 32, "device": "cpu", "device_id": None, "shard_id": 1, "num_shards": 2,
            "channels_last": True, "mean": "image", "dtype": "float32"}  # tf32 runs take fp32 input
    assert seen["train"] == {**rank, "seed": 0, "checkpoint": None, **expected}
    assert seen["val"] == {**rank, "crop": "center"}  # the augmentation switches leave it alone


def test_validation_loaders_are_made_once_per_run(monkeypatch) -> None:
    # Each evaluation iterates the same loader again (one pass each), so its DALI pipeline is built
    # once per run (pipeline/loader.py, reuse_pipeline); before, every epoch made a new loader.
    import pipeline

    made: list[dict] = []
    monkeypatch.setattr(pipeline, "train_loader", lambda shards, **kw: object())
    monkeypatch.setattr(pipeline, "eval_loader", lambda shards, **kw: made.append(kw) or object())
    cfg = TrainConfig(shards="s", out="o")
    world = distributed.World(rank=0, size=1, local_rank=0, local_size=1)
    _, val = build.load_data(cfg, world, ("cpu",))
    centre = [val(False) for _ in range(3)]
    ten = [val(True) for _ in range(2)]
    assert all(v is centre[0] for v in centre) and all(v is ten[0] for v in ten) and ten[0] is not centre[0]
    assert [kw["crop"] for kw in made] == ["center", "ten"]


def test_architecture_switches_reach_the_model() -> None:
    cfg = TrainConfig(shards="s", out="o", channels_last=False, **SWITCHES)
    model = build.build_model(cfg, 6, ("cpu",))
    assert (model.norm, model.columns, model.dropout.p) == ("batch", 1, 0.0)
    assert model.pool.kernel_size == 2 and len(model.conv1) == 1
    assert model.activation == "tanh" and len(model.conv6) == 1


def test_batch_norm_scale_and_shift_are_not_weight_decayed() -> None:
    default = build.make_optimizer(TrainConfig(shards="s", out="o"), AlexNet(num_classes=6, devices=("cpu",)))
    assert len(default.param_groups) == 1  # the paper's net: every parameter decayed, as before
    model = AlexNet(num_classes=6, devices=("cpu",), norm="batch")
    groups = build.make_optimizer(TrainConfig(shards="s", out="o", norm="batch"), model).param_groups
    bn = {id(p) for name, p in model.named_parameters() if name.startswith("bn")}
    assert len(bn) == 8 and [g["weight_decay"] for g in groups] == [paper.WEIGHT_DECAY, 0.0]
    assert {id(p) for p in groups[1]["params"]} == bn
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters()} - bn


@pytest.mark.parametrize("name", list(SWITCHES))
def test_resume_refuses_a_changed_switch(name: str, tmp_path: Path) -> None:
    saved = TrainConfig(shards="s", out=str(tmp_path))
    startup.check_same_run(saved, saved)  # unchanged: fine
    with pytest.raises(ConfigError, match=f"--resume: --{name} is .* a resumed run must keep it"):
        startup.check_same_run(dataclasses.replace(saved, **{name: SWITCHES[name]}), saved)


def test_report_lists_each_switch_with_its_reason() -> None:
    cfg = TrainConfig(shards="s", out="o", **SWITCHES).to_dict()
    diffs = {name: (value, default) for name, value, default in paper_differences(cfg)}
    assert diffs == {name: (value, getattr(TrainConfig(shards="s", out="o"), name))
                     for name, value in SWITCHES.items()}
    assert paper_differences(TrainConfig(shards="s", out="o").to_dict()) == []
    for name in SWITCHES:
        assert REASONS[name].startswith("§")


# ---------------------------------------------------------------------------------------------
# §6 ensembles.


class Patch(torch.nn.Module):
    """A stand-in classifier: a random linear map of the image's top-left 4x4 patch to 7 classes."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(7, 3 * 4 * 4, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :4, :4].flatten(1) @ self.weight.T


def brute_force(models: list[torch.nn.Module], batches: list) -> dict[str, float]:
    """The ensemble's numbers sample by sample in float64 numpy: mean over models (and crops) of
    the softmax, then top-1, top-5 and the log loss of the mean."""
    import numpy as np

    losses, top1, top5 = [], [], []
    for images, labels, valid in batches:
        for x, label, real in zip(images, labels.tolist(), valid.tolist(), strict=True):
            if not real:
                continue
            crops = x if x.dim() == 4 else x[None]
            probs = []
            for m in models:
                with torch.no_grad():
                    logits = np.asarray([[float(v) for v in m(c[None])[0]] for c in crops], dtype=np.float64)
                e = np.exp(logits - logits.max(1, keepdims=True))
                probs.append((e / e.sum(1, keepdims=True)).mean(0))
            p = np.mean(probs, 0)
            losses.append(-np.log(p[label]))
            order = list(np.argsort(-p))
            top1.append(order[0] != label)
            top5.append(label not in order[:5])
    return {"val_loss": float(np.mean(losses)), "val_top1_err": float(np.mean(top1)),
            "val_top5_err": float(np.mean(top5)), "val_samples": len(losses)}


@pytest.mark.parametrize("ten_crop", [False, True])
def test_ensemble_is_the_mean_of_the_members_softmaxes(ten_crop: bool) -> None:
    models = [Patch(seed) for seed in range(3)]
    batches = list(fakes.fake_val(11, 4, 7, ten_crop=ten_crop))  # 3 batches, the last padded
    expected = brute_force(models, batches)
    got = evaluate_ensemble(models, batches, "cpu", expected=11)
    assert got["ensemble"]["val_samples"] == 11
    assert got["ensemble"] == pytest.approx(expected, rel=1e-5)
    for model, member in zip(models, got["members"], strict=True):  # each member as evaluated alone
        assert member == pytest.approx(evaluate(model, batches, "cpu"), rel=1e-6)
        assert member == pytest.approx(brute_force([model], batches), rel=1e-5)
    # Jensen: -log of the mean probability is at most the members' mean loss (strictly, as they differ).
    assert got["ensemble"]["val_loss"] < sum(m["val_loss"] for m in got["members"]) / len(models)


def test_ensemble_over_two_ranks_sees_each_image_once(sample_shards: Path, monkeypatch) -> None:
    """Two ranks' real evaluation loaders (DALI, shard_id 0 and 1 of 2) over the 16 val images: every
    image lands on exactly one rank, and each rank's [loss, hits, samples] rows (what the all_reduce
    adds up) sum to one process's over the whole split."""
    import pipeline
    from trainer import evaluate as evaluate_module

    def loader(rank: int, ranks: int) -> Any:
        return pipeline.eval_loader(str(sample_shards), batch_size=6, device="cpu", shard_id=rank,
                                    num_shards=ranks, mean="channel", dtype="float32")

    def seen(rank: int, ranks: int) -> list[tuple[int, bytes]]:
        """(label, the image's bytes) of every real position: the image itself, not its order."""
        return [(int(y), x.numpy().tobytes()) for xs, ys in loader(rank, ranks)
                for x, y in zip(xs, ys) if y != pipeline.PAD_LABEL]

    whole, halves = seen(0, 1), [seen(0, 2), seen(1, 2)]
    assert len(whole) == 16 and len(set(whole)) == 16
    assert sorted(halves[0] + halves[1]) == sorted(whole)  # each image once over the two ranks
    assert halves[0] and halves[1]

    rows: list[torch.Tensor] = []
    monkeypatch.setattr(evaluate_module.distributed, "all_reduce_sum", lambda t: rows.append(t.clone()) or t)
    models = [Patch(seed) for seed in range(2)]
    evaluate_ensemble(models, loader(0, 1), "cpu")
    for rank in range(2):
        evaluate_ensemble(models, loader(rank, 2), "cpu")
    one, *ranks = rows
    assert one[:, 3].tolist() == [16, 16, 16]
    assert ranks[0][:, 3].tolist() == [len(halves[0])] * 3 and ranks[1][:, 3].tolist() == [len(halves[1])] * 3
    assert torch.equal((ranks[0] + ranks[1])[:, 1:], one[:, 1:])  # hits and samples: counts, exact
    # Loss sums of 16 positive float32 terms in another order: at most 16 units of roundoff apart.
    torch.testing.assert_close(ranks[0][:, 0] + ranks[1][:, 0], one[:, 0], rtol=16 * 2.0**-24, atol=0)


@pytest.mark.parametrize("visible, local_rank, local_size, expected", [
    (2, 0, 1, ("cuda:0",)),  # two GPUs, one process: the one-column net takes the first
    (8, 1, 4, ("cuda:1",)),  # 4 processes share 8 GPUs: one each, by local rank
    (1, 3, 4, ("cuda:0",)),  # a launcher gave each its own
])
def test_one_column_net_takes_one_device_by_default(monkeypatch, visible: int, local_rank: int,
                                                    local_size: int, expected: tuple[str, ...]) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    world = distributed.World(rank=local_rank, size=local_size, local_rank=local_rank, local_size=local_size)
    assert placement.replica((), world, columns=1) == expected
