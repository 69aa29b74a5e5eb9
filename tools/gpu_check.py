"""The one prepared check of the whole system on one GPU, run from the repo root without installing it.

    python -m tools.gpu_check                       # out/gpu-check; under 5 minutes on one H100
    python -m tools.gpu_check /scratch/gpu-check    # another output folder
    python -m tools.gpu_check --cpu-smoke /tmp/gc   # no GPU: the same steps, tiny, on the CPU
    python -m tools.gpu_check --requirements        # the locked wheels besides torch (`make wheelhouse`)
    DALI_CUDA=12 python -m tools.gpu_check --requirements --python-version 3.12   # for another box

First a preflight imports everything the steps need, in a child process; anything missing ends the
check with exit 2 and one line naming it, before anything is written. Then each step runs as
`sys.executable -m MODULE ...` (the console scripts exist only when the project is installed) from the
repo root, in a process group of its own, logged to OUTDIR/logs/STEP.log, and is killed when it passes
its budget. The budgets add up to the total (`--help` lists them). Then one table of figures against
the targets: printed, OUTDIR/gpu-check.md, and with everything else in OUTDIR/gpu-check.json.

Epochs. The loader builds one DALI pipeline per epoch (~0.15 s of CPU, measured). ImageNet's
10,000-batch epochs hide that; the sample's 25-batch epochs would not, and the benches would time
the rebuilds. So they read each train shard --copies times per epoch, enough that their timed batches
fit in one epoch. The real run keeps the sample's short epochs (and a validation pass and a checkpoint
after each), so its images/s and data wait are shown without a target. It runs 4 of them: each writes
a full checkpoint (456 MB with the momentum) and usually best.pt (228 MB), measured at 3.5 s and
0.7 s on the CPU (CHECKPOINT_S), which over 12 epochs would have taken most of the step's budget.

matplotlib builds its font cache on first use, which took the report step past its budget on a
fresh environment; every step gets MPLCONFIGDIR=OUTDIR/mplconfig (writable, kept across reruns) and
the Agg backend, and the `fonts` step builds that cache within its own budget.

Exit status: 0 every step ran and every target is met; 1 a step failed or ran out of time; 2 a
missing import, no CUDA, or bad usage; 3 every step ran and a target was missed. The CPU smoke run
shows the targets but exits 0 when every step ran. A rerun reuses the sample and its shards.

Only the standard library is imported here before the preflight has passed: it must be able to say
what is missing on a box that has nothing but Python (hence argparse, not click).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the repo root: every step runs there
DEFAULT_OUT = "out/gpu-check"

PIPELINE_MIN = 25_000  # images/s of our loader on one H100 (issue 8's target)
# The check's run writes, after each epoch, one full checkpoint of its 20-class AlexNet (456 MB: weights
# and momentum, trainer.checkpoint.save) and, when the val error improved, best.pt (228 MB). The larger
# medians of two runs (5 and 7 saves) with the trainer's own code on a 2-core AMD EPYC VM under load
# (docs/PERFORMANCE.md, "Checkpoints").
CHECKPOINT_S = 3.5
BEST_S = 0.7
TRAIN_MIN = 20_000  # images/s of training, bf16 + channels-last, batch 128, one H100
DATA_WAIT_MAX = 0.02  # share of training wall time spent waiting for the next batch
PRECISIONS = ("fp32", "tf32", "bf16")
KILL_GRACE_S = 5  # SIGTERM to a step's process group, then SIGKILL this long after

# What the steps import (module, pip requirement); the preflight imports torch first, and DALI last (the
# build for this box: tools/dali_build.py). The requirements are pyproject's runtime dependencies less
# torch, in its order (tests/test_gpu_check.py holds them equal): torch is the one package a GPU box
# brings itself, built for its CUDA driver, and DALI's build follows that driver.
REQUIREMENTS = (
    ("click", "click>=8.1"),
    ("fsspec", "fsspec>=2023.1"),
    ("numpy", "numpy>=1.24"),
    ("cv2", "opencv-python-headless>=4.8"),
    ("PIL", "pillow>=10"),
    ("scipy.io", "scipy>=1.10"),
    ("simplejpeg", "simplejpeg>=1.7"),
    ("tqdm", "tqdm>=4.66"),
    ("webdataset", "webdataset>=0.2.86"),
    ("tensorboard", "tensorboard>=2.14"),
    ("matplotlib", "matplotlib>=3.7"),
    ("safetensors", "safetensors>=0.4"),
)
TORCH = ("torch", "the torch build for this machine's CUDA driver")
DALI = "nvidia.dali"

# Runs in a child process (an import that hangs is then killed by the preflight's budget): imports
# each module named in argv, prints one JSON object: what failed, and the versions for env.json.
PREFLIGHT = r"""
import importlib, json, os, platform, sys
missing = []
for module in sys.argv[1:]:
    try:
        importlib.import_module(module)
    except Exception as e:  # ImportError; or a library's own error while it loads (a missing .so)
        name = getattr(e, "name", None)
        if isinstance(e, ImportError) and (name is None or (module + ".").startswith(name + ".")):
            why = ""  # the module itself (or its package) is not there
        elif isinstance(e, ImportError):
            why = "needs " + name
        else:
            why = (type(e).__name__ + ": " + str(e)).splitlines()[0][:200]
        missing.append([module, why])
