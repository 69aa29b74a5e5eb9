"""Shared fixtures: one small synthetic ILSVRC copy, sharded once per test session.

torch is imported first on purpose: the prep tools import webdataset with torch hidden (see
tools/wds.py), and the tests mix prep with the pipeline and trainer in one process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch  # noqa: F401  (see the module docstring)

from tools.sample import make_sample
from tools.shard import ShardSettings, run
from tools.stats import compute

SAMPLE = {"classes": 4, "train_per_class": 12, "val_per_class": 4, "seed": 0}
SHARD_SIZE = 16


@pytest.fixture(scope="session")
def sample_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw-layout ILSVRC2012 sample: 4 classes, 48 train (one truncated) + 16 val images."""
    src = tmp_path_factory.mktemp("ilsvrc") / "ILSVRC2012"
    make_sample(str(src), layout="raw", **SAMPLE)
    return src


@pytest.fixture(scope="session")
def sample_shards(sample_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of `sample_src` (16 per shard) with pca.json and mean.npy. Treat as read-only."""
    out = tmp_path_factory.mktemp("shards")
    settings = ShardSettings(src=str(sample_src), out=str(out), shard_size=SHARD_SIZE, workers=1)
    run(settings, log=lambda _: None)
    compute(str(out))
    return out


SAMPLE_2010 = {"classes": 3, "train_per_class": 4, "val_per_class": 2, "test_per_class": 3, "seed": 0}


@pytest.fixture(scope="session")
def sample2010_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ILSVRC-2010 as published, 3 classes: 12 train + 6 val + 9 test images, the test ground truth,
    patch_images.tar (one train and one test patch) and gzip members (one train, one val)."""
    src = tmp_path_factory.mktemp("ilsvrc") / "ILSVRC2010"
    make_sample(str(src), layout="raw", year=2010, **SAMPLE_2010)
    return src


@pytest.fixture(scope="session")
def sample2010_shards(sample2010_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards (train, val and test; 8 per shard) of `sample2010_src` with their statistics. Read-only."""
    out = tmp_path_factory.mktemp("shards2010")
    run(ShardSettings(src=str(sample2010_src), out=str(out), shard_size=8, workers=1), log=lambda _: None)
    compute(str(out))
    return out


# --- pipeline/ tests: tiny hand-made shards with known pixels, labels and statistics ---------------
# Noise images make every crop position and flip identifiable; each sample's label is its global
# index, so collected labels prove exactly-once coverage. Built once per session; treat as read-only.

PIPELINE_TRAIN_SIZES = (7, 5, 9)  # 21 samples in three shards of unequal size
PIPELINE_VAL_SIZES = (6, 5)  # 11 samples
PIPELINE_VAL_LABEL0 = 1000  # val labels 1000.. so they never collide with train labels
# A known orthonormal eigenbasis (columns) with a zero third eigenvalue: a correct lighting shift has
# no component along the third eigenvector, a transposed basis would.
def pipeline_pca() -> dict:
    import numpy as np

    eigvec = np.linalg.qr(np.array([[0.6, 0.7, 0.3], [0.5, -0.2, 0.8], [0.62, -0.68, 0.1]]))[0]
    return {"mean": [120.0, 115.0, 100.0], "std": [60.0, 55.0, 50.0], "eigval": [3000.0, 600.0, 0.0],
            "eigvec": eigvec.tolist(), "scale": "0-255"}


def pipeline_noise_jpeg(seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95)
    return out.getvalue()


def pipeline_mean_image():
    """Position-dependent, so a mean image cut at the wrong place or left unflipped shows."""
    import numpy as np

    y, x = np.mgrid[0:256, 0:256].astype(np.float32)
    return np.stack([x * 0.5 + 3.25, y * 0.4 + 7.5, (x - y) * 0.2 + 90.0], axis=-1).astype(np.float32)


def write_pipeline_shard(path: Path, samples: list[dict]) -> None:
    """One tar of `tools.writer.sample_dict`-style samples, with its DALI index beside it."""
    from tools.index import write_index
    from tools.wds import TarWriter

    with open(path, "wb") as f, TarWriter(f, mtime=0, encoder=False) as tar:
        for sample in samples:
            tar.write(sample)
    write_index(str(path))


def write_pipeline_stats(root: Path) -> None:
    import json

    import numpy as np

    (root / "pca.json").write_text(json.dumps(pipeline_pca()))
    np.save(root / "mean.npy", pipeline_mean_image())


@pytest.fixture(scope="session")
def pipeline_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, bytes]]:
    """(shard folder, {label: jpeg bytes}) with train and val shards, pca.json and mean.npy."""
    from tools.writer import sample_dict

    root = tmp_path_factory.mktemp("pipeline-shards")
    jpegs: dict[int, bytes] = {}
    for split, sizes, label in (("train", PIPELINE_TRAIN_SIZES, 0),
                                ("val", PIPELINE_VAL_SIZES, PIPELINE_VAL_LABEL0)):
        for number, size in enumerate(sizes):
            samples = []
            for _ in range(size):
                jpegs[label] = pipeline_noise_jpeg(label)
                samples.append(sample_dict(f"{split}_{label:05d}", jpegs[label], label, {"label": label}))
                label += 1
            write_pipeline_shard(root / f"{split}-{number:06d}.tar", samples)
    write_pipeline_stats(root)
    return root, jpegs
