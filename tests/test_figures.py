"""alexnet-figures: Figure 3's kernels and colourfulness, Figure 4's fc7 features and nearest neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from trainer.cli import figures_main
from trainer.experiments.figures import Fc7, Nearest, class_names, colourfulness, display, mosaic
from trainer.model import AlexNet


def test_nearest_over_batches_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    queries, bank = rng.normal(size=(4, 64)), rng.normal(size=(50, 64))
    nearest = Nearest(torch.tensor(queries, dtype=torch.float32), k=6)
    items = torch.arange(50)[:, None, None].expand(50, 2, 2) * 10  # an "image" that names its index
    for start in range(0, 50, 7):  # uneven batches, the last one short
        end = min(start + 7, 50)
        nearest.add(torch.tensor(bank[start:end], dtype=torch.float32), torch.arange(start, end),
                    items[start:end])
    dist = np.sqrt(((queries[:, None, :] - bank[None, :, :]) ** 2).sum(-1))
    expected = np.argsort(dist, axis=1)[:, :6]
    assert nearest.index.tolist() == expected.tolist()
    np.testing.assert_allclose(nearest.dist.numpy(), np.take_along_axis(dist, expected, 1), rtol=1e-5)
    assert (nearest.items[:, :, 0, 0] // 10).tolist() == expected.tolist()  # the items came along


def test_nearest_with_fewer_items_than_k() -> None:
    nearest = Nearest(torch.zeros(1, 3), k=6)
    nearest.add(torch.tensor([[3.0, 0, 0], [1.0, 0, 0]]), torch.tensor([0, 1]))
    assert nearest.index.tolist() == [[1, 0]] and nearest.dist.tolist() == [[1.0, 3.0]]


def test_colourfulness_grey_is_zero_colour_is_not() -> None:
    rng = np.random.default_rng(1)
    grey = np.repeat(rng.normal(size=(48, 1, 11, 11)), 3, axis=1)  # the same weights on R, G and B
    coloured = rng.normal(size=(48, 3, 11, 11))
    red = np.zeros((1, 3, 11, 11))
    red[:, 0] = 1.0  # pure red: chroma 1 at every pixel
    assert colourfulness(grey) == pytest.approx(0.0, abs=1e-9)
    assert colourfulness(coloured) > 0.2  # independent channels: ~0.29 (1.7 of ~6 sigma)
    assert colourfulness(red) == pytest.approx(1.0)
    shown = display(coloured)
    assert shown.shape == (48, 11, 11, 3) and shown.min() == 0.0 and shown.max() == 1.0
    assert mosaic(coloured).shape == (3 * 12 - 1, 16 * 12 - 1, 3)  # 3 rows of 16, 1-pixel gaps


@pytest.mark.parametrize("devices", [("cpu",), ("cpu", "cpu")], ids=["grouped", "columns"])
def test_fc7_hook_catches_fc8s_input(devices: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    model = AlexNet(num_classes=4, devices=devices, init="kaiming").eval()
    hook = Fc7(model)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = model(x)
    fc7 = hook.out
    assert fc7.shape == (2, 4096) and (fc7 >= 0).all() and (fc7 > 0).any()  # after ReLU
    torch.testing.assert_close(model.fc8(fc7), logits)
    hook.close()
    with torch.no_grad():
        model(x[:1])
    assert hook.out is fc7  # removed: no longer updated


def test_class_names_are_short_and_distinct() -> None:
    manifest = {"classes": [{"wnid": "n1", "words": "tench, Tinca tinca"},
                            {"wnid": "n2", "words": "crane"}, {"wnid": "n3", "words": "crane"},
                            {"wnid": "n4", "words": "azure square, stripes square"},
                            {"wnid": "n5", "words": "azure square, checker square"}, {"wnid": "n6"}]}
    assert class_names(manifest) == ["tench", "crane (n2)", "crane (n3)", "azure square, stripes square",
                                     "azure square, checker square", "n6"]


def test_figures_without_checkpoint_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(figures_main, [str(tmp_path), "--shards", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"Error: {tmp_path}: no checkpoint")
    assert not (tmp_path / "figure3.png").exists()


@pytest.mark.parametrize("device", [
    pytest.param("cpu", marks=pytest.mark.slow),
    # the feature pass on the GPU: DALI's GPU eval pipeline feeding the model, neighbours kept on the device
    pytest.param("cuda:0", marks=[pytest.mark.gpu,
                                  pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_figures_of_a_tiny_run(sample_shards: Path, tmp_path: Path, device: str) -> None:
    from trainer.cli import main as train_main

    run = tmp_path / "run"
    result = CliRunner().invoke(train_main, ["--shards", str(sample_shards), "--out", str(run),
                                             "--epochs", "1", "--batch-size", "16", "--init", "kaiming",
                                             "--no-ten-crop", "--no-progress", "--devices", device])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(figures_main, [str(run), "--shards", str(sample_shards), "--images", "3",
                                               "--max-train", "20", "--batch-size", "8", "--device", device])
    assert result.exit_code == 0, result.output
    assert result.output.count("colourfulness") == 2
    for name in ("figure3.png", "figure4.png"):
        assert (run / name).read_bytes().startswith(b"\x89PNG")
