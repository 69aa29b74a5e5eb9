"""tools/requirements.py and the lock files it writes: every dependency of pyproject.toml is locked
with an exact pin and hashes, DALI's builds stay in their own files, the split of one resolution is
right, and this environment (made by `make install`) holds exactly the lock's versions."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tools import dali_build, requirements
from tools.dali_build import BUILDS
from tools.requirements import MAIN_LOCK, applies, normalise, parse, split

if sys.version_info >= (3, 11):
    import tomllib
else:  # requires-python allows 3.10: the dev extra brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCKS = [MAIN_LOCK, *(b.lock for b in BUILDS.values())]


def locked(name: str) -> dict[str, list[requirements.Entry]]:
    by_name: dict[str, list[requirements.Entry]] = {}
    for e in parse((ROOT / name).read_text()):
        by_name.setdefault(e.name, []).append(e)
    return by_name


def test_the_lock_covers_every_dependency_of_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    main = locked(MAIN_LOCK)
    wanted = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]
    names = {normalise(r.name) for r in wanted}
    assert "torch" in names
    assert names - {"torch"} <= set(main), f"not locked: {sorted(names - {'torch'} - set(main))}"
    for r in wanted:  # the locked versions satisfy pyproject's ranges
        for e in main.get(normalise(r.name), []):
            assert r.specifier.contains(e.version, prereleases=True), (r, e.version)
    # torch by version only, in the header; the Makefile installs that pin.
    pin = requirements.torch_pin((ROOT / MAIN_LOCK).read_text())
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", pin), pin
    assert "torch" not in main
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH ?= $(shell sed -n 's/^\\# torch: //p' requirements.lock)" in makefile
    for build in BUILDS.values():
        extra = [Requirement(r) for r in project["optional-dependencies"][build.extra]]
        entries = locked(build.lock)
        assert [normalise(r.name) for r in extra] == [build.dist] and build.dist in entries


@pytest.mark.parametrize("name", LOCKS)
def test_every_line_is_an_exact_pin_with_hashes(name: str) -> None:
    text = (ROOT / name).read_text()
    entries = parse(text)
    assert entries
    # Every requirement line parsed as name==version: no range, no URL, no -e, no option line.
    starts = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert len(starts) == len(entries), [s for s in starts if not requirements.REQUIREMENT.match(s)]
    for e in entries:
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!]*", e.version), e
        assert e.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in e.hashes), e.name


def test_dali_builds_live_in_their_own_files_and_nothing_twice() -> None:
    main = set(locked(MAIN_LOCK))
    assert not {n for n in main if n.startswith("nvidia-dali")}
    for build in BUILDS.values():
        names = set(locked(build.lock))
        assert {n for n in names if n.startswith("nvidia-dali")} == {build.dist}
        assert not names & main, f"{build.lock} repeats {sorted(names & main)}"
    # torch's CUDA libraries are not locked: the CUDA build of torch pins them itself
    assert not [n for n in main if requirements.TORCH_CUDA_LIBS.match(n)]


def test_per_python_version_entries_do_not_overlap() -> None:
    """Where a package has one pin per Python version, exactly one applies to each supported Python."""
    for name in LOCKS:
        for package, entries in locked(name).items():
            for python in ("3.10", "3.11", "3.12", "3.13"):
                env = requirements.target_env(python)
                hits = [e.version for e in entries if applies(e.marker, env)]
                assert len(hits) <= 1, (name, package, python, hits)
                if package in ("numpy", "scipy", "matplotlib", "pytest", "click"):
                    assert len(hits) == 1, (name, package, python)


UV_OUTPUT = """\
click==8.5.1 \\
    --hash=sha256:aa \\
    --hash=sha256:bb
    # via alexnet-repro (pyproject.toml)
filelock==4.3.2 ; python_full_version >= '3.11' \\
    --hash=sha256:cc
    # via torch
