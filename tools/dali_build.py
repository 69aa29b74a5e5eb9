"""Which DALI build a box needs: nvidia-dali-cuda120 or nvidia-dali-cuda130, never both.

    python -m tools.dali_build                 # the build for this box: cuda120 or cuda130
    python -m tools.dali_build --lock          # its lock file (make install reads this)
    python -m tools.dali_build --requirement   # its pip requirement, as pyproject's extra names it
    python -m tools.dali_build --install       # install it from its lock, removing the other build
    DALI_CUDA=12 python -m tools.dali_build    # the override: 12 or 13

Both builds install the same module, `nvidia.dali`, so one is chosen per environment. The CUDA major
version of the installed torch picks it (torch.version.cuda): a CUDA 12 torch means a box whose
driver runs CUDA 12, so DALI's CUDA 12 build; a CUDA 13 torch, or a CPU-only torch, takes the
CUDA 13 build, which also runs DALI's CPU operators without any driver. DALI_CUDA overrides the
choice (a wheelhouse built on one box for another, or a CUDA 12 torch on a CUDA 13 driver).

Standard library only: `python -m tools.gpu_check` imports this before its preflight, on a box that
may have nothing else, and `make install` runs it before the project is installed. torch is not
imported either: its small generated `torch/version.py` is read on its own (importing torch takes
seconds and, on a GPU box, loads the CUDA libraries).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tools import lockfile


@dataclass(frozen=True)
class Build:
    cuda: int  # the CUDA major version the build is compiled for
    dist: str  # its distribution on the package index
    extra: str  # pyproject.toml's optional dependency that installs it
    min_driver: int  # the oldest NVIDIA driver branch that runs it
    drivers: str  # the drivers that run it, for the README's table

    @property
    def lock(self) -> str:
        """Its hashed lock file beside requirements.lock (tools/requirements.py writes both)."""
        return f"requirements-{self.extra}.lock"

    @property
    def requirement(self) -> str:
        return f"{self.dist}>=2.0"


# Driver ranges from NVIDIA's CUDA compatibility table: CUDA 13.0 needs driver 580 or later; the
# CUDA 12 releases run on 525 and later (12.0) up to the 570 branch (12.8). A newer driver runs an
# older CUDA major too, so cuda120 also works on a 580 driver; the reverse fails at the first GPU
# pipeline, which is what the preflight catches.
BUILDS = {
    12: Build(12, "nvidia-dali-cuda120", "dali-cuda120", 525, "525-570 (CUDA 12.x); also runs on 580+"),
    13: Build(13, "nvidia-dali-cuda130", "dali-cuda130", 580, "580 or later (CUDA 13.x); also CPU-only"),
}
DEFAULT = BUILDS[13]  # a CPU-only torch: cuda130 runs DALI's CPU operators with no driver (CI)
OVERRIDE = "DALI_CUDA"


class ChoiceError(ValueError):
    """A DALI_CUDA value or a torch CUDA version no build matches; the message is one line."""


def cuda_major(version: str | int | None) -> int | None:
    """12 from "12.6", 13 from "13.0"; from DALI's packed form too ("13.4.92" -> 13492, as
    nvidia.dali.__cuda_version__ holds it); None for None, "" or 0 (no CUDA)."""
    if version is None or version == "" or version == 0:
        return None
    text = str(version)
    if "." in text:
        return int(text.split(".")[0])
    # DALI packs the version as digits (12.8.90 -> 12890, 13.4.92 -> 13492); it reads the major as
    # the first two digits itself (nvidia/dali/backend.py), valid from CUDA 10 on.
    return int(text[:2]) if len(text) > 2 else int(text)


def driver_cuda_major(driver_version: int) -> int:
    """cudaDriverGetVersion's value (12080 = 12.8, 13000 = 13.0) -> its major."""
    return driver_version // 1000


def choose(torch_cuda: str | None, override: str | None = None) -> Build:
    """The build for a torch built for `torch_cuda` (torch.version.cuda; None: CPU-only), unless
    `override` ("12" or "13", from DALI_CUDA) names one."""
    if override:
        try:
            return BUILDS[int(override.strip())]
        except (ValueError, KeyError):
            raise ChoiceError(f"{OVERRIDE}={override!r}: expected one of "
                              f"{', '.join(str(c) for c in BUILDS)}") from None
    major = cuda_major(torch_cuda)
    if major is None:
        return DEFAULT
    if major not in BUILDS:
        raise ChoiceError(f"torch is built for CUDA {torch_cuda}, for which DALI has no build here "
                          f"(builds: CUDA {', '.join(str(c) for c in BUILDS)}); set {OVERRIDE}")
    return BUILDS[major]


