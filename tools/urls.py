"""fsspec URLs for `--src`, `--out` and `--shards`: opened with one clear error, joined by the filesystem.

A URL may be a chain (`zip://train::file:///data/ilsvrc.zip`, `simplecache::s3://bucket/x`,
`dir://shards::file:///scratch`). Appending a name by hand (`f"{url}/{name}"`) lands it on the last
link of such a chain (`...::file:///data/ilsvrc.zip/name`), so `join` puts it where fsspec reads the
path: on the first link that has one. fsspec's rule (`fsspec.core._un_chain`): a link to a
wrapping filesystem (a `ChainedFileSystem`: the caches, `dir`) given no path of its own takes the
next link's path.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

import fsspec
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import known_implementations


class UrlError(ValueError):
    """A URL fsspec cannot open (unknown protocol, package missing, unusable chain): one line."""


def _links(url: str) -> list[str]:
    return url.split("::")


def _protocol(link: str) -> str:
    """A link's protocol; a bare word is one only inside a chain (`simplecache::...`), as in fsspec."""
    if "://" in link:
        return link.split("://", 1)[0]
    return link if re.fullmatch(r"[a-z0-9]+", link) else "file"


def _protocols(url: str) -> list[str]:
    if "::" in url:
        return [_protocol(link) for link in _links(url)]
    return [_protocol(url) if "://" in url else "file"]


def _wrapper_without_path(link: str) -> bool:
    """A link that takes its path from the next one (see the module docstring)."""
    if "://" not in link and _protocol(link) == "file":
        return False
    try:
        cls = fsspec.get_filesystem_class(_protocol(link))
    except (ValueError, ImportError):
        return False
    return issubclass(cls, ChainedFileSystem) and not (link.split("://", 1)[1] if "://" in link else "")


def _path_link(url: str) -> int:
    links = _links(url)
    if len(links) == 1:
        return 0
    for i, link in enumerate(links[:-1]):
        if not _wrapper_without_path(link):
            return i
    return len(links) - 1


def join(url: str, *names: str) -> str:
    """`url` with `names` appended to its path, the rest of a chain kept."""
    links = _links(url)
    i = _path_link(url)
    link = links[i]
    if "://" in link:
        protocol, path = link.split("://", 1)
        links[i] = f"{protocol}://{posixpath.join(path, *names) if path else posixpath.join(*names)}"
    else:
        links[i] = posixpath.join(link, *names)
    return "::".join(links)


def split(url: str) -> tuple[str, str]:
    """(parent URL, last name) of a file URL, the chain kept: `join(*split(url)) == url`."""
    links = _links(url)
    i = _path_link(url)
    link = links[i]
    prefix, path = link.split("://", 1) if "://" in link else ("", link)
    head, name = posixpath.split(path.rstrip("/"))
    links[i] = f"{prefix}://{head}" if prefix else head
    return "::".join(links), name


def filesystem(url: str) -> tuple[Any, str]:
    """fsspec's (filesystem, path) for `url`, or a one-line UrlError saying what to do."""
    protocols = _protocols(url)
    for p in protocols:
        try:
            fsspec.get_filesystem_class(p)
        except ValueError:
            raise UrlError(f"{url}: unknown fsspec protocol {p!r} "
                           "(fsspec.available_protocols() lists the known ones)") from None
        except ImportError as e:
            # known_implementations holds, for each protocol, its class and an "err" naming the package
            package = known_implementations.get(p, {}).get("class", "").split(".", 1)[0]
            hint = f"; pip install {package}" if package and package != "fsspec" else ""
            raise UrlError(f"{url}: protocol {p!r} needs a package that is not installed "
                           f"({e}{hint})") from None
    if len(protocols) > 1 and protocols[0] == "dir" and _wrapper_without_path(_links(url)[0]):
        # fsspec gives a bare dir:: the next link's path both as its root and as the path inside
        # it, so dir::file:///x addresses /x//x (fsspec 2026.9).
        raise UrlError(f"{url}: a bare dir:: prefix addresses <folder>/<folder> in fsspec; "
                       "write dir://<path inside>::<root URL>, or the root URL alone")
    try:
        return fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as e:
        raise UrlError(f"{url}: {e}") from None


def in_process(url: str) -> bool:
    """True when `url` lives only in this Python process (memory://): worker processes cannot see it."""
    return "memory" in _protocols(url)


def local_path(url: str) -> str | None:
    """The local filesystem path `url` names, or None when it is not on a local disk."""
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        return path
    if isinstance(fs, DirFileSystem) and isinstance(fs.fs, LocalFileSystem):
        return posixpath.join(fs.path, path)
    return None
