"""Reading a hashed requirements file (`uv pip compile --generate-hashes`, pip's format): its
`name==version [; marker]` entries with their `--hash` lines and `# via` comments.

Its own module because both sides of the locked install read lock files: tools/requirements.py
(writing and checking the locks) and tools/dali_build.py (installing one DALI build from its lock),
and the first imports the second. Standard library only, like both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
