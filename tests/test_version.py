"""--version on every console script: one string, the installed package's metadata."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest
from click.testing import CliRunner

from tools import version

SCRIPTS = sorted(ep for ep in metadata.distribution(version.DISTRIBUTION).entry_points
                 if ep.group == "console_scripts")


def test_every_script_is_covered() -> None:
    assert {ep.name for ep in SCRIPTS} >= {"alexnet-prep", "alexnet-train", "alexnet-eval", "alexnet-report",
                                           "alexnet-bench"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda ep: ep.name)
def test_version_from_the_package_metadata(script: metadata.EntryPoint) -> None:
    result = CliRunner().invoke(script.load(), ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"{script.name} {metadata.version('alexnet-repro')}\n"


def test_installed_script_prints_it() -> None:
    """The real entry point (not click's test runner), as a user types it."""
    exe = f"{sys.prefix}/bin/alexnet-eval"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == f"alexnet-eval {metadata.version('alexnet-repro')}\n"


def test_not_installed_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert version.version().startswith("unknown")
