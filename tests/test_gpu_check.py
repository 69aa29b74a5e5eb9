"""tools/gpu_check.py: budgets that add up, a preflight that names what is missing (exit 2, nothing
written), steps killed with their children past their budget, the table writer on known figures, and,
slow, every step end to end on the CPU with --cpu-smoke (150-195 s on a shared 2-core VM).

CUDA_VISIBLE_DEVICES="" hides any GPU, so the tests behave the same on a GPU box.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tools import dali_build, gpu_check, requirements
from tools.gpu_check import CPU_SMOKE, GPU, STEPS, Step

if sys.version_info >= (3, 11):
    import tomllib
else:  # requires-python allows 3.10: the dev extra brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["pipeline_dali", "pipeline_baseline", "pipeline_ratio",
        *(f"train_{p}_{k}" for p in ("fp32", "tf32", "bf16") for k in ("synthetic", "pipeline", "data_wait")),
        "run_steps", "run_wall", "run_images_per_s", "run_data_wait", "run_val_top1_err",
        "run_ten_crop_top1_err"]


def gpu_check_run(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MPLCONFIGDIR")}
    return subprocess.run([sys.executable, "-m", "tools.gpu_check", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**base, "CUDA_VISIBLE_DEVICES": "", **env})


def test_budgets_add_up_to_the_total_and_the_gpu_run_to_under_5_minutes() -> None:
    for plan in (GPU, CPU_SMOKE):
        assert list(plan.budgets) == list(STEPS)
        assert plan.total_s == sum(plan.budgets.values()) + plan.table_s
    assert GPU.total_s < 300
    result = gpu_check_run("--help")
    assert result.returncode == 0
    for plan in (GPU, CPU_SMOKE):
        line = " + ".join(f"{k} {v}" for k, v in [*plan.budgets.items(), ("table", plan.table_s)])
        assert f"{line} = {plan.total_s} s" in result.stdout
    for text in ("python -m tools.gpu_check", "--cpu-smoke", "Exit status", ">= 25,000", ">= 20,000"):
        assert text in result.stdout


def test_requirements_are_pyprojects_less_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [d for d in project["dependencies"] if not d.startswith("torch")]
    assert [r for _, r in gpu_check.REQUIREMENTS] == runtime


@pytest.mark.parametrize(("dali_cuda", "build", "other"), [("12", "cuda120", "cuda130"),
                                                            ("13", "cuda130", "cuda120")])
def test_requirements_print_the_locks_for_the_chosen_dali_build(dali_cuda: str, build: str,
                                                                other: str) -> None:
    result = gpu_check_run("--requirements", "--python-version", "3.12", DALI_CUDA=dali_cuda)
    assert result.returncode == 0, result.stderr
    lock = requirements.parse((ROOT / "requirements.lock").read_text())
    dali = requirements.parse((ROOT / f"requirements-dali-{build}.lock").read_text())
    env = requirements.target_env("3.12")
    expected = [(e.name, e.version, e.hashes) for e in [*lock, *dali] if requirements.applies(e.marker, env)]
    printed = requirements.parse(result.stdout)
    assert [(e.name, e.version, e.hashes) for e in printed] == expected
    assert all(e.marker is None and e.hashes for e in printed)  # pip download --require-hashes takes it
    names = {e.name for e in printed}
    assert f"nvidia-dali-{build}" in names and f"nvidia-dali-{other}" not in names and "torch" not in names
    assert "pytest" in names  # so that `pytest -m gpu` runs on the GPU box too


def test_requirements_without_torch_or_dali_cuda_say_what_to_set(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    # find_spec finds this torch first: a module, not a package, as if torch were absent for the reader
    (shadow / "torch.py").write_text("")
    result = gpu_check_run("--requirements", PYTHONPATH=str(shadow))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("gpu_check: torch is not installed in ") and "DALI_CUDA" in result.stderr


def test_preflight_names_every_missing_import_in_one_line_and_exits_2(tmp_path: Path) -> None:
    """torch and click absent, simplejpeg present but its own dependency absent: shadow modules first
    on the path stand in for a box without them."""
    shadow = tmp_path / "shadow"
    (shadow / "click").mkdir(parents=True)
    (shadow / "click" / "__init__.py").write_text('raise ModuleNotFoundError("no click", name="click")\n')
    (shadow / "torch.py").write_text('raise ModuleNotFoundError("no torch", name="torch")\n')
    (shadow / "simplejpeg.py").write_text("import libturbo_not_here\n")
    out = tmp_path / "check"
    result = gpu_check_run(str(out), PYTHONPATH=str(shadow))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "gpu_check: missing: torch, click, simplejpeg (needs libturbo_not_here); install the torch build "
        "for this machine's CUDA driver; pip install 'click>=8.1' 'simplejpeg>=1.7' (without a package "
        "index: README.md, 'GPU check')"]
    assert result.stdout == "" and not out.exists()


def test_missing_line_for_a_module_whose_import_fails_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DALI_CUDA", "12")  # the line names the build this box gets
    line = gpu_check.missing_line([("nvidia.dali", "OSError: libnvjpeg.so.13: cannot open shared object")])
    assert line == ("missing: nvidia.dali (OSError: libnvjpeg.so.13: cannot open shared object); "
                    "pip install 'nvidia-dali-cuda120>=2.0' "
                    "(without a package index: README.md, 'GPU check')")


def _fake_gpu_env(**versions: Any) -> dict[str, Any]:
    return {"python": "3.12.3", "torch": "2.13.0+cu126", "cuda": "12.6", "cuda_available": True,
            "gpus": ["NVIDIA H100 80GB HBM3"], "dali": "2.4.0", **versions}


@pytest.mark.parametrize(("versions", "expected"), [
    ({"dali_cuda": 13492, "dali_dists": ["nvidia-dali-cuda130"], "driver_cuda": 12080},
     "DALI nvidia-dali-cuda130 is built for CUDA 13, but the NVIDIA driver runs CUDA 12.8: pip uninstall -y "
     "nvidia-dali-cuda130 && pip install --no-deps --require-hashes -r requirements-dali-cuda120.lock "
     "(or `make install DALI_CUDA=12`), or update the driver to 580 or later"),
    ({"dali_cuda": 12890, "dali_dists": ["nvidia-dali-cuda120", "nvidia-dali-cuda130"], "driver_cuda": 13000},
     "DALI: nvidia-dali-cuda120 and nvidia-dali-cuda130 are both installed (they ship the same module): "
     "uninstall both, then `make install` or `python -m tools.dali_build --install`"),
])
def test_preflight_stops_a_dali_build_the_driver_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str],
                                                           versions: dict[str, Any], expected: str) -> None:
    """Faked versions: what the preflight's child reports on a CUDA 12.8 (570) box with the CUDA 13
    build, and on a box with both builds. One line, exit 2, nothing written."""
    monkeypatch.setattr(gpu_check, "preflight", lambda budget_s: _fake_gpu_env(**versions))
    out = tmp_path / "check"
    assert gpu_check.main([str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"gpu_check: {expected}\n" and captured.out == ""
    assert not out.exists()


@pytest.mark.parametrize("versions", [
    {"dali_cuda": 12890, "dali_dists": ["nvidia-dali-cuda120"], "driver_cuda": 12080},
    {"dali_cuda": 12890, "dali_dists": ["nvidia-dali-cuda120"], "driver_cuda": 13000},
    {"dali_cuda": 13492, "dali_dists": ["nvidia-dali-cuda130"], "driver_cuda": 13000},
])
def test_preflight_passes_a_dali_build_the_driver_runs(versions: dict[str, Any]) -> None:
    assert gpu_check.driver_problem(_fake_gpu_env(**versions)) is None


def test_the_preflight_child_reports_dalis_build_and_installed_distribution() -> None:
    """The real child on this box: DALI's CUDA build version as the comparison reads it."""
    env = gpu_check.preflight(120)
    assert env["dali_dists"] == [b.dist for b in dali_build.installed()]
    assert dali_build.cuda_major(env["dali_cuda"]) == dali_build.installed()[0].cuda


