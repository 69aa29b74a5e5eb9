"""alexnet-predict against the evaluation: the sample's own validation images, as files, give the
inputs the eval pipeline makes of their shards, and the logits and errors alexnet-eval computes.

The images are the raw ones `alexnet-prep shard` read (ILSVRC2012_img_val.tar of `sample_src`); the
weights are test_weightfile.py's `saved_run`, written with the metadata a run writes.
"""

from __future__ import annotations

import json
import struct
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from pipeline import PAD_LABEL, eval_loader
from tests.test_train_faults import one_line_error
from tests.test_weightfile import RUNS, SavedRun, make_saved_run
from tests.tolerance import LOSS_RTOL, forward_rtol
from trainer import checkpoint, predict, weightfile
from trainer.cli import eval_main, predict_main
from trainer.metrics import correct_topk

saved_run = pytest.fixture(scope="module", params=sorted(RUNS))(make_saved_run)


@pytest.fixture(scope="module")
def val_images(sample_src: Path, sample_shards: Path, tmp_path_factory: pytest.TempPathFactory,
               ) -> tuple[list[Path], torch.Tensor]:
    """The validation image files in the eval loader's order (val shards by name, samples in tar
    order), and their labels as the shards store them."""
    keys, labels = [], []
    for shard in sorted(sample_shards.glob("val-*.tar")):
        with tarfile.open(shard) as t:
            for member in t:
                if member.name.endswith(".lbl"):  # 4 bytes, little-endian int32 (shards/README.md)
                    keys.append(member.name.rsplit(".", 1)[0])
                    labels.append(struct.unpack("<i", t.extractfile(member).read())[0])
    folder = tmp_path_factory.mktemp("val-images")
    with tarfile.open(sample_src / "ILSVRC2012_img_val.tar") as t:
        t.extractall(folder, filter="data")
    files = {p.stem: p for p in folder.iterdir()}
    return [files[k] for k in keys], torch.tensor(labels)


def eval_batch(shards: Path, mean: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval pipeline's centre crops of the whole val split, in one batch."""
    images, labels = next(iter(eval_loader(str(shards), batch_size=n, device="cpu", mean=mean,
                                           num_threads=1)))
    assert (labels != PAD_LABEL).all()
    return images, labels


def assert_same_logits(got: torch.Tensor, model: torch.nn.Module, images: torch.Tensor) -> None:
    """`got` is `model`'s forward pass of `images`, up to a reordered float32 forward pass (the other
    batch may take other kernels), relative to the largest logit."""
    with torch.no_grad():
        expected = model(images)
    tol = forward_rtol(model)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * expected.abs().max().item())


def test_inputs_and_logits_are_the_evaluations(saved_run: SavedRun, sample_shards: Path,
                                               val_images: tuple[list[Path], torch.Tensor]) -> None:
    run, model, cfg = saved_run
    files, labels = val_images
    p = predict.load(run, device="cpu")  # the run folder: its best.safetensors
    assert p.source == run / weightfile.BEST
    mine = torch.stack([predict.read_image(f, p.stats) for f in files])
    theirs, their_labels = eval_batch(sample_shards, cfg.mean, len(files))
    assert torch.equal(their_labels, labels)  # the same images in the same order
    assert torch.equal(mine, theirs)  # bit for bit: the same resize, JPEG, crop and arithmetic
    assert_same_logits(predict.logits(p, mine), model, theirs)


def test_errors_are_alexnet_evals(saved_run: SavedRun, sample_shards: Path,
                                  val_images: tuple[list[Path], torch.Tensor]) -> None:
    """Loss, top-1 and top-5 error over the predicted files = alexnet-eval's over the shards."""
    run, model, _ = saved_run
    files, labels = val_images
    p = predict.load(run / weightfile.BEST, device="cpu")
    out = predict.logits(p, torch.stack([predict.read_image(f, p.stats) for f in files]))
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(run / weightfile.BEST), "--shards",
                                            str(sample_shards), "--devices", "cpu", "--precision", "fp32",
                                            "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.output.strip().splitlines()[-1])
    top1, top5 = (hits.sum().item() for hits in correct_topk(F.log_softmax(out, 1), labels, (1, 5)))
    assert evaluated["val_top1_err"] == 1 - top1 / len(files)
    assert evaluated["val_top5_err"] == 1 - top5 / len(files)
    loss = F.cross_entropy(out, labels).item()
    assert evaluated["val_loss"] == pytest.approx(loss, rel=LOSS_RTOL + forward_rtol(model))


def printed(output: str) -> dict[str, list[tuple[float, str, str]]]:
    """alexnet-predict's text: {image: [(percent, wnid, words), ...]}."""
    found: dict[str, list[tuple[float, str, str]]] = {}
    image = ""
    for line in output.splitlines():
        if not line.startswith(" "):
            image = line
            found[image] = []
            continue
        rank, percent, wnid, words = line.split(maxsplit=3)
        assert rank == f"{len(found[image]) + 1}."
        found[image].append((float(percent.rstrip("%")), wnid, words))
    return found


