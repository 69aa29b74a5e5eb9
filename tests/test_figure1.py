"""trainer/experiments/figure1.py (`alexnet-figure1`): the four-layer net, the choice of each
activation's rate, and tiny end-to-end runs on a generated CIFAR-10-shaped tarball, checked against
values computed here from the data and the curves, not against literals."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import paper
from tools import cifar10
from trainer.cli import figure1_main
from trainer.experiments import figure1
from trainer.experiments.figure1 import Figure1Config, FourLayerNet

PER_BATCH = 24  # 120 training images, 24 test images


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """This net's steps are tiny: on a loaded 2-core box, 2 intra-op threads measured 9x slower per
    image than 1 (32 vs 3.7 ms), so these tests train on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cifar") / "cifar-10-binary.tar.gz"
    cifar10.write_tarball(path, cifar10.sample(PER_BATCH, seed=0, noise=40.0))
    return path


def test_four_layer_net_shapes_and_parameters() -> None:
    net = FourLayerNet("relu")
    # (out, in, k) of the three 5x5 convs, then 64 maps of 4x4 into 10 classes: counted from the shapes
    convs = [(32, 3, 5), (32, 32, 5), (64, 32, 5)]
    expected = sum(o * i * k * k + o for o, i, k in convs) + 64 * 4 * 4 * 10 + 10
    assert sum(p.numel() for p in net.parameters()) == expected == 89_578
    assert len([m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]) == 4
    sides = []
    for pool in (net.max_pool, net.avg_pool):
        pool.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert sides == [16, 8, 4]


def test_both_activations_start_from_the_same_weights() -> None:
    torch.manual_seed(5)
    relu = FourLayerNet("relu")
    torch.manual_seed(5)
    tanh = FourLayerNet("tanh")
    assert all(torch.equal(a, b) for a, b in zip(relu.state_dict().values(), tanh.state_dict().values()))
    x = torch.randn(4, 3, 32, 32)
    seen = {}
    for name, net in (("relu", relu), ("tanh", tanh)):
        net.conv2.register_forward_pre_hook(lambda m, i, name=name: seen.__setitem__(name, i[0]))
        net(x)
    assert seen["relu"].min() == 0 and seen["tanh"].min() < 0  # the only difference is the non-linearity
    w = relu.conv2.weight
    assert abs(w.std().item() - 1 / math.sqrt(32 * 25)) < 0.05 / math.sqrt(32 * 25)  # LeCun: 1 / sqrt(fan_in)


def curve(activation: str, lr: float, errors: list[float], diverged: bool = False) -> dict:
    return {"activation": activation, "lr": lr, "train_error": errors, "diverged": diverged,
            "epochs_to_target": figure1.epochs_to(errors)}


def test_epochs_to_target_and_the_choice_of_rate() -> None:
    assert figure1.epochs_to([0.9, 0.3, 0.25, 0.1]) == 3  # "reaches 25%": at or below
    assert figure1.epochs_to([0.9, 0.26]) is None
    assert paper.FIGURE1_TARGET_ERR == 0.25
    slow = curve("relu", 0.01, [0.8, 0.4, 0.2, 0.1])
    fast = curve("relu", 0.1, [0.8, 0.2, 0.2, 0.15])
    tie = curve("relu", 0.03, [0.7, 0.24, 0.1, 0.05])  # as fast as `fast`, lower final error
    never = curve("relu", 0.001, [0.5, 0.4, 0.3, 0.26])
    blown = curve("relu", 1.0, [0.1], diverged=True)  # reached the target, then diverged
    assert figure1.best([slow, fast]) is fast
    assert figure1.best([slow, fast, tie]) is tie
    assert figure1.best([never, slow]) is slow
    assert figure1.best([never, blown]) is never
    assert figure1.best([never, curve("relu", 0.002, [0.5, 0.4, 0.3, 0.28])]) is never  # lower final error
    deeper = curve("relu", 0.3, [0.7, 0.01, 0.0, 0.0])  # as `late` in epochs and final error, lower at 2
    late = curve("relu", 0.2, [0.7, 0.24, 0.0, 0.0])
    assert figure1.best([late, deeper]) is deeper and figure1.best([deeper, late]) is deeper
    assert figure1.ratio(5, 30) == 6 and figure1.ratio(None, 30) is None and figure1.ratio(5, None) is None


