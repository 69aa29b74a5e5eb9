"""`alexnet-table1` and `alexnet-table2`: the sequences behind the paper's Tables 1 and 2 (§6).

    alexnet-table1 --shards shards2010/ --out runs/table1            # train, evaluate the test split, table
    alexnet-table1 --shards shards2010/ --out runs/table1 --print              # the commands, one a line
    alexnet-table2 --shards shards/ --out runs/table2                          # 5 CNNs and their ensemble
    alexnet-table2 --shards shards/ --pretrain-shards fall11/ --out runs/table2  # and the starred rows
    alexnet-table2 --shards s/ --out o/ --epochs 4 -- --init kaiming --batch-size 32  # extra train flags

Each step is an `alexnet-train` or `alexnet-eval` child process. A training run goes to `<out>/<name>`
and is finished when its `final.pt` is there (written last, atomically); an evaluation is finished
when its JSON file in `<out>` is. A rerun skips finished steps and resumes unfinished training with
`--resume`, as `alexnet-ablations` does. The table goes to stdout and `<out>/table1.md` (`table2.md`).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paper
from tools import atomic
from tools import manifest as manifest_mod
from trainer.checkpoint import FINAL

# The paper gives no fine-tuning rate: a tenth of §5's initial rate, the rate §5's schedule reaches
# after its first drop, so the pre-trained features are not thrown away in the first steps.
FINETUNE_LR = paper.LEARNING_RATE / 10
SEEDS = (0, 1, 2, 3, 4)  # Table 2's "5 CNNs": five nets differing only in their seed
STARRED_SEEDS = (0, 1)  # the two pre-trained, fine-tuned nets of "7 CNNs*"
# alexnet-eval options that extra train flags may carry; they go to the evaluations too, so
# `-- --devices cpu` places every step the same way. (option, takes a value)
EVAL_OPTIONS = {"--devices": True, "--precision": True, "--batch-size": True, "--progress": False,
                "--no-progress": False}
NOT_RUN = "not run (needs --pretrain-shards)"


class TableError(Exception):
    """Bad input to a table command: one line for the user."""


@dataclass
class Step:
    """One child process: `argv` (starting with the program's name) and the file that proves it done."""
    name: str
    argv: list[str]
    done: Path  # final.pt of a training run, the JSON result of an evaluation
    needs: list[Path] = field(default_factory=list)  # files that earlier steps must have written

    @property
    def is_train(self) -> bool:
        return self.argv[0] == "alexnet-train"


def eval_flags(extra: Sequence[str]) -> list[str]:
    """The flags of `extra` that alexnet-eval takes too, with their values, in order."""
    out, i = [], 0
    while i < len(extra):
        opt = extra[i].split("=", 1)[0]
        if opt in EVAL_OPTIONS:
            takes = EVAL_OPTIONS[opt] and "=" not in extra[i]
            out.extend(extra[i:i + 1 + takes])
            i += 1 + takes
        else:
            i += 1
    return out


def train_step(name: str, out: Path, shards: str, epochs: int, flags: Sequence[str], extra: Sequence[str],
               last: Sequence[str] = (), needs: Sequence[Path] = ()) -> Step:
    run = out / name
    return Step(name, ["alexnet-train", "--shards", shards, "--out", str(run), "--epochs", str(epochs),
                       *flags, *extra, *last], run / FINAL, list(needs))


def eval_step(name: str, out: Path, shards: str, runs: Sequence[Path], flags: Sequence[str],
              extra: Sequence[str]) -> Step:
    checkpoints = [a for r in runs for a in ("--checkpoint", str(r / FINAL))]
    argv = ["alexnet-eval", *checkpoints, "--shards", shards, *flags, *eval_flags(extra), "--json"]
    return Step(name, argv, out / f"{name}.json", [r / FINAL for r in runs])


def table1_steps(shards: str, out: str, epochs: int = paper.EPOCHS, extra: Sequence[str] = ()) -> list[Step]:
    """Train on ILSVRC-2010's train split, then evaluate the last epoch's weights on its test split."""
    o = Path(out)
    return [train_step("cnn", o, shards, epochs, [], extra),
            eval_step("test-centre", o, shards, [o / "cnn"], ["--split", "test"], extra),
            eval_step("test-ten-crop", o, shards, [o / "cnn"], ["--split", "test", "--ten-crop"], extra)]


def table2_steps(shards: str, out: str, pretrain_shards: str = "", epochs: int = paper.EPOCHS,
                 finetune_epochs: int | None = None, finetune_lr: float = FINETUNE_LR,
                 extra: Sequence[str] = ()) -> list[Step]:
    """5 CNNs and their ensemble; with `pretrain_shards`, two pre-train/fine-tune pairs (--conv6) and the
    7-CNN* ensemble. Evaluations average the ten patches, as the paper's Table 2 does (§4.1)."""
    o = Path(out)
    steps = [train_step(f"cnn-{s}", o, shards, epochs, ["--seed", str(s)], extra) for s in SEEDS]
    cnns = [o / f"cnn-{s}" for s in SEEDS]
    steps.append(eval_step("5-cnns", o, shards, cnns, ["--ten-crop"], extra))
    if pretrain_shards:
        starred = []
        for s in STARRED_SEEDS:
            pre, fine = o / f"pretrain-{s}", o / f"finetune-{s}"
            steps.append(train_step(pre.name, o, pretrain_shards, epochs, ["--conv6", "--seed", str(s)],
                                    extra))
            # --lr after the extra flags: the fine-tuning rate is asked for by name, so it wins.
            steps.append(train_step(fine.name, o, shards, finetune_epochs or epochs,
                                    ["--conv6", "--seed", str(s), "--init-from", str(pre / FINAL)], extra,
                                    last=["--lr", str(finetune_lr)], needs=[pre / FINAL]))
            starred.append(fine)
        steps.append(eval_step("7-cnns", o, shards, [*cnns, *starred], ["--ten-crop"], extra))
    return steps


def check_test_split(shards: str) -> None:
    """Table 1 is measured on ILSVRC-2010's test split: refuse shards without one before any work."""
    try:
        m = manifest_mod.load(shards)
    except manifest_mod.ManifestError as e:
        raise TableError(str(e)) from None
    if not m["splits"].get("test", {}).get("shards"):
        raise TableError(f"--shards: {shards} has no labelled test split (Table 1 is measured on "
                         "ILSVRC-2010's test set: `alexnet-prep shard` writes it from a 2010 source with its "
                         "ground truth)")


def result_of(path: Path) -> dict[str, Any] | None:
    """An evaluation's saved JSON, or None if it is absent or incomplete (a half-written file cannot
    exist, writes are atomic, but a file from elsewhere might lack the errors)."""
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    r = r.get("ensemble", r) if isinstance(r, dict) else None
    return r if isinstance(r, dict) and "val_top1_err" in r and "val_top5_err" in r else None


def run_step(argv: list[str], capture: bool) -> tuple[int, str]:
    """Run one step as a child process with the interpreter running this one (so it uses the same
    environment whatever PATH holds); its exit code and, if `capture`, its stdout."""
    entry = {"alexnet-train": "main", "alexnet-eval": "eval_main"}[argv[0]]
    # prog_name: the child's messages name the command the user knows, not "-c"
    code = f"from trainer.cli import {entry}; {entry}(prog_name={argv[0]!r})"
    cmd = [sys.executable, "-c", code, *argv[1:]]
    done = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True)
    return done.returncode, done.stdout or ""


