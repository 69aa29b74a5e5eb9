"""DALI webdataset index files (the `v1.2` text format that DALI's `wds2idx` writes).

Line 1 is `v1.2 <samples>`; then one line per sample listing, for each of its members,
`<ext> <data offset> <size> <member name>`. With it `fn.readers.webdataset` seeks straight to
samples instead of scanning every tar at start-up. Written from Python's tarfile so it works on
any fsspec URL and needs no GNU tar.
"""

from __future__ import annotations

import tarfile
from typing import IO

import fsspec

from tools import atomic, urls

INDEX_VERSION = "v1.2"


def index_path(tar_url: str) -> str:
    """The index beside a tar (a path or any fsspec URL, chained ones included)."""
    folder, name = urls.split(tar_url)
    return urls.join(folder, name[: -len(".tar")] + ".idx" if name.endswith(".tar") else name + ".idx")


def split_name(name: str) -> tuple[str, str]:
    """Sample key and extension: the key ends at the first dot of the basename (webdataset rule)."""
    dot = name.find(".", name.rfind("/") + 1)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1 :])


def build_index(fileobj: IO[bytes], name: str = "<tar>") -> str:
    samples: list[list[str]] = []
    last_key = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, ext = split_name(member.name)
                if not key or key.endswith("/"):
                    continue
                entry = f"{ext} {member.offset_data} {member.size} {member.name}"
                if key != last_key:
                    samples.append([entry])
                    last_key = key
                else:
                    samples[-1].append(entry)
    except tarfile.TarError as e:
        raise ValueError(f"{name}: not a readable tar ({e})") from e
    if not samples:
        raise ValueError(f"{name}: empty tar, nothing to index")
    return f"{INDEX_VERSION} {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)


def index_for(tar_url: str) -> str:
    with fsspec.open(tar_url, "rb") as f:
        return build_index(f, tar_url)


def write_index(tar_url: str) -> str:
    """Write `<shard>.idx` beside the tar (atomically); returns the index URL."""
    url = index_path(tar_url)
    atomic.write_bytes(url, index_for(tar_url).encode())
    return url
