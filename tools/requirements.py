"""The locked install: requirements.lock and one lock per DALI build, resolved from pyproject.toml.

    make lock                                          # refresh the three files (runs the line below)
    python -m tools.requirements lock --uv .venv-lock/bin/uv --torch torch==2.13.0
    python -m tools.requirements check                 # does this environment hold the lock's versions?

One universal resolution (uv pip compile --universal --generate-hashes: every Python from
pyproject's requires-python on, every platform's markers kept) of the project with its [dev] extra,
both DALI extras and torch pinned to the Makefile's TORCH, so that every file below holds versions
from one consistent set. It is then split by who needs each package:

- requirements.lock: what the project and its [dev] tools need, and torch's own pure-Python
  dependencies (filelock, sympy, jinja2, ...): `==` pins with `--hash` lines.
- requirements-dali-cuda120.lock / requirements-dali-cuda130.lock: a DALI build and what only it
  needs (its nvImageCodec, nvJPEG, nvCOMP wheels). One of them is installed, never both (they ship
  the same module; tools/dali_build.py chooses).
- Left out: torch itself, pinned by version only (the lock's header and the Makefile's TORCH) since
  its build differs per box (CPU here, CUDA 12 or 13 on GPU boxes), so no one hash fits; and the CUDA
  libraries only a CUDA build of torch pulls in (nvidia-*, cuda-*, triton), which that build pins
  exactly itself.

Standard library only, so that `make lock` runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tools.dali_build import BUILDS

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "alexnet-repro"
MAIN_LOCK = "requirements.lock"
EXTRAS = ("dev",)  # pyproject extras in the main lock; the DALI extras get their own files
TORCH = "torch"
# A CUDA build of torch requires these on Linux (the CPU build requires none of them); they come and go
# with the torch build on each box, pinned exactly by that build's metadata.
TORCH_CUDA_LIBS = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
PINNED_TORCH = re.compile(r"^# torch: (torch==\S+)", re.M)  # the header line naming torch's pin
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)\s*(?:;\s*(.*?))?\s*\\?$")


def normalise(name: str) -> str:
    """PEP 503 name: what pip and uv compare."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Entry:
    """One pinned requirement of a lock file: its text block as the resolver wrote it."""

    name: str
    version: str
    marker: str | None
    hashes: list[str]
    via: set[str] = field(default_factory=set)  # who requires it (PROJECT for pyproject itself)
    text: str = ""


def parse(text: str) -> list[Entry]:
    """The entries of a requirements file written by `uv pip compile --generate-hashes` (or by
    `render`): a `name==version [; marker] \\` line, its `--hash` lines, then `# via` comments."""
    entries: list[Entry] = []
    block: list[str] = []
    in_via = False
    for line in text.splitlines():
        m = REQUIREMENT.match(line)
        if m:
            entries.append(Entry(normalise(m[1]), m[2], m[3] or None, []))
            block = [line]
            entries[-1].text = line
            in_via = False
            continue
        if not entries or not line.startswith("    "):
            in_via = False
            continue
        entry = entries[-1]
        stripped = line.strip().rstrip("\\").strip()
        block.append(line)
        entry.text = "\n".join(block)
        if stripped.startswith("--hash="):
            entry.hashes.append(stripped.removeprefix("--hash="))
        elif stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                entry.via.add(_via_name(rest))
        elif in_via and stripped.startswith("#"):
            entry.via.add(_via_name(stripped.lstrip("#").strip()))
    return entries


def _via_name(item: str) -> str:
    """"alexnet-repro (pyproject.toml)" -> "alexnet-repro"; "-c constraints.txt" -> "-c"."""
    return normalise(item.split(" ")[0]) if not item.startswith("-") else item.split(" ")[0]


