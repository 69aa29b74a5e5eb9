"""tools/gpu_check.sh: it parses, shows its usage, refuses to run without CUDA (exit 2, nothing
written), and, slow, runs every step end to end on the CPU with GPU_CHECK_CPU_SMOKE=1 (~80 s on 2
cores), leaving the table and the JSON with every row filled.

CUDA_VISIBLE_DEVICES="" hides any GPU, so the tests behave the same on a GPU box.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.sh"
STEPS = ["env", "sample", "shard", "stats", "verify", "pipeline", "bench-fp32", "bench-tf32", "bench-bf16",
         "train", "report"]
ROWS = ["pipeline_dali", "pipeline_baseline", "pipeline_ratio",
        *(f"train_{p}_{k}" for p in ("fp32", "tf32", "bf16") for k in ("synthetic", "pipeline", "data_wait")),
        "run_steps", "run_wall", "run_images_per_s", "run_data_wait", "run_val_top1_err",
        "run_ten_crop_top1_err"]


def gpu_check(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **env})


def test_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_help_shows_the_usage() -> None:
    result = gpu_check("--help")
    assert result.returncode == 0
    for text in ("bash tools/gpu_check.sh [OUTDIR]", "GPU_CHECK_CPU_SMOKE=1", "Exit status", ">= 25,000"):
        assert text in result.stdout


def test_too_many_arguments() -> None:
    result = gpu_check("a", "b")
    assert result.returncode == 2 and "usage: bash tools/gpu_check.sh [OUTDIR]" in result.stderr


def test_without_cuda_it_says_so_and_exits_2(tmp_path: Path) -> None:
    result = gpu_check(str(tmp_path / "check"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CUDA is not available" in result.stderr and "set GPU_CHECK_CPU_SMOKE=1" in result.stderr
    assert not (tmp_path / "check").exists()  # decided before anything is written


def test_without_torch_it_says_so_and_exits_2(tmp_path: Path) -> None:
    result = gpu_check(str(tmp_path / "check"), PYTHON="false")
    assert result.returncode == 2 and "cannot import torch with PYTHON=false" in result.stderr
    assert not (tmp_path / "check").exists()


@pytest.mark.slow
def test_cpu_smoke_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "check"
    result = gpu_check(str(out), timeout=900, GPU_CHECK_CPU_SMOKE="1")
    assert result.returncode == 0, result.stdout + result.stderr

    report = json.loads((out / "gpu-check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["status"] == "pass"
    assert report["command"].endswith(f"bash {SCRIPT} {out}") and "GPU_CHECK_CPU_SMOKE=1" in report["command"]
    assert [(s["step"], s["status"]) for s in report["steps"]] == [(s, "ok") for s in STEPS]
    assert sum(s["seconds"] for s in report["steps"]) <= report["elapsed_s"] <= report["budget_s"]
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == ROWS
    assert all(r["value"] is not None for r in rows.values()), rows
    assert all(r["result"] in ("PASS", "MISS") for r in rows.values() if r["target"])
    assert rows["run_steps"]["value"] == report["run"]["steps_planned"] == 16  # 63 images / 8, 2 epochs
    assert rows["run_steps"]["result"] == "PASS"
    assert report["pipeline"]["settings"]["copies"] == 2
    assert {p: t["settings"]["precision"] for p, t in report["train"].items()} == {
        "fp32": "fp32", "tf32": "tf32", "bf16": "bf16"}
    assert report["env"]["torch"] and report["env"]["dali"]

    md = (out / "gpu-check.md").read_text()
    for line in (f"- command: `{report['command']}`", f"- date: {report['date']}",
                 f"- card: {report['card']}", "result: PASS"):
        assert line in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(ROWS)
    for r in rows.values():
        assert any(line.startswith(f"| {r['check']} ") and f" {r['shown']} |" in line for line in table)
    assert "\n".join(table) in result.stdout  # the printed table is the file's
    assert result.stdout.startswith("command: ")

    for name in ("bench-pipeline.json", "bench-train-fp32.json", "bench-train-tf32.json",
                 "bench-train-bf16.json", "env.json", "run/summary.md", "run/curves.png"):
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "logs").iterdir()) == sorted(f"{s}.log" for s in STEPS)
