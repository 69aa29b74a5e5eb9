"""The one version string every console script prints with --version: the installed package's
metadata (pyproject.toml's `version`), so a release bump changes it everywhere at once."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

import click

DISTRIBUTION = "alexnet-repro"


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that was never `pip install`ed
        return "unknown (not installed; run `make install`)"


def option(prog_name: str) -> Callable[[Any], Any]:
    """click's --version for the command `prog_name`."""
    return click.version_option(version(), "--version", prog_name=prog_name,
                                message="%(prog)s %(version)s")