def test_bad_settings_fail_before_any_work(tmp_path: Path, tarball: Path) -> None:
    for flags, words in ((["--epochs", "0"], "--epochs must be positive"),
                         (["--lrs", "0.1,-1"], "--lrs must be positive"),
                         (["--lrs", "0.1,0.1"], "--lrs names a rate twice"),
                         (["--lrs", "fast"], "comma-separated learning rates"),
                         (["--limit", "-1"], "--limit must be >= 0")):
        result = CliRunner().invoke(figure1_main, ["--cifar10", str(tarball), "--out", str(tmp_path / "o"),
                                                   *flags])
        assert result.exit_code == 2 and words in result.output, (flags, result.output)
    assert not (tmp_path / "o").exists()
    if not torch.cuda.is_available():
        with pytest.raises(figure1.Figure1Error, match="--device cuda"):
            Figure1Config(cifar10="c", out="o", device="cuda").check()


def test_a_bad_tarball_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    bad = tmp_path / "cifar-10-python.tar.gz"
    import io
    import tarfile

    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\x80\x04N."))  # a pickle
    result = CliRunner().invoke(figure1_main, ["--cifar10", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: ") and "python version" in lines[0]
    assert not (tmp_path / "o").exists()


def normalised(tarball: Path, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images as the run should see them, from the reader's arrays: minus the mean
    image, over the pixels' std."""
    images, labels = cifar10.read_split(tarball, "train")
    x = images[:limit].astype(np.float64)
    x = (x - x.mean(axis=0)) / (x - x.mean(axis=0)).std()
    return torch.tensor(x, dtype=torch.float32), torch.tensor(labels[:limit])


def test_first_epoch_error_is_the_initial_nets_on_every_image(tmp_path: Path, tarball: Path) -> None:
    """At a learning rate too small to move the weights, epoch 1's training error is the initial
    net's error over all the (limited) training images, whatever their order."""
    cfg = Figure1Config(cifar10=str(tarball), out=str(tmp_path), epochs=1, lrs=(1e-12,), batch_size=16,
                        limit=80, device="cpu", seed=3, progress=False)
    data = figure1.load_data(cfg, torch.device("cpu"))
    x, y = normalised(tarball, 80)
    torch.testing.assert_close(data[0], x, rtol=1e-5, atol=1e-5)
    for activation in ("relu", "tanh"):
        run = figure1.train_run(activation, 1e-12, cfg, data)
        torch.manual_seed(3)
        with torch.no_grad():
            expected = (FourLayerNet(activation)(x).argmax(1) != y).double().mean().item()
        assert run["train_error"] == [pytest.approx(expected)], activation
        assert len(run["train_loss"]) == 1 and not run["diverged"]


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    a = figure1.epoch_order(50, 0, 1)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, figure1.epoch_order(50, 0, 1))
    assert not np.array_equal(a, figure1.epoch_order(50, 0, 2))
    assert not np.array_equal(a, figure1.epoch_order(50, 1, 1))


def test_tiny_run_end_to_end(tmp_path: Path, tarball: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "fig1"
    n = 64
    args = ["--cifar10", str(tarball), "--out", str(out), "--epochs", "3", "--lrs", "0.003,0.05",
            "--batch-size", "8", "--limit", str(n), "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(figure1_main, args)
    assert result.exit_code == 0, result.output
    assert f"{n} training images" in result.output

    with Image.open(out / "figure1.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    assert sorted(p.name for p in out.iterdir()) == ["figure1.json", "figure1.png", "runs"]  # no temp files
    got = json.loads((out / "figure1.json").read_text())
    assert len(got["runs"]) == 4
    for run in got["runs"]:
        assert len(run["train_error"]) == 3 and not run["diverged"]
        # errors are counts over the n images of an epoch
        assert all(0 <= e <= 1 and abs(e * n - round(e * n)) < 1e-9 for e in run["train_error"])
        first = next((i + 1 for i, e in enumerate(run["train_error"]) if e <= 0.25), None)
        assert run["epochs_to_target"] == first
    # Each activation's entry is its fastest run (then lowest final error), recomputed from the curves.
    for activation in ("relu", "tanh"):
        mine = [r for r in got["runs"] if r["activation"] == activation]
        assert sorted(r["lr"] for r in mine) == [0.003, 0.05]
        fastest = min(mine, key=lambda r: (r["epochs_to_target"] or math.inf, r["train_error"][-1],
                                           r["train_error"][(r["epochs_to_target"] or 1) - 1]))
        assert got[activation]["lr"] == fastest["lr"]
        assert got[activation]["train_error"] == fastest["train_error"]
        assert got[activation]["epochs_to_target"] == fastest["epochs_to_target"]
    relu, tanh = got["relu"]["epochs_to_target"], got["tanh"]["epochs_to_target"]
    assert got["ratio"] == (tanh / relu if relu and tanh else None)
    assert got["target_error"] == 0.25 and got["settings"]["epochs"] == 3
    # The synthetic classes are easy: the ReLU net's best run must get under 25% in 3 epochs.
    assert relu is not None
    assert f"ReLU in {relu} epochs" in result.output

    # A rerun with the same settings trains nothing and writes the same figure1.json.
    before = (out / "figure1.json").read_text()

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("a finished run was trained again")

    with monkeypatch.context() as m:
        m.setattr(figure1, "train_run", refuse)
        again = CliRunner().invoke(figure1_main, args)
    assert again.exit_code == 0, again.output
    assert (out / "figure1.json").read_text() == before

    # Another epoch count makes other runs: all trained again, none reused (a stand-in trains here).
    calls = []

    def stand_in(activation: str, lr: float, cfg: Figure1Config, *_a: object) -> dict:
        calls.append((activation, lr, cfg.epochs))
        record = curve(activation, lr, [0.5] * cfg.epochs)
        return {**record, "train_loss": [1.0] * cfg.epochs, "test_error": 0.5}

    monkeypatch.setattr(figure1, "train_run", stand_in)
    longer = CliRunner().invoke(figure1_main, [*args[:5], "4", *args[6:]])
    assert longer.exit_code == 0, longer.output
    assert sorted(calls) == [("relu", 0.003, 4), ("relu", 0.05, 4), ("tanh", 0.003, 4), ("tanh", 0.05, 4)]
    # An unreadable run file counts as missing: that run alone is trained again.
    (out / "runs" / "tanh-lr0.05.json").write_text("{not json")
    calls.clear()
    assert CliRunner().invoke(figure1_main, [*args[:5], "4", *args[6:]]).exit_code == 0
    assert calls == [("tanh", 0.05, 4)]


def test_a_run_that_never_reaches_the_target_has_null_and_no_ratio(tmp_path: Path, tarball: Path) -> None:
    """Random labels: 25% training error is out of reach in two epochs, so both are null."""
    path = tmp_path / "random.tar.gz"
    batches = cifar10.sample(8, seed=1)
    rng = np.random.default_rng(0)
    cifar10.write_tarball(path, {k: (v[0], rng.integers(0, 10, len(v[1]))) for k, v in batches.items()})
    out = tmp_path / "o"
    result = CliRunner().invoke(figure1_main, ["--cifar10", str(path), "--out", str(out), "--epochs", "2",
                                               "--lrs", "0.001", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    got = json.loads((out / "figure1.json").read_text())
    assert got["relu"]["epochs_to_target"] is None and got["tanh"]["epochs_to_target"] is None
    assert got["ratio"] is None and "no ratio" in result.output