env = {"python": platform.python_version(), "executable": sys.executable, "host": platform.node(),
       "cores": os.cpu_count()}
if "torch" in sys.modules:
    import torch
    ok = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if ok else []
    env.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
               cuda_available=ok, gpus=gpus)
for key, module in (("dali", "nvidia.dali"), ("matplotlib", "matplotlib")):
    if module in sys.modules:
        env[key] = getattr(sys.modules[module], "__version__", "?")
if "nvidia.dali" in sys.modules:  # the CUDA version DALI was built for, packed as 13492 for 13.4.92
    env["dali_cuda"] = getattr(sys.modules["nvidia.dali"], "__cuda_version__", None)
    from importlib import metadata
    env["dali_dists"] = sorted(d.metadata["Name"] for d in metadata.distributions()
                               if (d.metadata["Name"] or "").startswith("nvidia-dali-cuda"))
# The newest CUDA the driver runs (12080 = 12.8): cuDriverGetVersion needs no cuInit and no device.
try:
    import ctypes
    version = ctypes.c_int(0)
    if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) == 0:
        env["driver_cuda"] = version.value
except OSError:  # no driver on this box
    pass
print(json.dumps({"missing": missing, "env": env}))
"""

# alexnet-report is trainer.cli:report_main, which has no `python -m` entry of its own.
REPORT = "from trainer.cli import report_main; report_main(prog_name='alexnet-report')"
FONTS = """import matplotlib
from matplotlib import font_manager
print(len(font_manager.fontManager.ttflist), "fonts, cache in", matplotlib.get_cachedir())
"""


@dataclass(frozen=True)
class Plan:
    """Sizes and per-step budgets (seconds) of one mode. The total is the budgets' sum plus the table's."""

    mode: str
    classes: int
    train_per_class: int
    val_per_class: int
    shard_size: int
    device: str  # the trainer's --devices
    pipe_device: str  # the pipeline bench's --device
    batch: int
    pipe_batches: int
    pipe_baseline_batches: int
    pipe_passes: int
    pipe_rounds: int
    pipe_warmup: int
    pipe_copies: int
    bench_batch: int
    bench_steps: int
    bench_copies: int
    epochs: int
    log_every: int
    run_precision: str
    budgets: dict[str, int]
    table_s: int  # kept for the table after the last step

    @property
    def total_s(self) -> int:
        return sum(self.budgets.values()) + self.table_s


STEPS = ("preflight", "fonts", "sample", "shard", "stats", "verify", "pipeline",
         *(f"bench-{p}" for p in PRECISIONS), "train", "report")

GPU = Plan(
    mode="gpu", classes=20, train_per_class=160, val_per_class=20, shard_size=200,  # 3,200 train images
    device="cuda:0", pipe_device="gpu", batch=128,
    # Pipeline bench: (b) does 100-batch passes in ~0.5 s at the target; (a), the DataLoader, is ~10x
    # slower, so 32-batch passes (after a warm-up of 2 per worker, see pipeline/bench.py).
    pipe_batches=100, pipe_baseline_batches=32, pipe_passes=3, pipe_rounds=2, pipe_warmup=10,
    pipe_copies=25,  # (b) reads 2 x (10 + 3 x 100) = 620 batches; 25 x 3,199 images = 625 batches
    bench_batch=128, bench_steps=100,
    bench_copies=5,  # 3 warm-up + 100 timed steps; 5 x 3,199 images = 125 batches
    # 4 x 25 = 100 steps: 4 x (CHECKPOINT_S + BEST_S) = 17 s of checkpoints, where 12 epochs' 50 s
    # left nothing of the train budget for the ~10 s start, the steps, validations and the 10-crop.
    epochs=4, log_every=25, run_precision="bf16",
    # Estimates, not yet run on a GPU: each step's process pays ~5-10 s to import torch and DALI and
    # start CUDA before its work. The prep steps at these sizes measured, in CPU seconds on a 2-core
    # Xeon VM: sample 14 (one process), shard 18 (over its workers), verify 2.5, stats 0.4. fonts:
    # a fresh environment's font cache took a 30 s report step past its budget.
    budgets={"preflight": 15, "fonts": 40, "sample": 25, "shard": 15, "stats": 10, "verify": 10,
             "pipeline": 35, "bench-fp32": 25, "bench-tf32": 20, "bench-bf16": 20, "train": 55, "report": 10},
    table_s=5,
)

CPU_SMOKE = Plan(
    mode="cpu-smoke", classes=4, train_per_class=8, val_per_class=2, shard_size=16,  # 31 decodable
    device="cpu", pipe_device="cpu", batch=8,
    pipe_batches=2, pipe_baseline_batches=2, pipe_passes=2, pipe_rounds=1, pipe_warmup=1, pipe_copies=2,
    bench_batch=2, bench_steps=1, bench_copies=2,  # 3 warm-up + 1 timed step, twice
    # fp32: bf16 autocast on a 2-core CPU without bf16 instructions measured ~3.7 s per step of 4.
    epochs=2, log_every=4, run_precision="fp32",
    # On a 2-core VM shared with other jobs (load 2-12), batch 4 and 16 train steps measured bench-P
    # 28-86 s each and train 70 to over 120 s: hence the smaller sizes, and budgets with room.
    budgets={"preflight": 60, "fonts": 60, "sample": 30, "shard": 30, "stats": 30, "verify": 30,
             "pipeline": 60, "bench-fp32": 120, "bench-tf32": 120, "bench-bf16": 120, "train": 240,
             "report": 60},
    table_s=10,
)


@dataclass
class Step:
    step: str
    status: str  # ok, failed, timeout, skipped
    seconds: float
    budget_s: int
    note: str = ""


class Usage(Exception):
    """A check that cannot start: one line for the user, exit 2."""


# --- preflight -------------------------------------------------------------------------------------


def requirements_text(python: str | None = None) -> str:
    """The locked wheels besides torch for this box's DALI build (DALI_CUDA, else this environment's
    torch) and a Linux x86_64 `python` (default: this one), hash-checked, for `make wheelhouse` and
    `pip install --require-hashes --no-deps -r`. Raises dali_build.ChoiceError."""
    from tools import dali_build, requirements

    build = dali_build.for_box()
    python = python or "{}.{}".format(*sys.version_info[:2])
    return requirements.for_target([ROOT / requirements.MAIN_LOCK, ROOT / build.lock], python)


def dali_requirement() -> str | None:
    """pip's requirement for this box's DALI build; None when neither DALI_CUDA nor torch chooses."""
    from tools import dali_build

    try:
        return dali_build.for_box().requirement
    except dali_build.ChoiceError:
        return None


def driver_problem(env: dict[str, Any]) -> str | None:
    """One line when the installed DALI build needs a newer driver than this box has (see
    tools/dali_build.py), from the preflight's env; None when it runs or nothing can be compared."""
    from tools import dali_build

    dists = env.get("dali_dists") or []
    if len(dists) > 1:
        return (f"DALI: {' and '.join(dists)} are both installed (they ship the same module): uninstall "
                f"both, then `make install` or `python -m tools.dali_build --install`")
    dist = dists[0] if dists else None
    return dali_build.driver_problem(env.get("dali_cuda"), env.get("driver_cuda"), dist)


