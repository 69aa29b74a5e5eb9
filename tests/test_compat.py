"""Runs written before trainer/ was split into rooms (issue 18) still resume, evaluate and fine-tune.

tests/data/old-run.tar.xz is such a run folder (tests/data/README.md says how it was made): 4
classes, the real AlexNet's shapes with zero weights, the end of epoch 0 after 3 steps. What must
not change is the format: the state-dict names and shapes, and the checkpoint's keys.
"""

from __future__ import annotations

import dataclasses
import lzma
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from trainer import checkpoint, distributed, evaluate, metrics, train
from trainer.build import build_model, load_init_weights, make_optimizer, make_scheduler
from trainer.config import TrainConfig
from trainer.model import AlexNet
from trainer.startup import prepare, shards_identity
from trainer.state import Position, make_state

OLD_RUN = Path(__file__).parent / "data" / "old-run.tar.xz"
STEP = "step-00000003.pt"
# What the old run logged for its one epoch: with zero weights the logits are fc8's bias, whatever
# the image, so any code that loads those weights gets these exact numbers.
OLD_VAL = {"val_loss": 1.3862947225570679, "val_top1_err": 0.75}


@pytest.fixture(scope="module")
def old_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The old run folder, unpacked (455 MB checkpoint, 228 MB best.pt). Treat as read-only. Removed
    after the module's tests: pytest keeps the temp folders of the last runs, and these are large."""
    folder = tmp_path_factory.mktemp("old-run")
    with lzma.open(OLD_RUN) as xz, tarfile.open(fileobj=xz) as tar:
        tar.extractall(folder, filter="data")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def old_config(state: dict, shards: Path, out: Path, **changes: object) -> TrainConfig:
    return dataclasses.replace(TrainConfig.from_dict(state["config"]), shards=str(shards), out=str(out),
                               progress=False, ten_crop=False, **changes)


def test_names_shapes_and_keys_are_todays(old_run: Path) -> None:
    state = checkpoint.load(old_run / "checkpoints" / STEP)
    model = AlexNet(num_classes=4, devices=("cpu",))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in state["model"].items()} == shapes
    assert checkpoint.load_weights(old_run / checkpoint.BEST).keys() == model.state_dict().keys()
    cfg = old_config(state, Path("s"), Path("o"))
    optimizer = make_optimizer(cfg, model)
    today = make_state(model, optimizer, make_scheduler(cfg, optimizer), Position(), None, cfg, 4,
                       distributed.World(), ("cpu",), {})
    assert today is not None and state.keys() == today.keys()
    assert state["optimizer"].keys() == today["optimizer"].keys()


def test_resume_continues_the_old_checkpoint(old_run: Path, sample_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    state = checkpoint.load(old_run / "checkpoints" / STEP)
    cfg = old_config(state, sample_shards, out, epochs=2, resume=True)
    # The stored checkpoint names the shards it was made on, on another machine; the test session's
    # are made by the same command but live elsewhere (and a JPEG library may differ): only that key
    # is replaced, so --resume's check of the shards passes.
    state["shards"] = shards_identity(prepare(dataclasses.replace(cfg, resume=False)))
    checkpoint.save(out, state, state["step"], state["epoch"], state["batch"])
    (out / "params.json").write_bytes((old_run / "params.json").read_bytes())

    last = train.main(cfg)
    assert (last["epoch"], last["step"]) == (1, 6)
    resume = [r for r in metrics.read(out) if r["kind"] == "resume"]
    assert [(r["step"], r["epoch"], r["batch"]) for r in resume] == [(3, 1, 0)]
    assert [p.name for p in checkpoint.complete(out)] == ["step-00000006.pt", STEP]
    shutil.rmtree(out)  # ~1.4 GB of full-size checkpoints and weights: see `old_run`


@pytest.mark.parametrize("name", [checkpoint.BEST, f"checkpoints/{STEP}"])
def test_eval_of_the_old_weights(old_run: Path, sample_shards: Path, name: str) -> None:
    result = evaluate.main(str(old_run / name), str(sample_shards), batch_size=8, devices=("cpu",),
                           precision="fp32", progress=False)
    assert result["val_samples"] == 16
    assert result["val_loss"] == pytest.approx(OLD_VAL["val_loss"], abs=1e-6)
    assert result["val_top1_err"] == OLD_VAL["val_top1_err"]


def test_init_from_the_old_weights(old_run: Path, sample_shards: Path, tmp_path: Path) -> None:
    state = checkpoint.load(old_run / "checkpoints" / STEP)
    cfg = old_config(state, sample_shards, tmp_path / "run", init_from=str(old_run / checkpoint.BEST))
    plan = prepare(cfg)
    model = build_model(cfg, plan.num_classes, ("cpu",))
    assert load_init_weights(model, plan.init_weights, cfg.init_from) is None  # every layer fits
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
