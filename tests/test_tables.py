"""alexnet-table1 / alexnet-table2 (Tables 1 and 2 of §6), and what Table 2 needs of the trainer:
fine-tuning a --conv6 net into another class count, and ensembles mixing five- and six-conv nets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import paper
from tools import manifest
from trainer.cli import eval_main, table1_main, table2_main
from trainer.experiments import tables


def fake_shards(root: Path, test: bool) -> Path:
    """Just the manifest: the table commands read nothing else before they start a step."""
    root.mkdir(parents=True, exist_ok=True)
    splits = {"train": {"shards": ["train-000000.tar"], "samples": 8}}
    if test:
        splits["test"] = {"shards": ["test-000000.tar"], "samples": 4}
    (root / "manifest.json").write_text(json.dumps({"format": manifest.FORMAT, "splits": splits,
                                                    "classes": [{"wnid": "n1"}]}))
    return root


def result(top1: float, top5: float) -> dict:
    return {"val_top1_err": top1, "val_top5_err": top5, "val_loss": 1.0, "val_samples": 4}


# --- alexnet-table1 ---------------------------------------------------------------------------------

def test_table1_print_gives_the_sequence(tmp_path: Path) -> None:
    shards = fake_shards(tmp_path / "s2010", test=True)
    out = tmp_path / "t1"
    got = CliRunner().invoke(table1_main, ["--shards", str(shards), "--out", str(out), "--epochs", "3",
                                           "--print", "--", "--init", "kaiming", "--devices", "cpu",
                                           "--no-progress"])
    assert got.exit_code == 0, got.output
    ckpt = f"{out}/cnn/final.pt"
    evals = f"alexnet-eval --checkpoint {ckpt} --shards {shards} --split test"
    assert got.output.splitlines() == [
        f"alexnet-train --shards {shards} --out {out}/cnn --epochs 3 --init kaiming --devices cpu "
        "--no-progress",
        f"{evals} --devices cpu --no-progress --json",
        f"{evals} --ten-crop --devices cpu --no-progress --json",
    ]
    assert not out.exists()  # --print runs nothing


def test_table1_refuses_shards_without_a_test_split(tmp_path: Path) -> None:
    shards = fake_shards(tmp_path / "s2012", test=False)
    for extra in ([], ["--print"]):
        got = CliRunner().invoke(table1_main, ["--shards", str(shards), "--out", str(tmp_path / "o"), *extra])
        assert got.exit_code == 2
        error = [line for line in got.output.splitlines() if line.startswith("Error")]
        assert len(error) == 1 and "no labelled test split" in error[0]
    got = CliRunner().invoke(table1_main, ["--shards", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert got.exit_code == 2 and "no manifest" in got.output
    assert not (tmp_path / "o").exists()


class Recorder:
    """Stands in for the child processes: records each argv; an evaluation prints the JSON it is given."""

    def __init__(self, evals: dict[str, dict]) -> None:
        self.calls: list[list[str]] = []
        self.evals = evals

    def __call__(self, argv: list[str], capture: bool) -> tuple[int, str]:
        self.calls.append(argv)
        assert capture == (argv[0] == "alexnet-eval")
        if argv[0] == "alexnet-train":
            run = Path(argv[argv.index("--out") + 1])
            (run / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run / "final.pt").write_bytes(b"weights")
            return 0, ""
        key = "ten" if "--ten-crop" in argv else "centre"
        return 0, "a progress line\n" + json.dumps({**self.evals[key], "split": "test"}) + "\n"


def test_table1_runs_then_prints_the_table(tmp_path: Path) -> None:
    shards, out = str(fake_shards(tmp_path / "s", test=True)), tmp_path / "t1"
    rec = Recorder({"centre": result(0.5, 0.25), "ten": result(0.4375, 0.1875)})
    lines: list[str] = []
    assert tables.table1_main(shards, str(out), 2, echo=lines.append, run=rec) == 0
    assert [c[0] for c in rec.calls] == ["alexnet-train", "alexnet-eval", "alexnet-eval"]
    assert json.loads((out / "test-ten-crop.json").read_text())["val_top1_err"] == 0.4375
    md = (out / "table1.md").read_text()
    assert md in "\n".join(lines) + "\n"
    assert "| Sparse coding (paper) | 47.1% | 28.2% |" in md
    assert "| SIFT + FVs (paper) | 45.7% | 25.7% |" in md
    assert "| CNN (paper) | 37.5% | 17.0% |" in md
    assert "| CNN, this run, centre crop | 50.0% | 25.0% |" in md
    assert "| CNN, this run, 10-crop | 43.8% | 18.8% |" in md


def test_table1_rerun_skips_finished_steps_and_resumes_training(tmp_path: Path) -> None:
    shards, out = str(fake_shards(tmp_path / "s", test=True)), tmp_path / "t1"
    # An interrupted run: checkpoints but no final.pt; the centre-crop result already saved.
    (out / "cnn" / "checkpoints").mkdir(parents=True)
    (out / "cnn" / "checkpoints" / "step-00000004.pt").write_bytes(b"x")
    (out / "test-centre.json").write_text(json.dumps(result(0.5, 0.25)))
    rec = Recorder({"ten": result(0.25, 0.0)})
    assert tables.table1_main(shards, str(out), 2, echo=lambda _: None, run=rec) == 0
    assert len(rec.calls) == 2
    assert rec.calls[0][0] == "alexnet-train" and rec.calls[0][-1] == "--resume"
    assert "--ten-crop" in rec.calls[1]
    # Everything finished: a third run starts nothing and prints the same table.
    again = Recorder({})
    lines: list[str] = []
    assert tables.table1_main(shards, str(out), 2, echo=lines.append, run=again) == 0
    assert again.calls == []
    assert sum("skipped" in line for line in lines) == 3
    assert "| CNN, this run, centre crop | 50.0% | 25.0% |" in "\n".join(lines)


def test_table1_an_incomplete_result_is_redone_and_a_failed_training_stops_its_evals(tmp_path: Path) -> None:
    shards, out = str(fake_shards(tmp_path / "s", test=True)), tmp_path / "t1"
    (out / "cnn").mkdir(parents=True)
    (out / "cnn" / "final.pt").write_bytes(b"w")
    (out / "test-centre.json").write_text('{"val_loss": 1.0}')  # no error rates: not a finished step
    (out / "test-ten-crop.json").write_text(json.dumps(result(0.25, 0.0)))
    rec = Recorder({"centre": result(0.5, 0.25)})
    assert tables.table1_main(shards, str(out), 2, echo=lambda _: None, run=rec) == 0
    assert [("--ten-crop" in c) for c in rec.calls] == [False]

    def failing(argv: list[str], capture: bool) -> tuple[int, str]:
        failing.calls.append(argv)
        return 1, ""
    failing.calls = []
    lines: list[str] = []
    other = tmp_path / "t1b"
    assert tables.table1_main(shards, str(other), 2, echo=lines.append, run=failing) == 1
    assert len(failing.calls) == 1  # the evaluations need final.pt: not started
    assert lines[-1] == "error: 3 step(s) failed: cnn, test-centre, test-ten-crop"
    assert "| CNN, this run, 10-crop | not run | not run |" in "\n".join(lines)


# --- alexnet-table2 ---------------------------------------------------------------------------------

def expected_table2(out: str, pretrain: str, epochs: int, ft_epochs: int, lr: str,
                    extra: list[str]) -> list[str]:
    """The sequence written out independently of trainer.experiments.tables."""
    e = " ".join(extra)
    lines = [f"alexnet-train --shards S --out {out}/cnn-{s} --epochs {epochs} --seed {s} {e}"
             for s in range(5)]
    five = " ".join(f"--checkpoint {out}/cnn-{s}/final.pt" for s in range(5))
    lines.append(f"alexnet-eval {five} --shards S --ten-crop --devices cpu --json")
    if not pretrain:
        return lines
    for s in (0, 1):
        lines.append(f"alexnet-train --shards {pretrain} --out {out}/pretrain-{s} --epochs {epochs} --conv6 "
                     f"--seed {s} {e}")
        lines.append(f"alexnet-train --shards S --out {out}/finetune-{s} --epochs {ft_epochs} --conv6 "
                     f"--seed {s} --init-from {out}/pretrain-{s}/final.pt {e} --lr {lr}")
    lines.append(f"alexnet-eval {five} --checkpoint {out}/finetune-0/final.pt "
                 f"--checkpoint {out}/finetune-1/final.pt --shards S --ten-crop --devices cpu --json")
    return lines


def test_table2_print_gives_the_sequence() -> None:
    extra = ["--init", "kaiming", "--devices", "cpu"]
    got = CliRunner().invoke(table2_main, ["--shards", "S", "--out", "o", "--epochs", "4", "--print", "--",
                                           *extra])
    assert got.exit_code == 0, got.output
    assert got.output.splitlines() == expected_table2("o", "", 4, 4, "", extra)
    got = CliRunner().invoke(table2_main, ["--shards", "S", "--pretrain-shards", "F", "--out", "o",
                                           "--epochs", "4", "--finetune-epochs", "2", "--finetune-lr",
                                           "0.0005", "--print", "--", *extra])
    assert got.exit_code == 0, got.output
    assert got.output.splitlines() == expected_table2("o", "F", 4, 2, "0.0005", extra)
    # Without --finetune-lr: a tenth of §5's rate; without --finetune-epochs: --epochs.
    got = CliRunner().invoke(table2_main, ["--shards", "S", "--pretrain-shards", "F", "--out", "o", "--print",
                                           "--", *extra])
    assert got.output.splitlines() == expected_table2("o", "F", paper.EPOCHS, paper.EPOCHS,
                                                      str(paper.LEARNING_RATE / 10), extra)


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--finetune-epochs", "-1"], ["--finetune-lr", "0"]])
def test_table2_bad_numbers_are_refused(args: list[str], tmp_path: Path) -> None:
    got = CliRunner().invoke(table2_main, ["--shards", "S", "--out", str(tmp_path / "o"), *args])
    assert got.exit_code == 2 and len([x for x in got.output.splitlines() if x.startswith("Error")]) == 1
    assert not (tmp_path / "o").exists()


def ensemble(members: list[tuple[float, float]], mean: tuple[float, float]) -> dict:
    return {"members": [result(*m) for m in members], "ensemble": result(*mean), "split": "val"}


def test_table2_without_pretraining_shows_the_starred_rows_not_run(tmp_path: Path) -> None:
    out = tmp_path / "t2"
    out.mkdir()
    for s in range(5):
        (out / f"cnn-{s}").mkdir()
        (out / f"cnn-{s}" / "final.pt").write_bytes(b"w")
    five = ensemble([(0.5, 0.25), (0.6, 0.3), (0.6, 0.3), (0.6, 0.3), (0.6, 0.3)], (0.45, 0.2))
    (out / "5-cnns.json").write_text(json.dumps(five))
    lines: list[str] = []
    rec = Recorder({})
    assert tables.table2_main("S", str(out), echo=lines.append, run=rec) == 0
    assert rec.calls == []
    md = (out / "table2.md").read_text()
    assert "| SIFT + FVs | – | – | 26.2% | – | – | – |" in md
    assert "| 1 CNN | 40.7% | 18.2% | – | 50.0% | 25.0% | – |" in md  # seed 0, the first member
    assert "| 5 CNNs | 38.1% | 16.4% | 16.4% | 45.0% | 20.0% | – |" in md
    assert f"| 1 CNN* | 39.0% | 16.6% | – | {tables.NOT_RUN} |  | – |" in md
    assert f"| 7 CNNs* | 36.7% | 15.4% | 15.3% | {tables.NOT_RUN} |  | – |" in md
    assert md.rstrip().splitlines()[-1] == ("Without pre-training? This run cannot say: 7 CNNs* not run "
                                            "(needs --pretrain-shards); the paper's: -1.0 points top-5 "
                                            "(-1.4 top-1).")


def test_table2_with_pretraining_runs_pairs_in_order_and_answers_the_question(tmp_path: Path) -> None:
    out = tmp_path / "t2"
    five = ensemble([(0.5, 0.25)] * 5, (0.45, 0.2))
    seven = ensemble([(0.5, 0.25)] * 5 + [(0.4, 0.125), (0.42, 0.13)], (0.375, 0.15))

    class Rec(Recorder):
        def __call__(self, argv: list[str], capture: bool) -> tuple[int, str]:
            if argv[0] == "alexnet-eval":
                self.calls.append(argv)
                n = argv.count("--checkpoint")
                return 0, json.dumps(five if n == 5 else seven)
            return super().__call__(argv, capture)

    rec = Rec({})
    lines: list[str] = []
    assert tables.table2_main("S", str(out), "F", epochs=2, echo=lines.append, run=rec) == 0
    names = [Path(c[c.index("--out") + 1]).name if c[0] == "alexnet-train" else c.count("--checkpoint")
             for c in rec.calls]
    assert names == ["cnn-0", "cnn-1", "cnn-2", "cnn-3", "cnn-4", 5, "pretrain-0", "finetune-0", "pretrain-1",
                     "finetune-1", 7]
    md = (out / "table2.md").read_text()
    assert "| 1 CNN* | 39.0% | 16.6% | – | 40.0% | 12.5% | – |" in md  # the first fine-tuned net
    assert "| 7 CNNs* | 36.7% | 15.4% | 15.3% | 37.5% | 15.0% | – |" in md
    assert ("Without pre-training? Adding the two pre-trained nets changed val top-5 error by -5.00 points "
            "(top-1 -7.50) in this run; the paper's: -1.0 points top-5 (-1.4 top-1).") in md
    # A failed pre-training: its fine-tune and the 7-CNN* ensemble are not started, the rest is.
    other = tmp_path / "t2b"

    class Failing(Rec):
        def __call__(self, argv: list[str], capture: bool) -> tuple[int, str]:
            if "pretrain-0" in " ".join(argv[:6]):
                self.calls.append(argv)
                return 1, ""
            return super().__call__(argv, capture)

    bad = Failing({})
    lines = []
    assert tables.table2_main("S", str(other), "F", epochs=2, echo=lines.append, run=bad) == 1
    assert len(bad.calls) == 9 and not any("finetune-0" in " ".join(c) for c in bad.calls)
    assert lines[-1] == "error: 3 step(s) failed: pretrain-0, finetune-0, 7-cnns"


# --- fine-tuning and mixed ensembles (Table 2's starred rows) ----------------------------------------

def test_init_from_a_conv6_run_with_more_classes_starts_fc8_fresh() -> None:
    """A 6-class --conv6 net (standing in for Fall 2011's 21,841 classes) into a 4-class --conv6 net:
    every layer but fc8 copied, fc8 as the fresh model had it; a conv6 mismatch stays an error."""
    from trainer.build import load_init_weights
    from trainer.config import ConfigError
    from trainer.model import AlexNet

    torch.manual_seed(1)
    source = AlexNet(num_classes=6, devices=("cpu",), conv6=True, init="kaiming").state_dict()
    torch.manual_seed(2)
    target = AlexNet(num_classes=4, devices=("cpu",), conv6=True, init="kaiming")
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    said = load_init_weights(target, source, "pre.pt")
    assert said is not None and "6 classes" in said and "fc8 is replaced" in said
    got = target.state_dict()
    copied = [k for k in got if not k.startswith("fc8.")]
    assert any(k.startswith("conv6.") for k in copied) and any(k.startswith("fc7.") for k in copied)
    assert all(torch.equal(got[k], source[k]) for k in copied)
    assert not any(torch.equal(got[k], fresh[k]) for k in copied if k.endswith("weight"))
    assert all(torch.equal(got[k], fresh[k]) for k in ("fc8.weight", "fc8.bias"))
    assert got["fc8.weight"].shape == (4, paper.FC_WIDTH) and got["fc8.weight"].std() > 0
    five_conv = AlexNet(num_classes=4, devices=("cpu",))
    with pytest.raises(ConfigError, match="does not fit this model.*conv6"):
        load_init_weights(five_conv, source, "pre.pt")


def test_eval_ensemble_of_five_and_six_conv_checkpoints(sample_shards: Path, tmp_path: Path) -> None:
    """Each checkpoint builds its own network from its params: the ensemble's members give the numbers
    each gives alone, and the two nets really differ (the strict load of either into the other fails)."""
    from trainer.config import TrainConfig
    from trainer.model import AlexNet

    classes = len(json.loads((sample_shards / "manifest.json").read_text())["classes"])
    paths = []
    for conv6 in (False, True):
        cfg = TrainConfig(shards=str(sample_shards), out="", init="kaiming", conv6=conv6)
        torch.manual_seed(3)
        model = AlexNet(num_classes=classes, devices=("cpu",), init="kaiming", conv6=conv6)
        path = tmp_path / f"conv6-{conv6}" / "step-00000001.pt"
        path.parent.mkdir()
        torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "num_classes": classes}, path)
        paths.append(str(path))
    common = ["--shards", str(sample_shards), "--devices", "cpu", "--precision", "fp32", "--json",
              "--no-progress"]
    alone = []
    for p in paths:
        r = CliRunner().invoke(eval_main, ["--checkpoint", p, *common])
        assert r.exit_code == 0, r.output
        alone.append(json.loads(r.output.strip().splitlines()[-1]))
    r = CliRunner().invoke(eval_main, ["--checkpoint", paths[0], "--checkpoint", paths[1], *common])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    assert [m["checkpoint"] for m in got["members"]] == paths
    for member, single in zip(got["members"], alone, strict=True):
        assert member["val_samples"] == single["val_samples"] == 16
        assert member["val_top1_err"] == single["val_top1_err"]
        assert member["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
    assert alone[0]["val_loss"] != pytest.approx(alone[1]["val_loss"], rel=1e-4)
    assert got["ensemble"]["val_samples"] == 16


# --- the real thing, on a tiny 2010 sample ----------------------------------------------------------

@pytest.mark.slow
def test_table1_end_to_end_on_the_2010_sample(sample2010_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "t1"
    args = ["--shards", str(sample2010_shards), "--out", str(out), "--epochs", "1", "--", "--batch-size", "4",
            "--init", "kaiming", "--devices", "cpu", "--no-ten-crop", "--no-progress"]
    got = CliRunner().invoke(table1_main, args)
    assert got.exit_code == 0, got.output
    samples = json.loads((sample2010_shards / "manifest.json").read_text())["splits"]["test"]["samples"]
    for name in ("test-centre", "test-ten-crop"):
        r = json.loads((out / f"{name}.json").read_text())
        assert r["split"] == "test" and r["val_samples"] == samples
    md = (out / "table1.md").read_text()
    assert "| CNN (paper) | 37.5% | 17.0% |" in md and "not run" not in md
    again = CliRunner().invoke(table1_main, args)
    assert again.exit_code == 0 and again.output.count("skipped") == 3