def test_the_runs_checkpoints_fit_the_train_budget_at_their_measured_cost() -> None:
    """Each epoch of the check's run writes a full checkpoint and usually best.pt; at the cost measured
    with the trainer's code (docs/PERFORMANCE.md) they may take at most a third of the step's budget,
    which also holds the start (imports, CUDA, DALI), the steps, validations and the 10-crop."""
    per_epoch = gpu_check.CHECKPOINT_S + gpu_check.BEST_S
    assert GPU.epochs * per_epoch <= GPU.budgets["train"] / 3
    perf = (ROOT / "docs" / "PERFORMANCE.md").read_text()
    assert f"{gpu_check.CHECKPOINT_S} s" in perf and f"{gpu_check.BEST_S} s" in perf


def test_without_cuda_it_says_so_and_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "check"
    result = gpu_check_run(str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CUDA is not available" in result.stderr and "--cpu-smoke" in result.stderr
    assert not out.exists()  # decided before anything is written


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    result = gpu_check_run(str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.returncode == 2 and "usage: python -m tools.gpu_check" in result.stderr


def test_a_step_past_its_budget_is_killed_with_its_children(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              "print('started', flush=True)\n"
              "time.sleep(60)\n")
    start = time.monotonic()
    step = gpu_check.run_step("slow", 2, [sys.executable, "-c", script], tmp_path)
    assert step.status == "timeout" and step.note == "killed after 2 s"
    assert 2 <= step.seconds < 2 + gpu_check.KILL_GRACE_S + 3 and time.monotonic() - start < 12
    assert (tmp_path / "logs" / "slow.log").read_text() == "started\n"
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # it is reaped by init a moment after the kill
        status = Path(f"/proc/{grandchild}/status")
        if not status.exists() or "\nState:\tZ" in status.read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child {grandchild} outlived the step")


def test_a_failing_step_is_recorded_with_its_exit_status(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    cmd = [sys.executable, "-c", "import sys; print('x'); sys.exit(3)"]
    step = gpu_check.run_step("bad", 10, cmd, tmp_path)
    assert (step.status, step.note, step.budget_s) == ("failed", "exit 3", 10)
    assert (tmp_path / "logs" / "bad.log").read_text() == "x\n"


# --- the table, on known figures ---------------------------------------------------------------------


def fake_outputs(out: Path, pipeline: float, bf16: float, wait: float) -> None:
    """What the benches and the run write (only the fields the table reads; the slow test reads real ones)."""
    def bench(rate: float) -> dict:
        return {"synthetic": {"images_per_s": rate * 1.1, "data_wait": 0.0},
                "pipeline": {"images_per_s": rate, "data_wait": wait}}

    (out / "bench-pipeline.json").write_text(json.dumps({
        "device": "gpu", "settings": {"workers": 16}, "ours": {"images_per_s": pipeline},
        "hand_written": {"images_per_s": 2500.0}, "ratio": pipeline / 2500}))
    for p, rate in (("fp32", 8000.0), ("tf32", 15000.0), ("bf16", bf16)):
        (out / f"bench-train-{p}.json").write_text(json.dumps(bench(rate)))
    shards = out / "data-20x160" / "shards"
    shards.mkdir(parents=True)
    (shards / "manifest.json").write_text(json.dumps({
        "classes": [f"n{i:08d}" for i in range(20)], "splits": {"train": {"samples": 3199}}}))
    (out / "run").mkdir()
    epochs = [{"kind": "epoch", "step": 25 * e, "images_per_s": 9000.0 + e, "data_wait": 0.01,
               "val_top1_err": 0.5} for e in range(1, GPU.epochs + 1)]
    final = {"kind": "final", "ten_crop_top1_err": 0.45}
    (out / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*epochs, final]))


def all_ok() -> list[Step]:
    return [Step(name, "ok", 1.5, GPU.budgets[name]) for name in STEPS]


META = {"command": "python -m tools.gpu_check out/x", "date": "2026-12-02 04:00:00 UTC",
        "card": "GPU 0: NVIDIA H100 80GB HBM3", "elapsed_s": 123.4,
        "env": {"python": "3.11.7", "torch": "2.13.0", "dali": "2.4.0"}}


def test_table_when_every_target_is_met(tmp_path: Path) -> None:
    fake_outputs(tmp_path, pipeline=30000.0, bf16=21000.0, wait=0.01)
    status, text = gpu_check.write_table(tmp_path, GPU, all_ok(), META)
    assert status == "pass"
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == ROWS
    assert {k: r["result"] for k, r in rows.items() if r["target"]} == {
        "pipeline_dali": "PASS", "train_fp32_data_wait": "PASS", "train_tf32_data_wait": "PASS",
        "train_bf16_synthetic": "PASS", "train_bf16_pipeline": "PASS", "train_bf16_data_wait": "PASS",
        "run_steps": "PASS", "run_val_top1_err": "PASS", "run_ten_crop_top1_err": "PASS"}
    planned = 25 * GPU.epochs  # 3,199 images in batches of 128
    assert rows["run_steps"]["value"] == planned and rows["run_steps"]["target"] == f"= {planned}"
    assert rows["pipeline_dali"]["shown"] == "30,000" and rows["run_data_wait"]["shown"] == "1.0%"
    # the median epoch: 9000 + e for epochs 1..N
    assert rows["run_images_per_s"]["value"] == 9000.0 + (GPU.epochs + 1) / 2
    assert report["verdict"] == "PASS: 9 of 9 targets met" and report["budget_s"] == GPU.total_s
    assert report["budgets"] == {**GPU.budgets, "table": GPU.table_s}

    md = (tmp_path / "gpu-check.md").read_text()
    for line in ("- command: `python -m tools.gpu_check out/x`", "- date: 2026-12-02 04:00:00 UTC",
                 "- card: GPU 0: NVIDIA H100 80GB HBM3", "result: PASS: 9 of 9 targets met",
                 "| pipeline: DALI gpu, images/s ", f"123.4 s before the table (budget {GPU.total_s} s)"):
        assert line in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(ROWS) and len({len(line) for line in table}) == 1  # aligned
    assert "\n".join(table) in text  # the printed table is the file's


def test_table_judges_misses_and_failed_steps(tmp_path: Path) -> None:
    fake_outputs(tmp_path, pipeline=24000.0, bf16=21000.0, wait=0.03)
    status, _ = gpu_check.write_table(tmp_path, GPU, all_ok(), META)
    rows = {r["key"]: r for r in json.loads((tmp_path / "gpu-check.json").read_text())["rows"]}
    assert status == "miss"
    assert rows["pipeline_dali"]["result"] == rows["train_bf16_data_wait"]["result"] == "MISS"

    steps = all_ok()
    steps[STEPS.index("train")] = Step("train", "timeout", 55.0, 55, "killed after 55 s")
    (tmp_path / "bench-train-tf32.json").unlink()
    status, text = gpu_check.write_table(tmp_path, GPU, steps, META)
    rows = {r["key"]: r for r in json.loads((tmp_path / "gpu-check.json").read_text())["rows"]}
    assert status == "failed" and "result: FAILED: not ok: train (see logs/)" in text
    assert rows["train_tf32_data_wait"]["result"] == "NO DATA" and rows["run_wall"]["shown"] == "-"
    assert "train 55.0 (timeout)" in text

    # The CPU smoke run shows the targets but does not judge them.
    status, text = gpu_check.write_table(tmp_path, CPU_SMOKE, all_ok(), META)
    assert status == "pass" and "CPU smoke" in text


@pytest.mark.slow
@pytest.mark.heavy  # ~45 s: the GPU check's whole sequence on the CPU
def test_cpu_smoke_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "check"
    result = gpu_check_run("--cpu-smoke", str(out), timeout=CPU_SMOKE.total_s + 60)
    assert result.returncode == 0, result.stdout + result.stderr

    report = json.loads((out / "gpu-check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["status"] == "pass"
    assert report["command"].endswith(f"-m tools.gpu_check --cpu-smoke {out}")
    assert [(s["step"], s["status"]) for s in report["steps"]] == [(s, "ok") for s in STEPS]
    assert all(s["seconds"] <= s["budget_s"] for s in report["steps"])
    assert sum(s["seconds"] for s in report["steps"]) <= report["elapsed_s"] <= report["budget_s"]
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == ROWS
    assert all(r["value"] is not None for r in rows.values()), rows
    assert all(r["result"] in ("PASS", "MISS") for r in rows.values() if r["target"])
    assert rows["run_steps"]["value"] == report["run"]["steps_planned"] == 8  # 31 images / 8, 2 epochs
    assert report["pipeline"]["settings"]["copies"] == 2
    assert {p: t["settings"]["precision"] for p, t in report["train"].items()} == {
        "fp32": "fp32", "tf32": "tf32", "bf16": "bf16"}
    assert report["env"]["torch"] and report["env"]["dali"] and report["env"]["git"]

    md = (out / "gpu-check.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert "\n".join(table) in result.stdout and result.stdout.startswith("command: ")
    for name in ("bench-pipeline.json", "bench-train-fp32.json", "bench-train-tf32.json",
                 "bench-train-bf16.json", "env.json", "run/summary.md", "run/curves.png"):
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "logs").iterdir()) == sorted(f"{s}.log" for s in STEPS[1:])
    assert list((out / "mplconfig").glob("fontlist-*.json"))  # the fonts step's cache, used by report