def _closure(seeds: Iterable[str], children: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(seeds)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(children.get(name, ()))
    return seen


def split(entries: Sequence[Entry]) -> tuple[list[Entry], dict[str, list[Entry]], list[Entry]]:
    """(main lock, {DALI distribution: its lock}, left out) from one resolution; see the module doc."""
    children: dict[str, set[str]] = {}
    for e in entries:
        for parent in e.via:
            children.setdefault(parent, set()).add(e.name)
    dali = {b.dist for b in BUILDS.values()}
    seeds = {n for n in children.get(PROJECT, ()) if n != TORCH and n not in dali}
    seeds |= {n for n in children.get(TORCH, ()) if not TORCH_CUDA_LIBS.match(n)}
    main = _closure(seeds, children)
    per_build = {d: _closure([d], children) - main for d in sorted(dali)}
    kept = main.union(*per_build.values())
    return ([e for e in entries if e.name in main],
            {d: [e for e in entries if e.name in names] for d, names in per_build.items()},
            [e for e in entries if e.name not in kept])


def render(header: Sequence[str], entries: Sequence[Entry]) -> str:
    return "\n".join([*(f"# {line}" if line else "#" for line in header), *(e.text for e in entries)]) + "\n"


def lock(uv: str, torch: str, out: Path = ROOT, python: str = "3.10") -> list[Path]:
    """Resolve and write requirements.lock and one lock per DALI build into `out`."""
    if not re.fullmatch(r"torch==[0-9][0-9A-Za-z.]*", torch):
        raise SystemExit(f"lock: --torch must pin a version (torch==X.Y.Z), got {torch!r}")
    extras = [*EXTRAS, *(b.extra for b in BUILDS.values())]
    with tempfile.TemporaryDirectory() as tmp:
        constraints, resolved = Path(tmp) / "torch.txt", Path(tmp) / "all.txt"
        constraints.write_text(torch + "\n")
        cmd = [uv, "pip", "compile", str(out / "pyproject.toml"), "--universal", "--python-version", python,
               "--generate-hashes", "--no-header", "--index-url", "https://pypi.org/simple",
               "-c", str(constraints), "-o", str(resolved), "--quiet"]
        for extra in extras:
            cmd += ["--extra", extra]
        subprocess.run(cmd, check=True)
        main, per_build, left_out = split(parse(resolved.read_text()))
    why = textwrap.wrap(
        "Generated by `make lock` (tools/requirements.py) from pyproject.toml: one universal resolution "
        f"(uv, Python >= {python}, Linux x86_64 among all platforms) of the project, its extras "
        f"{', '.join(extras)}, and {torch}. Do not edit; installing anything else is your own choice.", 100)
    left = sorted({e.name for e in left_out if e.name != TORCH})
    written = [out / MAIN_LOCK]
    (out / MAIN_LOCK).write_text(render([
        *why, "",
        "Installed with `pip install --require-hashes --no-deps -r requirements.lock`, then torch, then one",
        "DALI lock (requirements-dali-cuda120.lock or requirements-dali-cuda130.lock): see `make install`.",
        "torch is pinned by version only: its build (CPU, CUDA 12, CUDA 13) differs per box, so no hash",
        "fits:",
        f"torch: {torch}",
        *textwrap.wrap("Left to torch's CUDA build, which pins them itself: "
                       f"{', '.join(left) or 'none'}.", 100, break_on_hyphens=False),
        ""], main))
    for build in BUILDS.values():
        path = out / build.lock
        path.write_text(render([
            *why, "",
            f"DALI's CUDA {build.cuda} build (drivers {build.drivers}) and what only it needs, installed",
            f"after requirements.lock with `pip install --require-hashes --no-deps -r {build.lock}`.",
            "Never together with another requirements-dali-*.lock: both builds ship the module nvidia.dali.",
            ""], per_build[build.dist]))
        written.append(path)
    return written


def applies(marker: str | None, env: dict[str, str] | None = None) -> bool:
    """Whether an entry's marker holds here; the markers uv writes only compare python_full_version,
    python_version, sys_platform, platform_machine and platform_system, joined by and/or."""
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:  # a bare Python (the GPU check's --requirements): pip vendors packaging
        from pip._vendor.packaging.markers import Marker

    return Marker(marker).evaluate(env)


def target_env(python: str) -> dict[str, str]:
    """Marker variables of a Linux x86_64 CPython `python` ("3.12"): the box a wheelhouse is for."""
    return {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def for_target(paths: Sequence[Path], python: str) -> str:
    """The locks' entries that a Linux x86_64 CPython `python` installs, markers evaluated and dropped:
    `pip download --python-version` evaluates a file's markers for the Python running it, not the
    target's, and would skip (or add) the entries that differ per version."""
    env = target_env(python)
    lines = [f"# {', '.join(p.name for p in paths)} for Python {python} on Linux x86_64 "
             "(tools.requirements.for_target)"]
    for path in paths:
        for e in parse(path.read_text()):
            if applies(e.marker, env):
                lines.append(" \\\n".join([f"{e.name}=={e.version}", *(f"    --hash={h}" for h in e.hashes)]))
    return "\n".join(lines) + "\n"


def torch_pin(text: str) -> str:
    """The `torch==X` a lock's header records."""
    m = PINNED_TORCH.search(text)
    if not m:
        raise ValueError("no '# torch: torch==...' line in the lock's header")
    return m[1]


def check(paths: Sequence[Path], torch: str | None = None) -> list[str]:
    """What in this environment differs from the locks at `paths`, and torch from `torch` (its pin,
    torch==X; its local build tag, +cpu or +cu130, is the box's): one line each."""
    problems = []
    if torch is not None:
        want = torch.split("==", 1)[1]
        try:
            have = importlib.metadata.version(TORCH)
        except importlib.metadata.PackageNotFoundError:
            have = "none"
        if have.split("+")[0] != want:
            problems.append(f"torch: {have} installed, the lock pins {want}")
    for path in paths:
        for e in parse(path.read_text()):
            if not applies(e.marker):
                continue
            try:
                have = importlib.metadata.version(e.name)
            except importlib.metadata.PackageNotFoundError:
                problems.append(f"{e.name}: not installed, {path.name} pins {e.version}")
                continue
            if have != e.version:
                problems.append(f"{e.name}: {have} installed, {path.name} pins {e.version}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.requirements", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    lk = sub.add_parser("lock", help="resolve pyproject.toml and write the lock files")
    lk.add_argument("--uv", default="uv", help="the uv executable")
    lk.add_argument("--torch", required=True, help="torch's pin, torch==X.Y.Z (the Makefile's TORCH)")
    lk.add_argument("--python", default="3.10", help="the oldest Python the lock serves")
    ck = sub.add_parser("check", help="compare this environment with the lock and one DALI lock")
    ck.add_argument("--torch", default=None,
                    help="torch's expected pin, torch==X.Y.Z [default: the one requirements.lock records]")
    ck.add_argument("--dali-lock", default=None,
                    help="the DALI build's lock [default: the installed build's, tools.dali_build]")
    args = p.parse_args(argv)
    if args.command == "lock":
        for path in lock(args.uv, args.torch, python=args.python):
            print(f"wrote {os.path.relpath(path)}")
        return 0
    from tools import dali_build

    builds = dali_build.installed()
    dali = args.dali_lock or (builds[0].lock if len(builds) == 1 else None)
    if dali is None:
        print(f"check: {len(builds)} DALI builds installed, expected one", file=sys.stderr)
        return 1
    main_lock = ROOT / MAIN_LOCK
    problems = check([main_lock, ROOT / dali], args.torch or torch_pin(main_lock.read_text()))
    for line in problems:
        print(line, file=sys.stderr)
    note = f" in {len(problems)} packages (an install off the lock is your own choice)" if problems else ""
    print(f"{'differs from' if problems else 'matches'} {MAIN_LOCK} + {dali}{note}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