def torch_cuda() -> str | None:
    """torch.version.cuda of the torch this interpreter would import, without importing torch.
    Raises ChoiceError when torch is not installed: the choice follows torch, so torch comes first."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise ChoiceError(f"torch is not installed in {sys.executable}: install it first, or set {OVERRIDE}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "version.py")
    # torch/version.py is generated at build time and imports only typing; loading it alone gives
    # the same `cuda` as `torch.version.cuda` without starting torch.
    loader = importlib.machinery.SourceFileLoader("_torch_version", path)
    module_spec = importlib.util.spec_from_loader(loader.name, loader)
    assert module_spec is not None
    module = importlib.util.module_from_spec(module_spec)
    loader.exec_module(module)
    return getattr(module, "cuda", None)


def installed() -> list[Build]:
    """The DALI builds installed in this environment (more than one is a broken environment)."""
    return [build for build in BUILDS.values() if _installed(build.dist)]


def for_box(env: dict[str, str] | None = None) -> Build:
    """The choice `make install` makes: DALI_CUDA if set, else the installed torch's CUDA major."""
    override = (os.environ if env is None else env).get(OVERRIDE)
    return choose(None, override) if override else choose(torch_cuda())


def driver_problem(dali_cuda: int | None, driver_version: int | None, dist: str | None = None) -> str | None:
    """One line when the installed DALI build needs a newer CUDA than the driver runs, saying what to
    install instead; None when it runs (or when either version is unknown: nothing to compare).
    dali_cuda: the build's CUDA version in any form cuda_major reads; driver_version:
    cudaDriverGetVersion's value; dist: the installed distribution's name, for the message."""
    build_major = cuda_major(dali_cuda)
    if build_major is None or not driver_version:
        return None
    driver_major = driver_cuda_major(driver_version)
    if build_major <= driver_major:  # drivers run every older CUDA major
        return None
    have = dist or (BUILDS[build_major].dist if build_major in BUILDS else f"DALI for CUDA {build_major}")
    driver = f"{driver_major}.{driver_version % 1000 // 10}"
    head = f"DALI {have} is built for CUDA {build_major}, but the NVIDIA driver runs CUDA {driver}"
    newer = f"update the driver to {BUILDS[build_major].min_driver} or later" if build_major in BUILDS else ""
    fit = BUILDS.get(driver_major)
    if fit is None:
        return f"{head}, for which DALI has no build here: {newer or 'update the driver'}"
    return (f"{head}: pip uninstall -y {have} && pip install --no-deps --require-hashes -r {fit.lock} "
            f"(or `make install {OVERRIDE}={fit.cuda}`)" + (f", or {newer}" if newer else ""))


def install(build: Build) -> int:
    """Uninstall the other builds and what only they need, then install `build` from its lock into
    this interpreter's environment. The uninstall comes first: installing a second build over the first
    would leave two distributions writing the same nvidia/dali files, and removing one later would
    break both."""

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pip = [sys.executable, "-m", "pip"]
    keep = {e.name for e in lockfile.parse(open(os.path.join(root, build.lock)).read())}
    present = installed()
    others = [b for b in present if b != build]
    # Their own lock's entries that this build does not share (nvImageCodec, nvJPEG for CUDA 13...).
    drop = sorted({e.name for b in others for e in lockfile.parse(open(os.path.join(root, b.lock)).read())
                   if e.name not in keep and _installed(e.name)})
    if others and build in present:  # both there: removing the other took shared files of this one
        drop.append(build.dist)
    if drop:
        subprocess.run([*pip, "uninstall", "-q", "-y", *drop], check=True)
    done = subprocess.run([*pip, "install", "-q", "--require-hashes", "--no-deps", "-r",
                          os.path.join(root, build.lock)])
    if done.returncode == 0:
        print(f"DALI: {build.dist} (for CUDA {build.cuda} drivers, {build.drivers}), from {build.lock}"
              + (f"; removed {', '.join(drop)}" if drop else ""))
    return done.returncode


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.dali_build", description=__doc__.split("\n\n")[0])
    what = p.add_mutually_exclusive_group()
    what.add_argument("--lock", action="store_true", help="print the build's lock file")
    what.add_argument("--requirement", action="store_true", help="print the build's pip requirement")
    what.add_argument("--extra", action="store_true", help="print pyproject's extra for the build")
    what.add_argument("--install", action="store_true",
                      help="pip-install the build from its lock (hash-checked, no resolving), first "
                           "uninstalling the other build")
    args = p.parse_args(argv)
    try:
        build = for_box()
    except ChoiceError as e:
        print(f"dali_build: {e}", file=sys.stderr)
        return 2
    if args.install:
        return install(build)
    print(build.lock if args.lock else build.requirement if args.requirement
          else build.extra if args.extra else build.dist.removeprefix("nvidia-dali-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
