""".safetensors weights: what a run writes beside best.pt and final.pt, and who reads them.

`saved_run` writes a real 4-class AlexNet the way a run does (trainer.weightfile.run_metadata with
the sample shards' manifest and statistics); the run-level tests use test_train_faults.py's fake
loaders and tiny model, so they take a second each.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.test_train_faults import ARGS, Tiny, cli, install_tiny, one_line_error
from tools import atomic
from tools.statfiles import read_pca
from trainer import checkpoint, weightfile
from trainer.cli import eval_main
from trainer.config import TrainConfig
from trainer.model import AlexNet
from trainer.startup import model_args

GIT = "0123abc-test"  # any revision: the test checks it comes back
SavedRun = tuple[Path, AlexNet, TrainConfig]  # run folder, the network, its settings


def manifest(shards: Path) -> dict:
    return json.loads((shards / "manifest.json").read_text())


def save_run(shards: Path, out: Path, cfg: TrainConfig) -> AlexNet:
    """A run folder as alexnet-train leaves it, without the training: best.safetensors, best.pt and
    params.json of a freshly initialised AlexNet with `cfg`'s switches (seeded: the same every call)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    m = manifest(shards)
    model = AlexNet(num_classes=len(m["classes"]), devices=("cpu",), init=cfg.init, lrn_variant=cfg.lrn,
                    **model_args(cfg)).eval()
    weightfile.save(out / weightfile.BEST, model.state_dict(), weightfile.run_metadata(cfg, m, GIT))
    checkpoint.save_weights(out / checkpoint.BEST, model.state_dict())
    atomic.write_json(str(out / "params.json"), {"config": cfg.to_dict()})
    return model


# Paper init with the paper's mean-image input; kaiming with per-channel input, as alexnet-train pairs them.
RUNS = {"image": dict(init="paper"), "channel": dict(init="kaiming", lrn="cuda-convnet", pool="nonoverlap")}


def make_saved_run(request: pytest.FixtureRequest, sample_shards: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> SavedRun:
    """The `saved_run` fixture of this module and test_predict.py: one run folder per RUNS entry."""
    cfg = TrainConfig(shards=str(sample_shards), out="", **RUNS[request.param])
    run = tmp_path_factory.mktemp(f"run-{request.param}")
    return run, save_run(sample_shards, run, cfg), cfg


saved_run = pytest.fixture(scope="module", params=sorted(RUNS))(make_saved_run)


def test_metadata_holds_switches_classes_and_statistics(saved_run: SavedRun,
                                                        sample_shards: Path) -> None:
    run, model, cfg = saved_run
    w = weightfile.load(run / weightfile.BEST)
    assert w.state.keys() == model.state_dict().keys()
    assert all(torch.equal(w.state[k], v) for k, v in model.state_dict().items())
    assert w.num_classes == 4 and w.git == GIT
    assert w.switches == {"lrn_variant": cfg.lrn, "norm": cfg.norm, "pool": cfg.pool, "columns": cfg.columns,
                          "dropout": cfg.dropout, "activation": cfg.activation, "conv6": cfg.conv6}
    listed = sorted(manifest(sample_shards)["classes"], key=lambda c: c["index"])
    assert [c["wnid"] for c in w.classes] == [c["wnid"] for c in listed]
    assert [c["words"] for c in w.classes] == [c["words"] for c in listed]
    pca = read_pca(str(sample_shards / "pca.json"))
    assert w.stats.mean == cfg.mean
    assert list(w.stats.channel_mean) == pca["mean"] and list(w.stats.channel_std) == pca["std"]
    assert w.stats.jpeg_quality == manifest(sample_shards)["options"]["quality"]
    if cfg.mean == "image":  # bit for bit: predict subtracts it as the pipeline does
        assert np.array_equal(w.stats.mean_image, np.load(sample_shards / "mean.npy").astype(np.float32))
    else:
        assert w.stats.mean_image is None
    assert not [n for n in os.listdir(run) if n.startswith(".")]  # no temp file left


def test_plain_safetensors_loading_needs_nothing_of_ours(saved_run: SavedRun) -> None:
    """The ecosystem's way: load_file, then load_state_dict (strict) into the network."""
    run, model, cfg = saved_run
    again = AlexNet(num_classes=4, devices=("cpu",), lrn_variant=cfg.lrn, **model_args(cfg))
    again.load_state_dict(load_file(run / weightfile.BEST))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_non_finite_weights_are_not_written(tmp_path: Path) -> None:
    state = {"fc8.weight": torch.zeros(3, 2), "fc8.bias": torch.tensor([0.0, float("nan"), 0.0])}
    with pytest.raises(checkpoint.NonFiniteWeights, match="fc8.bias"):
        weightfile.save(tmp_path / "best.safetensors", state, weightfile.metadata(3, dict(
            lrn_variant="paper", norm="lrn", pool="overlap", columns=2, dropout=0.5)))
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fsync

    def full_disk(fd: int) -> None:
        real(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    state = {"fc8.weight": torch.zeros(3, 2), "fc8.bias": torch.zeros(3)}
    with pytest.raises(checkpoint.CheckpointWriteError, match="best.safetensors: could not write"):
        weightfile.save(tmp_path / "best.safetensors", state, {})
    assert os.listdir(tmp_path) == []


def test_unusable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(weightfile.WeightsError, match="x.safetensors: no such weights file"):
        weightfile.load(tmp_path / "x.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(weightfile.WeightsError, match="bad.safetensors: not a readable safetensors file"):
        weightfile.load(bad)
    meta = weightfile.metadata(5, dict(lrn_variant="paper", norm="lrn", pool="overlap", columns=2,
                                       dropout=0.5))
    other = weightfile.save(tmp_path / "other.safetensors", {"fc8.weight": torch.zeros(3, 2)}, meta)
    with pytest.raises(weightfile.WeightsError, match="metadata says 5 classes, fc8 has 3"):
        weightfile.load(other)
    no_fc8 = weightfile.save(tmp_path / "tiny.safetensors", {"net.3.weight": torch.zeros(3, 2)}, {})
    with pytest.raises(weightfile.WeightsError, match="not an AlexNet state dict"):
        weightfile.load(no_fc8)


def test_eval_reads_the_safetensors_without_params_json(saved_run: SavedRun,
                                                        sample_shards: Path, tmp_path: Path) -> None:
    """The file alone (moved away from its run folder) evaluates as best.pt does beside params.json."""
    run, _, _ = saved_run
    alone = tmp_path / "published.safetensors"
    alone.write_bytes((run / weightfile.BEST).read_bytes())
    common = ["--shards", str(sample_shards), "--devices", "cpu", "--precision", "fp32", "--json",
              "--no-progress"]
    results = []
    for path in (alone, run / checkpoint.BEST):
        result = CliRunner().invoke(eval_main, ["--checkpoint", str(path), *common])
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.output.strip().splitlines()[-1]))
    assert results[0] == results[1] and results[0]["val_samples"] == 16


def test_eval_names_a_bad_safetensors(sample_shards: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(bad), "--shards", str(sample_shards),
                                            "--devices", "cpu"])
    one_line_error(result, 2, f"--checkpoint: {bad}: not a readable safetensors file")


