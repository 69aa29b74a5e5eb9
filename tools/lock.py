"""One run per output folder: a lock file made with O_CREAT | O_EXCL, holding who made it.

    with RunLock("shards/.prep.lock", "alexnet-prep shard", log=print):
        ...  # a second run into the same folder raises RunLockedError at once

The file holds JSON `{"pid", "host", "started", "what"}` and is removed when the block ends. A lock
left by a process that died without cleaning up (kill -9, power loss) is taken over when its host
is this host and its pid is not alive, or is this very process's pid in a lock this process does not
hold (a container restarted with a fixed hostname reuses low pids); a lock from another host is never
taken over, because its process cannot be checked from here (the message says to remove the file if
that run is gone). A second lock on the same path inside one process is refused like any other.
Local disks only: O_EXCL is atomic on a local filesystem (and on NFSv3+), not on object stores.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

_HELD: set[str] = set()  # real paths of the locks this process holds


class RunLockedError(RuntimeError):
    """Another live run holds the lock (or its holder cannot be checked); the message is one line."""

    def __init__(self, message: str, path: str, holder: dict[str, Any]):
        super().__init__(message)
        self.path, self.holder = path, holder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence and permission check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _describe(holder: dict[str, Any]) -> str:
    return (f"{holder.get('what', 'a run')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')})")


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # being written right now, or damaged: treated as held by an unknown run


class RunLock:
    """Context manager holding `path` for the duration of one run; `what` names the run in messages."""

    def __init__(self, path: str | os.PathLike[str], what: str,
                 log: Callable[[str], None] | None = None) -> None:
        self.path, self.what, self.log = os.fspath(path), what, log
        self.took_over: dict[str, Any] | None = None  # the dead run's lock, if one was replaced
        self._mine: dict[str, Any] | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # each retry follows a lock that changed under us; 10 is plenty
            if self._create(me):
                self._mine = me
                _HELD.add(os.path.realpath(self.path))
                return
            holder = _read(self.path)
            if not self._stale(holder):
                hint = ("remove it if that run is gone" if holder.get("host") != me["host"] or not holder
                        else "wait for it to finish or stop it")
                raise RunLockedError(f"{self.path}: another run is writing here: {_describe(holder)}; {hint}",
                                     self.path, holder)
            if self._remove_stale(holder):
                self.took_over = holder
                if self.log:
                    self.log(f"{self.path}: taking over the lock of {_describe(holder)}, "
                             "which is no longer running")
        raise RunLockedError(f"{self.path}: the lock keeps changing hands; is another run starting?",
                             self.path, {})

    def release(self) -> None:
        if self._mine is not None and _read(self.path) == self._mine:
            os.unlink(self.path)
        if self._mine is not None:
            _HELD.discard(os.path.realpath(self.path))
        self._mine = None

    def _create(self, me: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        if holder["pid"] == os.getpid():
            return os.path.realpath(self.path) not in _HELD
        return not _alive(holder["pid"])

    def _remove_stale(self, holder: dict[str, Any]) -> bool:
        """Unlink the dead run's lock, unless another process replaced it meanwhile.

        Two runs may both find the same stale lock; without care the second would unlink the lock
        the first has just made. So the file is opened, flock'ed and checked to be still the one at
        `path` and still the stale holder's before it is unlinked; a loser sees another inode.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                return False
            if not same or _read(self.path) != holder:
                return False
            try:
                os.unlink(self.path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
            return True
        finally:
            os.close(fd)
