"""The real stack, where a Docker engine answers: build, prep, train 1 epoch, report, TensorBoard on its
port, a stop signal that leaves a checkpoint, and the one-line error for an unwritable mount.

    make test-docker                                    # = pytest -m slow tests/test_compose_stack.py -s
    ALEXNET_BASE_IMAGE=alexnet-base:cpu make test-docker  # a base image built locally (docker/local-base.sh)

Skipped without an engine. Environment: ALEXNET_BASE_IMAGE (the Dockerfile's BASE build arg; default the
Dockerfile's), DOCKER (the docker client, default `docker`; BuildKit is needed), COMPOSE (default
`docker compose`, else `docker-compose`), ALEXNET_BUILD_NETWORK (e.g. `host` on an engine started
without iptables, whose containers reach no network while building). Prints the time of each phase.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UID = 1000  # the image's user (Dockerfile)
DOCKER = shlex.split(os.environ.get("DOCKER", "docker"))


def _engine() -> bool:
    try:
        return subprocess.run([*DOCKER, "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _compose_client() -> list[str]:
    if "COMPOSE" in os.environ:
        return shlex.split(os.environ["COMPOSE"])
    v2 = subprocess.run([*DOCKER, "compose", "version"], capture_output=True)
    if v2.returncode == 0:
        return [*DOCKER, "compose"]
    return ["docker-compose"]


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which(DOCKER[0]) or not _engine(), reason="no Docker engine")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.project = f"alexnet-test-{uuid.uuid4().hex[:8]}"
        self.shards, self.runs = tmp / "shards", tmp / "runs"
        for d in (self.shards, self.runs):
            d.mkdir()
            os.chown(d, UID, UID)
        self.port = free_port()
        self.env = {**os.environ, "SHARDS_DIR": str(self.shards), "RUNS_DIR": str(self.runs), "EPOCHS": "1",
                    "TENSORBOARD_PORT": str(self.port)}
        self.compose = _compose_client()
        self.times: dict[str, float] = {}

    def run(self, *args: str, files: tuple[str, ...] = ("docker-compose.yml",),
            env: dict[str, str] | None = None, timeout: float = 1800,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self.compose, "-p", self.project, *(a for f in files for a in ("-f", f)), *args]
        done = subprocess.run(cmd, cwd=ROOT, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        if check:
            assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def container(self, service: str) -> dict:
        ids = self.run("ps", "-a", "-q", service).stdout.split()
        assert ids, f"no container for {service}"
        return json.loads(subprocess.check_output([*DOCKER, "inspect", ids[0]]))[0]

    def state(self, service: str) -> tuple[int, float]:
        """Exit code and run time in seconds of the service's container."""
        s = self.container(service)["State"]

        def t(x: str) -> datetime:
            return datetime.fromisoformat(x[:26].rstrip("Z"))
        return s["ExitCode"], (t(s["FinishedAt"]) - t(s["StartedAt"])).total_seconds()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    s.run("down", "-v", "--remove-orphans", check=False, timeout=300)
    print("\ncompose stack timings (s):", json.dumps(s.times))


def build(stack: Stack) -> None:
    args = [*DOCKER, "build", "-t", "alexnet-repro", "."]
    if base := os.environ.get("ALEXNET_BASE_IMAGE"):
        args += ["--build-arg", f"BASE={base}"]
    if network := os.environ.get("ALEXNET_BUILD_NETWORK"):
        args += ["--network", network]
    start = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True,
                          text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    stack.times["build"] = round(time.monotonic() - start, 1)


def test_the_stack_runs_end_to_end(stack: Stack) -> None:
    for files in (("docker-compose.yml",), ("docker-compose.yml", "docker-compose.gpu.yml")):
        stack.run("config", "-q", files=files)  # both routes, validated by the real client
    build(stack)

    start = time.monotonic()
    stack.run("up", "--no-build", "prep", "train", "report")
    stack.times["up prep train report"] = round(time.monotonic() - start, 1)
    for service in ("prep", "train", "report"):
        code, seconds = stack.state(service)
        stack.times[service] = round(seconds, 1)
        assert code == 0, stack.run("logs", service).stdout[-3000:]
    run = stack.runs / "sample"
    for name in ("params.json", "metrics.jsonl", "curves.png", "summary.md"):
        assert (run / name).is_file(), f"{name} missing from the run folder"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [0]
    assert (stack.shards / "sample" / "pca.json").is_file()

    start = time.monotonic()
    stack.run("up", "-d", "--no-build", "tensorboard")
    url = f"http://127.0.0.1:{stack.port}/data/runs"
    deadline, runs = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                runs = json.loads(r.read())
            if runs:
                break
        except OSError:
            pass
        time.sleep(1)
    stack.times["tensorboard answers"] = round(time.monotonic() - start, 1)
    assert runs and any(r.startswith("sample") for r in runs), f"TensorBoard at {url} lists {runs}"


def test_stop_writes_a_checkpoint_and_up_resumes(stack: Stack) -> None:
    build(stack)
    stack.run("up", "--no-build", "prep")
    env = {"EPOCHS": "2", "RUN_NAME": "stopped", "TRAIN_ARGS": "--log-every 1"}
    stack.run("up", "-d", "--no-build", "--no-deps", "train", env=env)
    metrics = stack.runs / "stopped" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (metrics.is_file() and '"train"' in metrics.read_text()):
        time.sleep(1)
    assert metrics.is_file(), stack.run("logs", "train").stdout[-3000:]
    start = time.monotonic()
    stack.run("stop", "train", env=env)
    stack.times["stop"] = round(time.monotonic() - start, 1)
    code, _ = stack.state("train")
    logs = stack.run("logs", "train").stdout
    assert code != 137, f"train was killed, not stopped:\n{logs[-3000:]}"
    assert sorted((stack.runs / "stopped" / "checkpoints").glob("step-*.json")), logs[-3000:]
    stack.run("up", "--no-build", "--no-deps", "train", env=env)  # resumes and finishes
    assert stack.state("train")[0] == 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert any(r["kind"] == "resume" for r in records)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"][-1] == 1


def test_an_unwritable_runs_folder_is_one_line(stack: Stack) -> None:
    build(stack)
    os.chown(stack.runs, 0, 0)  # what Docker does to a host folder it creates itself
    stack.runs.chmod(0o755)
    done = stack.run("run", "--rm", "-T", "--no-deps", "train", check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-2000:]
    lines = [line for line in output.splitlines() if line.startswith("train:")]
    assert len(lines) == 1 and "chown" in lines[0] and "Traceback" not in output, output[-2000:]
