"""Atomic writes through fsspec: a temp name in the same folder, fsync, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tools import urls


def temp_name(path: str) -> str:
    """A unique hidden sibling of `path` (same folder, so the final rename stays atomic)."""
    head, tail = path.rsplit("/", 1) if "/" in path else ("", path)
    name = f".{tail}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return f"{head}/{name}" if head else name


class HashingWriter:
    """Forwards writes to a file while hashing them, so a sha256 of what was written needs no
    second read. Has what tarfile and torch.save ask of a file they write: write, tell, flush."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.f.flush()


@contextmanager
def atomic_write(url: str, fs: Any = None) -> Iterator[IO[bytes]]:
    """Open `url` for binary writing; the file appears under its name only if the block succeeds.

    With `fs`, `url` is a path on that filesystem (what a caller holding `fs` already has: turning
    it back into a URL with `fs.unstrip_protocol` would drop the rest of a chained URL).
    """
    if fs is None:
        fs, path = urls.filesystem(url)
    else:
        path = url
    tmp = temp_name(path)
    try:
        if isinstance(fs, LocalFileSystem):
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            with fs.open(tmp, "wb") as f:
                yield f
            fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_bytes(url: str, data: bytes, fs: Any = None) -> None:
    with atomic_write(url, fs) as f:
        f.write(data)


def write_json(url: str, obj: Any, fs: Any = None) -> None:
    write_bytes(url, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), fs)


def read_json(url: str) -> Any:
    with fsspec.open(url, "rb") as f:
        return json.loads(f.read())
