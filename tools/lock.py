"""One run per output folder: a lock file naming its owner, taken with O_CREAT | O_EXCL.

    with RunLock(out, "alexnet-train"):
        ...  # nobody else writes into `out` meanwhile

`<folder>/.lock` holds {"pid", "host", "what", "started"}. A second process refuses at once with
LockHeld naming that pid, host and the lock's path. A lock left by a process that no longer exists
on this host (killed with -9, the machine's OOM killer) is stale: it is taken over with a warning.
A lock from another host cannot be checked from here and is never taken over.

O_EXCL creation is atomic on local filesystems and on NFSv3+ (open(2)); this is why the lock is a
plain file and not fcntl.flock, which NFS clients may not share between hosts.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

NAME = ".lock"
_HELD: set[Path] = set()  # locks this process holds: its own pid in one of these is not stale


class LockHeld(Exception):
    """Another live process holds the folder's lock; the message names it and the lock file."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """Context manager holding `<folder>/.lock` for the life of the block (the folder is created)."""

    def __init__(self, folder: Path | str, what: str) -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / NAME
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written right now, or damaged: treated as held by someone unknown
        return owner if isinstance(owner, dict) else {}

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what, "started": time.time()}
        for _ in range(3):  # a stale lock removed, or a racing owner gone in between: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released between our open and our read
                pid, host = owner.get("pid"), owner.get("host")
                # Our own pid in a lock we have not taken: a container restarted with the same
                # hostname reuses low pids, so the writer is gone even though the pid "runs".
                mine = pid == os.getpid() and self.path.resolve() not in _HELD
                if host == socket.gethostname() and isinstance(pid, int) and (mine or not _alive(pid)):
                    print(f"warning: taking over the stale lock {self.path} of {owner.get('what', '?')} "
                          f"(pid {pid} on {host} no longer runs)", file=sys.stderr)
                    self.path.unlink(missing_ok=True)
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["started"])) \
                    if isinstance(owner.get("started"), int | float) else "?"
                raise LockHeld(f"{self.folder} is in use by {owner.get('what', 'another run')} "
                               f"(pid {pid}, host {host}, since {since}; lock {self.path}); if that "
                               "process is gone, delete the lock file") from None
            try:
                os.write(fd, (json.dumps(me) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self.held = True
            _HELD.add(self.path.resolve())
            return
        raise LockHeld(f"{self.folder}: could not take the lock {self.path} (it keeps changing hands)")

    def release(self) -> None:
        if self.held:
            self.held = False
            _HELD.discard(self.path.resolve())
            try:
                self.path.unlink()
            except OSError as e:  # removed by hand meanwhile: nothing left to release
                if e.errno != errno.ENOENT:
                    raise

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
