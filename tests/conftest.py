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
