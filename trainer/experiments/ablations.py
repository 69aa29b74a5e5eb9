"""`alexnet-ablations`: the paper's controlled experiments, one `alexnet-train` run per claim.

    alexnet-ablations --shards shards/ --out runs/ablations --epochs 90           # in sequence, then compare
    alexnet-ablations --shards shards/ --out runs/ablations --print > jobs.txt     # one command per line
    alexnet-ablations --shards s/ --out o/ --epochs 4 -- --init kaiming --batch-size 32   # extra train flags

The baseline is the paper's network; every other run changes exactly one switch to the value a claim
of the paper is about (paper.CLAIMS). Each run goes to `<out>/<name>`; the comparison
(`alexnet-report --compare`) lands in `<out>/compare.md` and `compare.png`.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import paper
from trainer.config import flag
from trainer.experiments.compare import CLAIMS

BASELINE = "baseline"
# Run folder names, one per claim (switch, value), so a folder says what it changed.
NAMES = {("norm", "none"): "no-lrn", ("pool", "nonoverlap"): "nonoverlap-pool",
         ("columns", 1): "one-column", ("dropout", 0.0): "no-dropout", ("lighting", "off"): "no-lighting",
         ("augment", "none"): "no-augment", ("activation", "tanh"): "tanh"}


def runs() -> list[tuple[str, list[str]]]:
    """(folder name, the switch flags) of the baseline and of one run per claim, in CLAIMS order."""
    out = [(BASELINE, [])]
    for c in CLAIMS:
        value = "0" if c.switch == "dropout" else str(c.value)
        out.append((NAMES[(c.switch, c.value)], [f"--{flag(c.switch)}", value]))
    return out


def commands(shards: str, out: str, epochs: int = paper.EPOCHS, extra: Sequence[str] = (),
             program: Sequence[str] = ("alexnet-train",)) -> list[tuple[str, list[str]]]:
    """(run folder, argv) of every run. `extra` flags go to every run, after ours."""
    return [(str(Path(out) / name), [*program, "--shards", shards, "--out", str(Path(out) / name),
                                     "--epochs", str(epochs), *switches, *extra])
            for name, switches in runs()]


def run_training(argv: list[str]) -> int:
    """One alexnet-train run as a child process; its exit code."""
    return subprocess.run(argv).returncode


def main(shards: str, out: str, epochs: int = paper.EPOCHS, extra: Sequence[str] = (),
         print_only: bool = False, echo: Callable[[str], None] = print) -> int:
    """Print the commands, or run them one after the other and compare; returns the exit status
    (1 if any run failed; the comparison then covers those that finished)."""
    if print_only:
        for _, argv in commands(shards, out, epochs, extra):
            echo(shlex.join(argv))
        return 0
    # The interpreter running this one, so the runs use the same environment whatever PATH holds;
    # trainer.cli's __main__ is alexnet-train's entry point.
    program = (sys.executable, "-m", "trainer.cli")
    finished, failed = [], []
    for run_dir, argv in commands(shards, out, epochs, extra, program):
        if (Path(run_dir) / "checkpoints").is_dir() and any((Path(run_dir) / "checkpoints").iterdir()):
            argv.append("--resume")  # a rerun continues (or just re-reports) what is there
        echo(f"== {Path(run_dir).name}: {shlex.join(['alexnet-train', *argv[3:]])}")
        if run_training(argv) == 0:
            finished.append(run_dir)
        else:
            failed.append(run_dir)
            echo(f"error: {run_dir} failed; continuing with the others")
    if finished and Path(finished[0]).name == BASELINE:
        from trainer.experiments.compare import compare

        md, png = compare(finished, out)
        echo(f"wrote {md} and {png}")
    elif finished:
        echo("error: the baseline failed, so there is nothing to compare against")
    if failed:
        echo(f"error: {len(failed)} run(s) failed: {', '.join(Path(f).name for f in failed)}")
        return 1
    return 0