gast==0.7.0 \\
    --hash=sha256:dd
    # via
    #   nvidia-dali-cuda120
    #   nvidia-dali-cuda130
numpy==2.4.6 \\
    --hash=sha256:ee
    # via
    #   alexnet-repro (pyproject.toml)
    #   nvidia-dali-cuda130
nvidia-cublas==13.1.1.3 ; sys_platform == 'linux' \\
    --hash=sha256:ff
    # via
    #   nvidia-cudnn-cu13
    #   torch
nvidia-cudnn-cu13==9.20.0.48 ; sys_platform == 'linux' \\
    --hash=sha256:00
    # via torch
nvidia-dali-cuda120==2.4.0 \\
    --hash=sha256:11
    # via alexnet-repro (pyproject.toml)
nvidia-dali-cuda130==2.4.0 \\
    --hash=sha256:22
    # via alexnet-repro (pyproject.toml)
nvidia-nvjpeg==13.3.2.43 \\
    --hash=sha256:33
    # via nvidia-dali-cuda130
torch==2.13.0 \\
    --hash=sha256:44
    # via
    #   -c constraints.txt
    #   alexnet-repro (pyproject.toml)
"""


def test_split_of_one_resolution() -> None:
    entries = parse(UV_OUTPUT)
    assert [(e.name, e.marker) for e in entries][:2] == [("click", None),
                                                         ("filelock", "python_full_version >= '3.11'")]
    assert entries[0].hashes == ["sha256:aa", "sha256:bb"]
    assert entries[3].via == {"alexnet-repro", "nvidia-dali-cuda130"}
    main, per_build, left_out = split(entries)
    assert [e.name for e in main] == ["click", "filelock", "numpy"]  # torch's pure-Python dependency kept
    assert {d: [e.name for e in es] for d, es in per_build.items()} == {
        "nvidia-dali-cuda120": ["gast", "nvidia-dali-cuda120"],
        "nvidia-dali-cuda130": ["gast", "nvidia-dali-cuda130", "nvidia-nvjpeg"]}
    assert [e.name for e in left_out] == ["nvidia-cublas", "nvidia-cudnn-cu13", "torch"]
    rendered = parse(requirements.render(["header"], main))
    assert [(e.name, e.version, e.hashes, e.marker) for e in rendered] == \
        [(e.name, e.version, e.hashes, e.marker) for e in main]


def test_for_target_evaluates_markers_for_the_target_python(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text(UV_OUTPUT)
    old = parse(requirements.for_target([lock], "3.10"))
    new = parse(requirements.for_target([lock], "3.12"))
    assert "filelock" not in {e.name for e in old} and "filelock" in {e.name for e in new}
    assert all(e.marker is None for e in [*old, *new])
    assert next(e for e in new if e.name == "click").hashes == ["sha256:aa", "sha256:bb"]


def test_this_environment_holds_exactly_the_locks_versions() -> None:
    """What `make install` made (and CI tests in): the lock, torch at its pin, one DALI build."""
    builds = dali_build.installed()
    assert len(builds) == 1
    pin = requirements.torch_pin((ROOT / MAIN_LOCK).read_text())
    assert requirements.check([ROOT / MAIN_LOCK, ROOT / builds[0].lock], pin) == []


def test_every_locked_package_finds_its_dependencies_locked() -> None:
    """--no-deps installs only what the files list: each installed locked package's own requirements
    (markers evaluated here) must be in them, or be torch's."""
    builds = dali_build.installed()
    names = set(locked(MAIN_LOCK)) | set(locked(builds[0].lock)) | {"torch"}
    here = sorted({e.name for lock in (MAIN_LOCK, builds[0].lock) for es in locked(lock).values() for e in es
                   if applies(e.marker)})
    missing = []
    for name in here:
        for spec in importlib.metadata.requires(name) or []:
            r = Requirement(spec)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                if normalise(r.name) not in names:
                    missing.append(f"{name} needs {r.name}")
    assert missing == []
