import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

import pytest

from tools.lock import RunLock, RunLockedError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid now (barring reuse within microseconds)


def _write_lock(path, **holder) -> dict:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "what": "a test run",
              "started": "2026-12-02T00:00:00+00:00", **holder}
    path.write_text(json.dumps(holder))
    return holder


def test_lock_is_held_for_the_block_and_removed_after(tmp_path):
    path = tmp_path / "out" / ".lock"
    with RunLock(path, "alexnet-prep shard") as lock:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["what"] == "alexnet-prep shard" and lock.took_over is None
        with pytest.raises(RunLockedError) as e, RunLock(path, "second"):
            pass
        assert path.exists()  # the refused run did not remove the holder's lock
    assert not path.exists()
    assert f"pid {os.getpid()} on {socket.gethostname()}" in str(e.value) and str(path) in str(e.value)
    assert e.value.holder["pid"] == os.getpid()


def test_lock_is_released_when_the_block_raises(tmp_path):
    path = tmp_path / ".lock"
    with pytest.raises(KeyError), RunLock(path, "x"):
        raise KeyError("boom")
    assert not path.exists()


def test_stale_lock_of_a_dead_process_is_taken_over_saying_so(tmp_path):
    path = tmp_path / ".lock"
    dead = _write_lock(path, pid=_dead_pid())
    said = []
    with RunLock(path, "x", log=said.append) as lock:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert lock.took_over == dead
    assert len(said) == 1 and "taking over" in said[0] and f"pid {dead['pid']}" in said[0]


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    path = tmp_path / ".lock"
    _write_lock(path, pid=_dead_pid(), host="elsewhere.example")
    with pytest.raises(RunLockedError, match="pid .* on elsewhere.example.*remove it if that run is gone"):
        RunLock(path, "x").acquire()


def _contend(path: str, barrier, results) -> None:
    stale = RunLock._stale

    def slow_stale(self, holder):  # all four see the stale lock before any removes it: the race made certain
        found = stale(self, holder)
        time.sleep(0.3)
        return found

    RunLock._stale = slow_stale
    barrier.wait()
    try:
        with RunLock(path, "contender"):
            results.put("won")
            time.sleep(1.0)  # hold it while the others try
    except RunLockedError:
        results.put("refused")


def test_racing_takeovers_of_one_stale_lock_leave_exactly_one_winner(tmp_path):
    """Without the flock + inode check a second run could unlink the lock the first just made."""
    path = tmp_path / ".lock"
    _write_lock(path, pid=_dead_pid())
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(path), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["refused", "refused", "refused", "won"]
    assert not path.exists()