def test_command_prints_each_images_top_classes(saved_run: SavedRun, sample_shards: Path,
                                                val_images: tuple[list[Path], torch.Tensor]) -> None:
    run, model, cfg = saved_run
    files = val_images[0][:3]
    result = CliRunner().invoke(predict_main, ["--checkpoint", str(run), "--device", "cpu",
                                                               *map(str, files)])
    assert result.exit_code == 0, result.stderr
    found = printed(result.stdout)
    assert list(found) == list(map(str, files))
    theirs, _ = eval_batch(sample_shards, cfg.mean, len(val_images[0]))
    with torch.no_grad():
        probs = torch.softmax(model(theirs[:3]).double(), 1)
    classes = json.loads((sample_shards / "manifest.json").read_text())["classes"]
    for image, row in zip(files, probs):
        order = row.argsort(descending=True)
        assert [wnid for _, wnid, _ in found[str(image)]] == [classes[i]["wnid"] for i in order]  # 4 < 5
        assert [words for *_, words in found[str(image)]] == [classes[i]["words"] for i in order]
        assert [pct for pct, *_ in found[str(image)]] == pytest.approx((100 * row[order]).tolist(), abs=0.006)
    as_json = CliRunner().invoke(predict_main, ["--checkpoint", str(run), "--device", "cpu", "--json",
                                                "--top", "2", str(files[0])])
    assert as_json.exit_code == 0, as_json.output
    record = json.loads(as_json.output)
    assert record["image"] == str(files[0])
    assert [c["wnid"] for c in record["top"]] == [w for _, w, _ in found[str(files[0])][:2]]


def test_older_weights_need_the_shards(saved_run: SavedRun, sample_shards: Path,
                                       val_images: tuple[list[Path], torch.Tensor]) -> None:
    """best.pt carries no statistics: refused alone, and with --shards the same answer as the
    .safetensors beside it."""
    run, _, _ = saved_run
    image = str(val_images[0][0])
    alone = CliRunner().invoke(predict_main, ["--checkpoint", str(run / checkpoint.BEST), image])
    one_line_error(alone, 2, f"--checkpoint: {run / checkpoint.BEST} carries no input statistics")
    assert "--shards" in alone.output
    with_shards = CliRunner().invoke(predict_main, ["--checkpoint", str(run / checkpoint.BEST), "--shards",
                                                    str(sample_shards), "--device", "cpu", image])
    safetensors = CliRunner().invoke(predict_main, ["--checkpoint", str(run / weightfile.BEST), "--device",
                                                    "cpu", image])
    assert with_shards.exit_code == 0, with_shards.output
    assert with_shards.output == safetensors.output


def test_bad_input_is_one_line_naming_the_file(saved_run: SavedRun, tmp_path: Path,
                                               val_images: tuple[list[Path], torch.Tensor]) -> None:
    run, _, _ = saved_run
    image = str(val_images[0][0])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"garbage")
    torchvision_like = tmp_path / "tv.pth"
    torch.save({"features.0.weight": torch.zeros(1), "classifier.1.weight": torch.zeros(1)}, torchvision_like)
    missing = tmp_path / "missing.jpg"
    cases = [
        (["--checkpoint", str(run), str(missing)], f"{missing}: no such file"),
        (["--checkpoint", str(run), str(text)], f"{text}: not an image"),
        (["--checkpoint", str(weights), image], f"--checkpoint: {weights}: not a readable safetensors file"),
        (["--checkpoint", str(tmp_path / "nothing"), image], f"{tmp_path / 'nothing'}: no such file or run"),
        (["--checkpoint", str(torchvision_like), image], "torchvision AlexNet"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(predict_main, ["--device", "cpu", *args])
        one_line_error(result, 2, message)
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.slow  # a real 1-epoch run through DALI (~20 s on 2 cores); the tests above cover each piece
def test_a_trained_runs_final_weights_predict_as_they_evaluate(sample_shards: Path, tmp_path: Path,
                                                               val_images: tuple[list[Path], torch.Tensor],
                                                               ) -> None:
    """What alexnet-train itself writes (here --mean channel, kaiming's) needs nothing else."""
    from trainer.cli import main as train_main
    from trainer.config import TrainConfig
    from trainer.model import AlexNet
    from trainer.startup import model_args

    run = tmp_path / "run"
    result = CliRunner().invoke(train_main, ["--shards", str(sample_shards), "--out", str(run), "--epochs",
                                             "1", "--batch-size", "8", "--init", "kaiming", "--devices",
                                             "cpu", "--precision", "fp32", "--no-progress", "--no-ten-crop"])
    assert result.exit_code == 0, result.output
    cfg = TrainConfig.from_dict(json.loads((run / "params.json").read_text())["config"])
    model = AlexNet(num_classes=4, devices=("cpu",), lrn_variant=cfg.lrn, **model_args(cfg)).eval()
    model.load_state_dict(torch.load(run / checkpoint.FINAL, weights_only=True))
    files, labels = val_images
    p = predict.load(run / weightfile.FINAL, device="cpu")
    mine = torch.stack([predict.read_image(f, p.stats) for f in files])
    theirs, _ = eval_batch(sample_shards, cfg.mean, len(files))
    assert torch.equal(mine, theirs)
    assert_same_logits(predict.logits(p, mine), model, theirs)