def run_steps(steps: Sequence[Step], echo: Callable[[str], None],
              run: Callable[[list[str], bool], tuple[int, str]] | None = None) -> list[str]:
    """Run the unfinished steps in order; the names of those that failed (or could not start)."""
    run = run or run_step
    failed = []
    for step in steps:
        if step.done.exists() and (step.is_train or result_of(step.done) is not None):
            echo(f"== {step.name}: done ({step.done}), skipped")
            continue
        missing = [p for p in step.needs if not p.exists()]
        if missing:
            echo(f"error: {step.name} not run: {missing[0]} is missing (an earlier step failed)")
            failed.append(step.name)
            continue
        argv = list(step.argv)
        checkpoints = step.done.parent / "checkpoints"
        if step.is_train and checkpoints.is_dir() and any(checkpoints.iterdir()):
            argv.append("--resume")  # continue the interrupted run from its latest good checkpoint
        echo(f"== {step.name}: {shlex.join(argv)}")
        code, stdout = run(argv, not step.is_train)
        if code == 0 and not step.is_train:
            try:
                # alexnet-eval --json prints its result as the last line of stdout
                atomic.write_json(str(step.done), json.loads(stdout.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                code = 1
        if code != 0:
            echo(f"error: {step.name} failed (exit {code}); continuing with the steps that do not need it")
            failed.append(step.name)
    return failed


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def table1_markdown(centre: dict[str, Any] | None, ten: dict[str, Any] | None) -> str:
    """The paper's Table 1 rows and the user's (centre crop and ten-crop), test-set errors."""
    rows = [f"| {name} (paper) | {pct(t1)} | {pct(t5)} |" for name, t1, t5 in paper.TABLE1]
    for label, r in (("CNN, this run, centre crop", centre), ("CNN, this run, 10-crop", ten)):
        rows.append(f"| {label} | {pct(r and r['val_top1_err'])} | {pct(r and r['val_top5_err'])} |"
                    if r else f"| {label} | not run | not run |")
    return "\n".join(["| model (ILSVRC-2010 test) | top-1 error | top-5 error |", "| --- | --- | --- |",
                      *rows]) + "\n"


def result_of_dict(result: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if result is None else result.get("ensemble", result)


def _member(result: dict[str, Any] | None, i: int) -> dict[str, Any] | None:
    members = (result or {}).get("members") or []
    return members[i] if i < len(members) else None


def table2_markdown(five: dict[str, Any] | None, seven: dict[str, Any] | None, pretrained: bool) -> str:
    """The paper's Table 2 beside the user's: 1 CNN is seed 0 (a member of the 5-CNN ensemble), 1 CNN* the
    first fine-tuned net (the 6th member of the 7). ILSVRC-2012's test labels were never released, so the
    user's top-5 test column stays empty. Then one sentence on 5 CNNs against 7 CNNs*."""
    ours: dict[str, dict[str, Any] | None | str] = {
        "SIFT + FVs": "–", "1 CNN": _member(five, 0), "5 CNNs": result_of_dict(five),
        "1 CNN*": _member(seven, len(SEEDS)) if pretrained else NOT_RUN,
        "7 CNNs*": result_of_dict(seven) if pretrained else NOT_RUN}
    lines = ["| model | paper top-1 (val) | paper top-5 (val) | paper top-5 (test) | this run top-1 (val) "
             "| this run top-5 (val) | this run top-5 (test) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, t1, t5, t5test in paper.TABLE2:
        r = ours[name]
        mine = ([r, "–" if r == "–" else "", "–"] if isinstance(r, str) else ["not run"] * 3 if r is None
                else [pct(r["val_top1_err"]), pct(r["val_top5_err"]), "–"])
        lines.append(f"| {name} | {pct(t1)} | {pct(t5)} | {pct(t5test)} | " + " | ".join(mine) + " |")
    return "\n".join(lines) + "\n\n" + without_pretraining(ours["5 CNNs"], ours["7 CNNs*"]) + "\n"


def without_pretraining(five: Any, seven: Any) -> str:
    """The reading notes' question, "without pre-training?": the gap between 5 CNNs and 7 CNNs*."""
    p5, p7 = paper.TABLE2[2], paper.TABLE2[4]
    theirs = f"the paper's: {100 * (p7[2] - p5[2]):+.1f} points top-5 ({100 * (p7[1] - p5[1]):+.1f} top-1)"
    if not (isinstance(five, dict) and isinstance(seven, dict)):
        why = seven if isinstance(seven, str) else "not run"
        return f"Without pre-training? This run cannot say: 7 CNNs* {why}; {theirs}."
    d5 = 100 * (seven["val_top5_err"] - five["val_top5_err"])
    d1 = 100 * (seven["val_top1_err"] - five["val_top1_err"])
    return (f"Without pre-training? Adding the two pre-trained nets changed val top-5 error by {d5:+.2f} "
            f"points (top-1 {d1:+.2f}) in this run; {theirs}.")


def _report(md: str, path: Path, echo: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(str(path), md.encode())
    echo(md.rstrip("\n"))
    echo(f"wrote {path}")


def table1_main(shards: str, out: str, epochs: int = paper.EPOCHS, extra: Sequence[str] = (),
                print_only: bool = False, echo: Callable[[str], None] = print,
                run: Callable[[list[str], bool], tuple[int, str]] | None = None) -> int:
    """Print the sequence, or run what is unfinished and print Table 1; the exit status (1 if a step
    failed)."""
    check_test_split(shards)
    steps = table1_steps(shards, out, epochs, extra)
    if print_only:
        for s in steps:
            echo(shlex.join(s.argv))
        return 0
    failed = run_steps(steps, echo, run)
    md = table1_markdown(result_of(steps[1].done), result_of(steps[2].done))
    _report(md, Path(out) / "table1.md", echo)
    if failed:
        echo(f"error: {len(failed)} step(s) failed: {', '.join(failed)}")
    return 1 if failed else 0


def table2_main(shards: str, out: str, pretrain_shards: str = "", epochs: int = paper.EPOCHS,
                finetune_epochs: int | None = None, finetune_lr: float = FINETUNE_LR,
                extra: Sequence[str] = (),
                print_only: bool = False, echo: Callable[[str], None] = print,
                run: Callable[[list[str], bool], tuple[int, str]] | None = None) -> int:
    """As table1_main, for Table 2."""
    if finetune_lr <= 0:
        raise TableError(f"--finetune-lr: {finetune_lr} is not a positive learning rate")
    steps = table2_steps(shards, out, pretrain_shards, epochs, finetune_epochs, finetune_lr, extra)
    if print_only:
        for s in steps:
            echo(shlex.join(s.argv))
        return 0
    failed = run_steps(steps, echo, run)
    five = _saved(Path(out) / "5-cnns.json")
    seven = _saved(Path(out) / "7-cnns.json") if pretrain_shards else None
    _report(table2_markdown(five, seven, bool(pretrain_shards)), Path(out) / "table2.md", echo)
    if failed:
        echo(f"error: {len(failed)} step(s) failed: {', '.join(failed)}")
    return 1 if failed else 0


def _saved(path: Path) -> dict[str, Any] | None:
    """The whole saved JSON (members and ensemble) if it holds a complete result."""
    return json.loads(path.read_text()) if result_of(path) is not None else None
