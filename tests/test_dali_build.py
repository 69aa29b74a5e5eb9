"""tools/dali_build.py: which DALI build a box gets (torch's CUDA major, DALI_CUDA overriding), that
torch's CUDA version is read without importing torch, and the one line the GPU check's preflight
prints when the installed build needs a newer driver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import dali_build
from tools.dali_build import BUILDS, ChoiceError, choose, cuda_major, driver_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # requires-python allows 3.10: the dev extra brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("torch_cuda", "dist"), [
    ("12.1", "nvidia-dali-cuda120"), ("12.8", "nvidia-dali-cuda120"),
    ("13.0", "nvidia-dali-cuda130"), ("13.2", "nvidia-dali-cuda130"),
    (None, "nvidia-dali-cuda130"),  # a CPU-only torch: cuda130's CPU operators need no driver
])
def test_torch_cuda_major_picks_the_build(torch_cuda: str | None, dist: str) -> None:
    assert choose(torch_cuda).dist == dist


def test_the_override_wins_and_a_bad_one_is_refused_in_one_line() -> None:
    assert choose("13.0", "12").dist == "nvidia-dali-cuda120"
    assert choose(None, " 13 ").dist == "nvidia-dali-cuda130"
    for bad in ("11", "cuda12", "12.8"):
        with pytest.raises(ChoiceError, match="DALI_CUDA=.*expected one of 12, 13"):
            choose("13.0", bad)
    with pytest.raises(ChoiceError, match="CUDA 11.8.*set DALI_CUDA"):
        choose("11.8")


def test_cuda_major_reads_torchs_and_dalis_forms() -> None:
    assert [cuda_major(v) for v in ("12.6", "13.0", 12890, 13492, "13492", None, "", 0)] == \
        [12, 13, 12, 13, 13, None, None, None]


def _fake_torch(tmp_path: Path, cuda: str | None) -> Path:
    """A torch package whose __init__ fails: reading its CUDA version must not import it."""
    pkg = tmp_path / "site" / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('torch was imported')\n")
    (pkg / "version.py").write_text(f"from typing import Optional\n__version__ = '2.13.0'\n"
                                    f"cuda: Optional[str] = {cuda!r}\n")
    return pkg.parent


def _cli(*args: str, path: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("DALI_CUDA", "PYTHONPATH")}
    if path is not None:
        base["PYTHONPATH"] = os.pathsep.join([str(path), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "tools.dali_build", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**base, **env}, timeout=60)


@pytest.mark.parametrize(("cuda", "lock"), [("12.4", "requirements-dali-cuda120.lock"),
                                            ("13.0", "requirements-dali-cuda130.lock"),
                                            (None, "requirements-dali-cuda130.lock")])
def test_make_installs_choice_follows_the_installed_torch_without_importing_it(
        tmp_path: Path, cuda: str | None, lock: str) -> None:
    site = _fake_torch(tmp_path, cuda)
    result = _cli("--lock", path=site)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{lock}\n"
    overridden = _cli("--lock", path=site, DALI_CUDA="12")
    assert overridden.stdout == "requirements-dali-cuda120.lock\n"


def test_without_torch_the_choice_asks_for_torch_or_the_override() -> None:
    hide_torch = ("import importlib.util, sys\n"
                  "find = importlib.util.find_spec\n"
                  "importlib.util.find_spec = lambda name, *a: None if name == 'torch' else find(name, *a)\n"
                  "from tools import dali_build\n"
                  "sys.exit(dali_build.main([]))")
    env = {k: v for k, v in os.environ.items() if k != "DALI_CUDA"}
    result = subprocess.run([sys.executable, "-c", hide_torch], capture_output=True, text=True, cwd=ROOT,
                            timeout=60, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("dali_build: torch is not installed in ")
    assert "set DALI_CUDA" in result.stderr
    result = subprocess.run([sys.executable, "-c", hide_torch], capture_output=True, text=True, cwd=ROOT,
                            timeout=60, env={**env, "DALI_CUDA": "12"})
    assert result.returncode == 0 and result.stdout == "cuda120\n"


def test_pyprojects_extras_are_the_builds_and_dali_is_not_a_base_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("nvidia-dali")]
    for build in BUILDS.values():
        assert project["optional-dependencies"][build.extra] == [build.requirement]
        assert (ROOT / build.lock).exists()


@pytest.mark.parametrize(("dali_cuda", "driver", "expected"), [
    (13492, 13000, None),  # cuda130 on a CUDA 13.0 driver (580)
    (12890, 13000, None),  # cuda120 on a CUDA 13 driver: a newer driver runs older CUDA majors
    (12890, 12020, None),
    (13492, None, None),  # no driver (a CPU box): nothing to compare
    (None, 12080, None),  # no DALI: the preflight names it as missing instead
])
def test_driver_problem_is_silent_when_the_build_runs(dali_cuda: int | None, driver: int | None,
                                                       expected: None) -> None:
    assert driver_problem(dali_cuda, driver) is expected


def test_driver_problem_says_what_to_install_in_one_line() -> None:
    line = driver_problem(13492, 12080, "nvidia-dali-cuda130")
    assert line == ("DALI nvidia-dali-cuda130 is built for CUDA 13, but the NVIDIA driver runs CUDA 12.8: "
                    "pip uninstall -y nvidia-dali-cuda130 && pip install --no-deps --require-hashes "
                    "-r requirements-dali-cuda120.lock (or `make install DALI_CUDA=12`), or update the "
                    "driver to 580 or later")
    old = driver_problem("13.0", 11080)
    assert old is not None and "\n" not in old
    assert old.endswith("CUDA 11.8, for which DALI has no build here: update the driver to 580 or later")


def test_installed_sees_this_environments_build() -> None:
    """`make install` put exactly one build here (tests run in its environment)."""
    found = dali_build.installed()
    assert len(found) == 1, [b.dist for b in found]


def test_install_removes_the_other_build_and_only_what_it_alone_needs(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`make install DALI_CUDA=12` over an environment holding the CUDA 13 build (pip faked)."""
    calls: list[list[str]] = []

    def run(cmd: list[str], check: bool = False) -> subprocess.CompletedProcess:
        calls.append(cmd[3:])  # after [python, -m, pip]
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(dali_build, "installed", lambda: [BUILDS[13]])
    monkeypatch.setattr(dali_build, "_installed", lambda dist: True)
    monkeypatch.setattr(dali_build.subprocess, "run", run)
    assert dali_build.install(BUILDS[12]) == 0
    uninstall, install = calls
    assert uninstall[:3] == ["uninstall", "-q", "-y"]
    removed = set(uninstall[3:])
    assert {"nvidia-dali-cuda130", "nvidia-nvimgcodec-cu13"} <= removed
    assert "nvidia-dali-cuda120" not in removed and "gast" not in removed  # gast: both builds need it
    assert install == ["install", "-q", "--require-hashes", "--no-deps", "-r",
                       str(ROOT / "requirements-dali-cuda120.lock")]
    assert capsys.readouterr().out.startswith("DALI: nvidia-dali-cuda120 (for CUDA 12 drivers")


def test_install_over_both_builds_reinstalls_the_chosen_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both builds installed write the same nvidia/dali files: removing one breaks the other, so the
    chosen one is removed too and installed afresh."""
    calls: list[list[str]] = []
    monkeypatch.setattr(dali_build, "installed", lambda: [BUILDS[12], BUILDS[13]])
    monkeypatch.setattr(dali_build, "_installed", lambda dist: True)
    monkeypatch.setattr(dali_build.subprocess, "run",
                        lambda cmd, check=False: calls.append(cmd[3:]) or subprocess.CompletedProcess(cmd, 0))
    assert dali_build.install(BUILDS[13]) == 0
    assert {"nvidia-dali-cuda120", "nvidia-dali-cuda130"} <= set(calls[0][3:])
    assert calls[1][-1].endswith("requirements-dali-cuda130.lock")