def missing_line(missing: Sequence[Sequence[str]]) -> str:
    """One line: what is missing, and the pip command that installs it (torch apart)."""
    dali = dali_requirement()
    pip = {**dict(REQUIREMENTS), **({DALI: dali} if dali else {})}
    parts = ["missing: " + ", ".join(f"{m} ({why})" if why else m for m, why in missing)]
    if any(m == TORCH[0] for m, _ in missing):
        parts.append(f"install {TORCH[1]}")
    if dali is None and any(m == DALI for m, _ in missing):  # without torch, the driver decides
        parts.append("then DALI's build for it (README.md, 'Installing'; or set DALI_CUDA)")
    reqs = [pip[m] for m, _ in missing if m in pip]
    if reqs:
        parts.append("pip install " + " ".join(shlex.quote(r) for r in reqs))
    return "; ".join(parts) + (" (without a package index: README.md, 'GPU check')" if len(parts) > 1 else "")


def preflight(budget_s: float) -> dict[str, Any]:
    """Import everything the steps need in a child process; return its versions. Raises Usage."""
    modules = [TORCH[0]] + [m for m, _ in REQUIREMENTS] + [DALI]
    try:
        child = subprocess.run([sys.executable, "-c", PREFLIGHT, *modules], capture_output=True, text=True,
                               cwd=ROOT, env=step_env(None), timeout=budget_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Usage(f"preflight: importing {', '.join(modules)} took over {budget_s:.0f} s") from None
    try:
        result = json.loads(child.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise Usage(f"preflight: {sys.executable} failed (exit {child.returncode}): {tail}") from None
    if result["missing"]:
        raise Usage(missing_line(result["missing"]))
    return result["env"]


# --- steps -----------------------------------------------------------------------------------------


def step_env(out: Path | None) -> dict[str, str]:
    """The steps' environment: the repo first on the path; matplotlib's cache in OUTDIR, no display."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["MPLBACKEND"] = "Agg"
    if out is not None:
        env["MPLCONFIGDIR"] = str(out / "mplconfig")
    return env


def run_step(name: str, budget_s: int, cmd: Sequence[str], out: Path) -> Step:
    """Run `cmd` into logs/NAME.log; past `budget_s` its whole process group (DataLoader workers,
    prep workers) gets SIGTERM, then SIGKILL. Ctrl-C stops the group too and is passed on."""
    start = time.monotonic()
    with open(out / "logs" / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=ROOT, env=step_env(out), start_new_session=True)
        try:
            rc = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            stop(proc)
            return Step(name, "timeout", time.monotonic() - start, budget_s, f"killed after {budget_s} s")
        except BaseException:  # KeyboardInterrupt: the step's processes must not outlive the check
            stop(proc)
            raise
    seconds = time.monotonic() - start
    return Step(name, "ok", seconds, budget_s) if rc == 0 else Step(name, "failed", seconds, budget_s,
                                                                     f"exit {rc}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's process group; SIGKILL to whatever is left of it KILL_GRACE_S later."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their leader, too
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def commands(plan: Plan, out: Path, cores: int) -> dict[str, list[str]]:
    """Each step's command line. alexnet-prep is tools.cli, alexnet-bench's two commands are
    pipeline.bench and trainer.benchmarks.bench, alexnet-train is trainer.cli, alexnet-report is
    trainer.cli:report_main (pyproject's [project.scripts])."""
    py = sys.executable
    data = out / f"data-{plan.classes}x{plan.train_per_class}"
    src, shards = str(data / "ILSVRC2012"), str(data / "shards")
    cmds = {
        "fonts": [py, "-c", FONTS],
        "sample": [py, "-m", "tools.cli", "sample", "--out", src, "--classes", str(plan.classes),
                   "--train-per-class", str(plan.train_per_class),
                   "--val-per-class", str(plan.val_per_class)],
        "shard": [py, "-m", "tools.cli", "shard", "--src", src, "--out", shards, "--workers", str(cores),
                  "--shard-size", str(plan.shard_size)],
        "stats": [py, "-m", "tools.cli", "pca-stats", "--shards", shards, "--from-manifest",
                  "--workers", str(cores)],
        "verify": [py, "-m", "tools.cli", "verify", "--shards", shards, "--workers", str(cores)],
        "pipeline": [py, "-m", "pipeline.bench", "--shards", shards, "--device", plan.pipe_device,
                     "--batch-size", str(plan.batch), "--batches", str(plan.pipe_batches),
                     "--baseline-batches", str(plan.pipe_baseline_batches), "--passes", str(plan.pipe_passes),
                     "--rounds", str(plan.pipe_rounds), "--warmup", str(plan.pipe_warmup),
                     "--copies", str(plan.pipe_copies), "--json", str(out / "bench-pipeline.json")],
    }
    for p in PRECISIONS:
        cmds[f"bench-{p}"] = [py, "-m", "trainer.benchmarks.bench", "--shards", shards,
                              "--devices", plan.device, "--precision", p, "--channels-last",
                              "--batch-size", str(plan.bench_batch),
                              "--steps", str(plan.bench_steps), "--copies", str(plan.bench_copies),
                              "--json", str(out / f"bench-train-{p}.json")]
    cmds["train"] = [py, "-m", "trainer.cli", "--shards", shards, "--out", str(out / "run"),
                     "--epochs", str(plan.epochs), "--batch-size", str(plan.batch), "--devices", plan.device,
                     "--precision", plan.run_precision, "--channels-last", "--init", "kaiming",
                     "--log-every", str(plan.log_every), "--no-progress",
                     "--note", f"tools.gpu_check ({plan.mode}): {plan.epochs} epochs on the "
                               f"{plan.classes}-class sample"]
    cmds["report"] = [py, "-c", REPORT, str(out / "run")]
    return cmds


def run_steps(plan: Plan, out: Path, cores: int, echo: Any = print) -> list[Step]:
    """The steps after the preflight, in order; a step whose input is missing is skipped."""
    cmds = commands(plan, out, cores)
    steps: list[Step] = []
    needs: dict[str, str] = {}  # step -> why it cannot run

    def run(name: str) -> Step:
        budget = plan.budgets[name]
        s = (Step(name, "skipped", 0.0, budget, needs[name]) if name in needs
             else run_step(name, budget, cmds[name], out))
        steps.append(s)
        echo(f"{s.step:<12} {s.status:<8} {s.seconds:6.1f} s  (budget {s.budget_s} s)"
             + (f"  {s.note}" if s.note else ""))
        if s.status in ("failed", "timeout"):
            log = (out / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
            for line in log[-12:]:
                print(f"    | {line}", file=sys.stderr)
        return s

    run("fonts")  # the report needs the cache; without it, it builds its own (slowly)
    for name in ("sample", "shard", "stats", "verify"):
        if run(name).status != "ok":
            needs.update({n: "needs the shards" for n in STEPS[STEPS.index(name) + 1:]})
    for name in ("pipeline", *(f"bench-{p}" for p in PRECISIONS)):
        run(name)
    if run("train").status != "ok":
        needs.setdefault("report", "needs the run")
    run("report")
    return steps


# --- the table -------------------------------------------------------------------------------------


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _rate(v: float) -> str:
    return f"{v:,.0f}"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def figures(out: Path, plan: Plan, steps: Sequence[Step]) -> dict[str, Any]:
    """Read the steps' outputs and judge each figure against its target: rows, status, verdict."""
    rows: list[dict[str, Any]] = []

    def row(key: str, check: str, value: Any, fmt: Any, target: str = "", ok: bool | None = None) -> None:
        """`fmt` shows the value; ok: it met the target (None: a figure without one)."""
        if value is None:
            shown, result = "-", ("NO DATA" if target else "-")
        else:
            shown, result = fmt(value), ("-" if ok is None else ("PASS" if ok else "MISS"))
        rows.append({"key": key, "check": check, "value": value, "shown": shown, "target": target,
                     "result": result})

    def at_least(v: float | None, floor: float) -> bool:
        return v is not None and v >= floor

    def below(v: float | None, ceiling: float | None) -> bool:
        return v is not None and ceiling is not None and v < ceiling

    wait_target = f"< {100 * DATA_WAIT_MAX:.0f}%"
    pipe = _load(out / "bench-pipeline.json")
    ours = pipe["ours"]["images_per_s"] if pipe else None
    device = pipe["device"] if pipe else plan.pipe_device
    workers = pipe["settings"]["workers"] if pipe else "?"
    row("pipeline_dali", f"pipeline: DALI {device}, images/s", ours, _rate, f">= {PIPELINE_MIN:,}",
        at_least(ours, PIPELINE_MIN))
    row("pipeline_baseline", f"pipeline: DataLoader({workers}) baseline, images/s",
        pipe["hand_written"]["images_per_s"] if pipe else None, _rate)
    row("pipeline_ratio", "pipeline: DALI / baseline", pipe["ratio"] if pipe else None, lambda v: f"{v:.1f}x")

    train = {p: _load(out / f"bench-train-{p}.json") for p in PRECISIONS}
    for p, b in train.items():  # the throughput target is for bf16
        target = f">= {TRAIN_MIN:,}" if p == "bf16" else ""
        for kind, label in (("synthetic", "synthetic input"), ("pipeline", "real pipeline")):
            v = b[kind]["images_per_s"] if b and b.get(kind) else None
            row(f"train_{p}_{kind}", f"train {p}: {label}, images/s", v, _rate, target,
                at_least(v, TRAIN_MIN) if target else None)
        w = b["pipeline"]["data_wait"] if b and b.get("pipeline") else None
        row(f"train_{p}_data_wait", f"train {p}: data wait", w, _pct, wait_target, below(w, DATA_WAIT_MAX))

    manifest = _load(out / f"data-{plan.classes}x{plan.train_per_class}" / "shards" / "manifest.json")
    metrics = out / "run" / "metrics.jsonl"
    records = [json.loads(line) for line in (metrics.read_text().splitlines() if metrics.exists() else [])
               if line.strip()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    final = next((r for r in records if r["kind"] == "final"), None)
    planned = (math.ceil(manifest["splits"]["train"]["samples"] / plan.batch) * plan.epochs
               if manifest else None)
    chance = 1 - 1 / len(manifest["classes"]) if manifest else None
    trained = next((s for s in steps if s.step == "train" and s.status == "ok"), None)
    run = {"precision": plan.run_precision, "batch_size": plan.batch, "epochs_planned": plan.epochs,
           "steps_planned": planned, "steps": epochs[-1]["step"] if epochs else None,
           "wall_s": trained.seconds if trained else None,
           "images_per_s": statistics.median(r["images_per_s"] for r in epochs) if epochs else None,
           "data_wait": statistics.median(r["data_wait"] for r in epochs) if epochs else None,
           "val_top1_err": epochs[-1]["val_top1_err"] if epochs else None,
           "ten_crop_top1_err": final["ten_crop_top1_err"] if final else None, "chance_err": chance,
           "epochs": epochs, "final": final}
    row("run_steps", "run: steps", run["steps"], str, f"= {planned}", run["steps"] == planned)
    row("run_wall", "run: wall time (whole process)", run["wall_s"], lambda v: f"{v:.0f} s")
    # No targets for these two: 25-batch epochs, each with validation and a checkpoint (module doc).
    row("run_images_per_s", f"run {plan.run_precision}: images/s (median epoch)", run["images_per_s"], _rate)
    row("run_data_wait", "run: data wait (median epoch)", run["data_wait"], _pct)
    chance_target = f"< {100 * chance:.0f}% (chance)" if chance else "< chance"
    for key, label in (("val_top1_err", "val top-1 error, last epoch"),
                       ("ten_crop_top1_err", "10-crop top-1 error")):
        row(f"run_{key}", f"run: {label}", run[key], _pct, chance_target, below(run[key], chance))

    bad = [s.step for s in steps if s.status != "ok"]
    judged = [r for r in rows if r["target"]]
    met = [r for r in judged if r["result"] == "PASS"]
    status = "failed" if bad else ("miss" if len(met) < len(judged) and plan.mode == "gpu" else "pass")
    if bad:
        verdict = f"FAILED: not ok: {', '.join(bad)} (see logs/)"
    elif plan.mode == "gpu":
        verdict = f"{status.upper()}: {len(met)} of {len(judged)} targets met"
    else:
        verdict = f"PASS: every step ran (CPU smoke: {len(met)} of {len(judged)} targets met, not judged)"
    return {"rows": rows, "status": status, "verdict": verdict, "pipeline": pipe, "train": train, "run": run}


def markdown_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols = (("check", "check", "<"), ("shown", "value", ">"), ("target", "target", "<"),
            ("result", "result", "<"))  # (row key, title, alignment)
    widths = [max(len(title), *(len(r[k]) for r in rows)) for k, title, _ in cols]

    def cells(values: Any) -> str:
        return "| " + " | ".join(f"{v:{a}{w}}" for v, (_, _, a), w in zip(values, cols, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if a == ">" else "-")
                          for (_, _, a), w in zip(cols, widths)) + "|"
    return [cells(title for _, title, _ in cols), rule] + [cells(r[k] for k, _, _ in cols) for r in rows]


def write_table(out: Path, plan: Plan, steps: Sequence[Step], meta: dict[str, Any]) -> tuple[str, str]:
    """gpu-check.md and gpu-check.json in `out`; returns (status, the text to print).
    meta: command, date, card, env, elapsed_s."""
    from tools import atomic  # fsspec: importable once the preflight has passed

    fig = figures(out, plan, steps)
    table = markdown_table(fig["rows"])
    timing = ", ".join(f"{s.step} {s.seconds:.1f}" + ("" if s.status == "ok" else f" ({s.status})")
                       for s in steps)
    sw = meta["env"] or {}
    software = (f"python {sw.get('python', '?')}, torch {sw.get('torch', '?')} (CUDA {sw.get('cuda')}, "
                f"cuDNN {sw.get('cudnn')}), DALI {sw.get('dali', '?')}; git {sw.get('git', '?')}; "
                f"{sw.get('cores', '?')} cores")
    footer = ["", f"steps (s): {timing}; {meta['elapsed_s']:.1f} s before the table "
                  f"(budget {plan.total_s} s)",
              f"result: {fig['verdict']}"]
    header = [f"# alexnet-repro GPU check ({plan.mode})", "", f"- command: `{meta['command']}`",
              f"- date: {meta['date']}", f"- card: {meta['card']}", f"- software: {software}", ""]
    atomic.write_bytes(str(out / "gpu-check.md"), ("\n".join(header + table + footer) + "\n").encode())
    atomic.write_json(str(out / "gpu-check.json"), {
        "command": meta["command"], "date": meta["date"], "card": meta["card"], "mode": plan.mode,
        "status": fig["status"], "verdict": fig["verdict"], "budget_s": plan.total_s,
        "budgets": {**plan.budgets, "table": plan.table_s}, "elapsed_s": meta["elapsed_s"],
        "steps": [asdict(s) for s in steps], "rows": fig["rows"], "env": sw or None,
        "pipeline": fig["pipeline"], "train": fig["train"], "run": fig["run"],
        "targets": {"pipeline_images_per_s": PIPELINE_MIN, "train_bf16_images_per_s": TRAIN_MIN,
                    "data_wait": DATA_WAIT_MAX}})
    return fig["status"], "\n".join([f"software: {software}", ""] + table + footer)


# --- main ------------------------------------------------------------------------------------------


def budget_line(plan: Plan) -> str:
    shown = [*plan.budgets.items(), ("table", plan.table_s)]
    return " + ".join(f"{k} {v}" for k, v in shown) + f" = {plan.total_s} s"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.gpu_check", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        epilog="\n".join([
            "Steps: preflight (imports, versions -> env.json); fonts (matplotlib's cache);",
            f"sample (alexnet-prep sample: {GPU.classes} classes x {GPU.train_per_class} train + "
            f"{GPU.val_per_class} val images); shard; stats (pca-stats --from-manifest); verify;",
            "pipeline (alexnet-bench pipeline: DALI vs a DataLoader baseline); bench-fp32/tf32/bf16",
            f"(alexnet-bench train: channels-last, batch {GPU.bench_batch}, {GPU.bench_steps} steps of "
            "synthetic and of real input, data wait);",
            f"train (alexnet-train {GPU.run_precision}, batch {GPU.batch}, {GPU.epochs} epochs); report "
            "(alexnet-report). Budgets in seconds:",
            "  GPU:       " + budget_line(GPU),
            "  CPU smoke: " + budget_line(CPU_SMOKE),
            f"Targets (one H100): pipeline >= {PIPELINE_MIN:,} images/s; training >= {TRAIN_MIN:,} images/s "
            f"(bf16, channels-last, batch 128); data wait < {100 * DATA_WAIT_MAX:.0f}%.",
            "Exit status: 0 all ran, targets met; 1 a step failed or timed out; 2 missing import, no CUDA, "
            "bad usage; 3 a target missed.",
        ]))
    p.add_argument("outdir", nargs="?", default=DEFAULT_OUT,
                   help=f"output folder [default: {DEFAULT_OUT}]")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="the same steps, tiny, on the CPU (no GPU needed)")
    p.add_argument("--requirements", action="store_true",
                   help="print the locked requirements besides torch (hashed; DALI: the build DALI_CUDA or "
                        "this environment's torch picks) and exit")
    p.add_argument("--python-version", default=None,
                   help="--requirements: for this Python (3.12) [default: the one running]")
    return p


def git_revision() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              check=True, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def card_name(plan: Plan, env: dict[str, Any]) -> str:
    if plan.mode != "gpu":
        return "none: CPU smoke run (--cpu-smoke), targets are for one H100"
    if shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            lines = smi.stdout.strip().splitlines()
            env["nvidia_smi"] = lines
            if lines:
                return lines[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return env["gpus"][0]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.requirements:
        from tools.dali_build import ChoiceError

        try:
            print(requirements_text(args.python_version), end="")
        except ChoiceError as e:
            print(f"gpu_check: {e}", file=sys.stderr)
            return 2
        return 0
    plan = CPU_SMOKE if args.cpu_smoke else GPU
    out = Path(args.outdir).resolve()  # relative to the caller's folder; the steps run in ROOT
    command = shlex.join([sys.executable, "-m", "tools.gpu_check", *argv])
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        command = f"CUDA_VISIBLE_DEVICES={shlex.quote(os.environ['CUDA_VISIBLE_DEVICES'])} {command}"
    t0 = time.monotonic()
    try:  # nothing is written before these answers
        env = preflight(plan.budgets["preflight"])
        if plan.mode == "gpu" and not env.get("cuda_available"):
            raise Usage(f"CUDA is not available to {sys.executable} (torch {env.get('torch')} sees no GPU): "
                        "this check needs one; --cpu-smoke runs its steps tiny on the CPU")
        # Importing DALI never touches the driver: a build for a newer CUDA than the driver's would
        # pass the imports and fail at the first GPU pipeline, minutes later.
        problem = driver_problem(env) if plan.mode == "gpu" else None
        if problem:
            raise Usage(problem)
    except Usage as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    pre = Step("preflight", "ok", time.monotonic() - t0, plan.budgets["preflight"])

    # This run's outputs replace the last run's; the sample, its shards and the font cache are kept.
    (out / "logs").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "run", ignore_errors=True)
    for old in [*(out / "logs").glob("*.log"), *out.glob("bench-*.json"), out / "env.json",
                out / "gpu-check.json", out / "gpu-check.md"]:
        old.unlink(missing_ok=True)
    env["git"] = git_revision()
    card = card_name(plan, env)
    from tools import atomic  # fsspec: importable now that the preflight has passed

    atomic.write_json(str(out / "env.json"), env)
    date = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"command: {command}\ndate:    {date}\ncard:    {card}")
    print(f"out:     {out} (logs/STEP.log per step); budget {plan.total_s} s: {budget_line(plan)}")
    print(f"{pre.step:<12} {pre.status:<8} {pre.seconds:6.1f} s  (budget {pre.budget_s} s)")
    try:
        steps = [pre, *run_steps(plan, out, os.cpu_count() or 1)]
    except KeyboardInterrupt:
        print("gpu_check: interrupted", file=sys.stderr)
        return 130
    meta = {"command": command, "date": date, "card": card, "env": env, "elapsed_s": time.monotonic() - t0}
    status, text = write_table(out, plan, steps, meta)
    print(f"\n{text}")
    print(f"total: {time.monotonic() - t0:.1f} s; wrote {out / 'gpu-check.md'} and {out / 'gpu-check.json'}")
    return {"pass": 0, "miss": 3}.get(status, 1)


if __name__ == "__main__":
    sys.exit(main())