# --- what a run writes ------------------------------------------------------------------------------


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    install_tiny(monkeypatch)


def test_a_run_writes_best_and_final_safetensors(sample_shards: Path, tmp_path: Path, tiny: None) -> None:
    run = tmp_path / "run"
    result = cli("--shards", str(sample_shards), "--out", str(run), *ARGS, "--epochs", "2")
    assert result.exit_code == 0, result.output
    params = json.loads((run / "params.json").read_text())
    for pt, st in ((checkpoint.BEST, weightfile.BEST), (checkpoint.FINAL, weightfile.FINAL)):
        plain = torch.load(run / pt, weights_only=True)
        tensors, meta = weightfile.read(run / st)
        assert plain.keys() == tensors.keys() and all(torch.equal(plain[k], tensors[k]) for k in plain)
        assert meta["git"] == params["git"]
        assert json.loads(meta["switches"])["norm"] == params["config"]["norm"]
        assert json.loads(meta["input"])["mean"] == params["config"]["mean"] == "channel"  # kaiming's
        assert [c["wnid"] for c in json.loads(meta["classes"])] == [c["wnid"] for c in
                                                                   manifest(sample_shards)["classes"]]
    assert ".safetensors" in result.output


def test_init_from_a_safetensors(sample_shards: Path, tmp_path: Path, tiny: None) -> None:
    source = Tiny(4)
    torch.nn.init.constant_(source.net[3].weight, 0.125)
    weights = weightfile.save(tmp_path / "w.safetensors", source.state_dict(), {})
    result = cli("--shards", str(sample_shards), "--out", str(tmp_path / "run"), *ARGS, "--epochs", "1",
                 "--lr", "1e-9", "--init-from", str(weights))
    assert result.exit_code == 0, result.output
    w = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["net.3.weight"]
    assert torch.allclose(w, torch.full_like(w, 0.125), atol=1e-6)  # lr 1e-9: still the loaded weights
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    result = cli("--shards", str(sample_shards), "--out", str(tmp_path / "b"), *ARGS, "--init-from", str(bad))
    one_line_error(result, 2, f"--init-from: {bad}: not a readable safetensors file")
    assert not (tmp_path / "b").exists()


def test_a_diverged_run_leaves_no_weights_file_of_its_nans(sample_shards: Path, tmp_path: Path,
                                                          tiny: None) -> None:
    """test_train_faults.py's overflow: the NaN weights of epoch 0 still score a finite val error,
    which made them the best so far; neither best.pt nor best.safetensors may hold them."""
    out = tmp_path / "run"
    result = cli("--shards", str(sample_shards), "--out", str(out), *ARGS, "--lr", "1e38", "--max-steps", "4")
    one_line_error(result, 1, "non-finite weights (net.3.weight) at step ")
    assert "epoch 0: train loss nan, val top-1 err 0." in result.output  # validated, scored finite
    for name in (checkpoint.BEST, weightfile.BEST, checkpoint.FINAL, weightfile.FINAL):
        if (out / name).exists():
            assert all(torch.isfinite(t).all() for t in weightfile.load_weights(out / name).values()), name
