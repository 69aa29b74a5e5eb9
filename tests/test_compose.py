"""docker-compose.yml (the CPU route), docker-compose.gpu.yml (added for the GPU route), Dockerfile and
.env.example, checked without a Docker engine (tests/test_compose_stack.py runs the real stack).

The compose file is interpolated as compose does it (`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$$`),
validated against the Compose Specification schema (tests/data/compose-spec.json, from Debian's
docker-compose package: tests/data/README.md), and every command a service runs is matched against the
--help of the program it calls, so a renamed flag fails here rather than an hour into a run.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tools import requirements

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
GPU_COMPOSE = ROOT / "docker-compose.gpu.yml"
ROUTES = {"cpu": [COMPOSE], "gpu": [COMPOSE, GPU_COMPOSE]}
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"

# ---------------------------------------------------------------------------------------------
# Interpolation, as the Compose Specification defines it ("Interpolation"). Written by hand: compose v2
# is Go, and v1's Python implementation (compose.config.interpolation) is unmaintained and would pull
# in all of v1. `${VAR:?err}` and `${VAR?err}` are handled too; nested defaults are not (unused here).

_TOKEN = re.compile(r"""
    \$(?:
        (?P<escaped>\$)
      | \{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}
      | (?P<named>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<invalid>)
    )""", re.VERBOSE)


class Uses(dict):
    """Variable name -> the list of (operator, default) of each place it is used."""

    def add(self, name: str, op: str | None, arg: str | None) -> None:
        self.setdefault(name, []).append((op, arg))


def interpolate_str(text: str, env: dict[str, str], uses: Uses | None = None) -> str:
    def replace(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("invalid") is not None:
            raise ValueError(f"invalid interpolation format in {text!r} at {m.start()}")
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg")
        if uses is not None:
            uses.add(name, op, arg)
        value = env.get(name)
        if op in (":-", ":?") and value == "":
            value = None  # the colon forms treat empty as unset
        if value is not None:
            return value
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise ValueError(f"required variable {name} is missing: {arg}")
        return ""  # compose warns and substitutes an empty string

    return _TOKEN.sub(replace, text)


def interpolate(node: Any, env: dict[str, str], uses: Uses | None = None) -> Any:
    if isinstance(node, str):
        return interpolate_str(node, env, uses)
    if isinstance(node, list):
        return [interpolate(v, env, uses) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env, uses) for k, v in node.items()}
    return node


def merge(base: Any, override: Any) -> Any:
    """`docker compose -f base -f override`: mappings merge key by key, anything else is replaced
    (compose merges some lists, e.g. ports, by value; the override file here holds mappings only)."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: merge(base[k], v) if k in base else v for k, v in override.items()} | \
            {k: v for k, v in base.items() if k not in override}
    return override


def raw_compose(route: str = "cpu") -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for path in ROUTES[route]:  # anchors and `<<` merge keys resolved, as compose does
        doc = merge(doc, yaml.safe_load(path.read_text()))
    return doc


def compose(env: dict[str, str] | None = None, route: str = "cpu") -> dict[str, Any]:
    return interpolate(raw_compose(route), env or {})


def used_variables() -> Uses:
    uses = Uses()
    interpolate(raw_compose("gpu"), {}, uses)
    return uses


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file; `#` lines are comments."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


def test_interpolation_follows_the_spec() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate_str("${SET} $SET ${SET:-d} ${SET-d}", env) == "x x x x"
    assert interpolate_str("${EMPTY:-d}|${EMPTY-d}|${UNSET-d}|${UNSET:-d}|${UNSET}", env) == "d||d|d|"
    assert interpolate_str("$$HOME $${A:-b} $$", env) == "$HOME ${A:-b} $"
    with pytest.raises(ValueError, match="required variable"):
        interpolate_str("${UNSET:?set it}", env)
    with pytest.raises(ValueError, match="invalid interpolation"):
        interpolate_str("cost: 5$", env)


# ---------------------------------------------------------------------------------------------
# Schema and structure.

@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_merge_follows_compose() -> None:
    base = {"services": {"train": {"image": "a", "ipc": "host"}}, "volumes": {"runs": None}}
    override = {"services": {"train": {"deploy": {"x": 1}, "image": "b"}}}
    assert merge(base, override) == {"services": {"train": {"image": "b", "ipc": "host", "deploy": {"x": 1}}},
                                     "volumes": {"runs": None}}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("env", [{}, {"ILSVRC_DIR": "/data/ILSVRC2012", "EPOCHS": "90", "GPUS": "2",
                                      "SHARDS_DIR": "/big/shards", "RUNS_DIR": "./runs"}],
                         ids=["no settings", "ILSVRC"])
def test_compose_file_is_valid(validator: jsonschema.protocols.Validator, env: dict[str, str],
                               route: str) -> None:
    errors = sorted(validator.iter_errors(compose(env, route)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_is_not_vacuous(validator: jsonschema.protocols.Validator) -> None:
    bad = compose(route="gpu")
    bad["services"]["train"]["deploy"]["resources"]["reservations"]["devices"][0]["capability"] = ["gpu"]
    assert not validator.is_valid(bad)
    bad = compose()
    bad["services"]["train"]["depends_on"]["prep"]["condition"] = "service_completed"
    assert not validator.is_valid(bad)
    bad = compose()
    bad["services"]["train"]["init"] = "yes"
    assert not validator.is_valid(bad)


def test_every_variable_has_a_default() -> None:
    """No setting is required: with no .env compose runs on the sample, and warns about nothing."""
    for name, uses in used_variables().items():
        assert all(op in (":-", "-") for op, _ in uses), f"${{{name}}} is used without a default"


def volumes(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume."""
    out = []
    for v in service.get("volumes", []):
        assert isinstance(v, str), f"expected the short syntax SOURCE:TARGET[:MODE], got {v!r}"
        source, target, *mode = v.split(":")
        out.append((source, target, mode[0] if mode else "rw"))
    return out


def test_cpu_route_asks_for_no_device() -> None:
    """`docker compose up` must run where there is no NVIDIA Container Toolkit: no reservation at all."""
    for name, svc in compose()["services"].items():
        assert "deploy" not in svc and "devices" not in svc and "runtime" not in svc, name


def test_gpu_route_gives_train_gpus_and_changes_nothing_else() -> None:
    raw = raw_compose("gpu")["services"]["train"]
    train = compose(route="gpu")["services"]["train"]
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if "gpu" in d.get("capabilities", [])]
    assert gpus and gpus[0]["driver"] == "nvidia"
    count = raw["deploy"]["resources"]["reservations"]["devices"][0]["count"]
    assert re.fullmatch(r"\$\{\w+:-\w+\}", str(count)), "GPU count from the environment"
    gpu, cpu = compose(route="gpu"), compose()
    del gpu["services"]["train"]["deploy"]
    assert gpu == cpu


def test_train_waits_for_prep_and_report_for_train() -> None:
    services = compose()["services"]
    train = services["train"]
    assert train.get("ipc") == "host" or "shm_size" in train, "DALI and PyTorch need more /dev/shm than 64 MB"
    assert train["depends_on"]["prep"]["condition"] == "service_completed_successfully"
    assert services["report"]["depends_on"]["train"]["condition"] == "service_completed_successfully"


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(h|m|s)", duration))


def test_stop_signals_reach_the_programs() -> None:
    """`docker compose stop` / Ctrl-C: an init passes SIGTERM on (sh as PID 1 would drop it), the
    trainer is exec'd so it is the one that gets it, and it has time to write its checkpoint."""
    services = compose()["services"]
    for name, svc in services.items():
        assert svc.get("init") is True, f"{name}: no init, so SIGTERM would not reach its program"
        if svc["command"][:2] == ["sh", "-c"]:
            assert svc["environment"].get("TINI_KILL_PROCESS_GROUP") == "1", name
    train = services["train"]["command"][2]
    assert re.search(r"^\s*exec alexnet-train ", train, re.M), "alexnet-train must replace the shell"
    assert seconds(services["train"]["stop_grace_period"]) >= 60


def test_writers_keep_their_hostname() -> None:
    """The run lock is taken over only on the host that made it; a recreated container's default
    hostname (its new id) would leave a killed run's lock blocking every later `up`."""
    services = compose()["services"]
    assert services["prep"].get("hostname") and services["train"].get("hostname")


@pytest.mark.parametrize("service, target", [("prep", "/shards"), ("train", "/runs")])
def test_unwritable_mounts_get_one_line(service: str, target: str) -> None:
    script = compose()["services"][service]["command"][2]
    check = re.search(rf"if \[ ! -w {target} \]; then\n\s*echo \"(.*)\" >&2\n\s*exit 1", script)
    assert check and "chown" in check.group(1), f"{service}: no one-line error for an unwritable {target}"


def test_tensorboard_serves_the_runs() -> None:
    services = compose()["services"]
    tb = services["tensorboard"]
    published = {p.rsplit(":", 1)[-1] for p in map(str, tb["ports"])}
    assert "6006" in published
    assert tb["command"][:1] == ["tensorboard"] and "--bind_all" in tb["command"]
    logdir = tb["command"][tb["command"].index("--logdir") + 1]
    runs = {(s, t) for s, t, _ in volumes(tb) if t == logdir}
    assert runs and runs <= {(s, t) for s, t, _ in volumes(services["train"])}, \
        "tensorboard must mount the volume train writes its runs into"


@pytest.mark.parametrize("env", [{}, {"ILSVRC_DIR": "/data/ILSVRC2012", "SHARDS_DIR": "/big/shards"}],
                         ids=["no settings", "ILSVRC"])
def test_volumes(env: dict[str, str]) -> None:
    doc = compose(env)
    services = doc["services"]
    dataset = [(name, s, m) for name, svc in services.items() for s, t, m in volumes(svc) if t == "/ilsvrc"]
    assert dataset, "the dataset is mounted at /ilsvrc"
    assert all(m == "ro" for _, _, m in dataset), f"the dataset must be mounted read-only: {dataset}"
    if env.get("ILSVRC_DIR"):
        assert {s for _, s, _ in dataset} == {env["ILSVRC_DIR"]}
    shards = {s for name in ("prep", "train") for s, t, _ in volumes(services[name]) if t == "/shards"}
    assert len(shards) == 1, f"prep and train must share one shards volume, got {shards}"
    assert "/shards" in {t for _, t, m in volumes(services["prep"]) if m == "rw"}, "prep writes the shards"
    # Compose refuses a named volume that the top-level `volumes:` does not declare.
    declared = set(doc.get("volumes") or {})
    for name, svc in services.items():
        for source, _, _ in volumes(svc):
            if not source.startswith(("/", ".", "~")):
                assert source in declared, f"{name}: named volume {source!r} is not declared"


def test_services_run_the_image_of_this_dockerfile() -> None:
    for name, svc in compose()["services"].items():
        assert svc.get("build") in (".", {"context": "."}), f"{name} must be built from ./Dockerfile"
        assert svc.get("image") == "alexnet-repro", name


# ---------------------------------------------------------------------------------------------
# .env.example

def test_env_example_documents_every_setting_with_compose_default() -> None:
    example = read_env_file(ENV_EXAMPLE)
    uses = used_variables()
    assert set(example) == set(uses), (f"undocumented in .env.example: {set(uses) - set(example)}; "
                                       f"in .env.example but unused: {set(example) - set(uses)}")
    for name, value in example.items():
        defaults = {arg for _, arg in uses[name]}
        if len(defaults) == 1:
            assert value == defaults.pop(), f".env.example: {name}={value}; docker-compose.yml: {uses[name]}"
        else:  # e.g. the dataset: "" in the environment, a placeholder volume in `volumes:`
            assert value == "" and all(op == ":-" for op, _ in uses[name]), \
                f"{name} has several defaults {defaults}: .env.example must leave it empty"
    # And so copying .env.example to .env changes nothing.
    assert compose(example) == compose({})


def test_env_example_comments_every_setting() -> None:
    comment = False
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line:
            comment = False
        elif line.startswith("#"):
            comment = True
        else:
            assert comment, f".env.example: no comment above {line!r}"


# ---------------------------------------------------------------------------------------------
# Commands: every program a service runs exists in this project, and takes the flags given.

SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;"}


def shell_commands(command: str | list[str]) -> list[list[str]]:
    """The simple commands of a service's `command`, split as sh would split them (no expansion)."""
    if isinstance(command, str):
        command = shlex.split(command)
    if command[:2] not in (["sh", "-c"], ["bash", "-c"]):
        return [command]
    out: list[list[str]] = []
    for line in command[2].replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        current: list[str] = []
        for token in [*lex, ";"]:
            if token in SEPARATORS:
                if current:
                    out.append(current)
                current = []
            else:
                current.append(token)
    return out


def invocations() -> list[tuple[str, str | None, list[str]]]:
    """(program, subcommand, options) of each call of a console script of this project, or tensorboard."""
    found = []
    for svc in compose()["services"].values():
        for words in shell_commands(svc["command"]):
            for i, word in enumerate(words):
                if word.startswith("alexnet-") or word == "tensorboard":
                    args = words[i + 1:]
                    sub = args[0] if args and re.fullmatch(r"[a-z][a-z-]*", args[0]) else None
                    options = sorted({o for a in args for o in re.findall(r"--[A-Za-z][\w-]*", a)})
                    found.append((word, sub, options))
                    break
    return found


def program(name: str) -> str:
    """The console script installed beside this interpreter (.venv/bin), found as the shell would."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which(name, path=path)
    assert exe, f"{name} is not installed (pip install -e .[dev])"
    return exe


def help_text(prog: str, sub: str | None) -> str:
    argv = [program(prog), *([sub] if sub else []), "--help"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(argv[1:])} --help exited {r.returncode}:\n{r.stderr[-2000:]}"
    return r.stdout


def test_commands_call_this_project() -> None:
    calls = invocations()
    programs = {(p, s) for p, s, _ in calls}
    assert {("alexnet-prep", "shard"), ("alexnet-prep", "pca-stats"), ("alexnet-prep", "verify"),
            ("alexnet-prep", "sample"), ("alexnet-train", None), ("tensorboard", None)} <= programs, programs
    assert any(p == "alexnet-report" for p, _ in programs)
    for p, _, _ in calls:
        assert p == "tensorboard" or p in (ROOT / "pyproject.toml").read_text(), f"{p} is no script of ours"


def has_option(text: str, option: str) -> bool:
    """`option` appears in `text` as a whole flag: --shard is not --shards."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def _programs() -> list[tuple[str, str | None, list[str]]]:
    merged: dict[tuple[str, str | None], set[str]] = {}
    for p, s, opts in invocations():
        merged.setdefault((p, s), set()).update(opts)
    return [(p, s, sorted(o)) for (p, s), o in sorted(merged.items(), key=str)]


PROGRAMS = _programs()


@pytest.mark.parametrize("prog, sub, options", PROGRAMS,
                         ids=[" ".join(filter(None, (p, s))) for p, s, _ in PROGRAMS])
def test_command_options_exist(prog: str, sub: str | None, options: list[str]) -> None:
    text = top = help_text(prog, None)
    if "Commands:" in top:  # a click group: the first word is its subcommand
        assert sub and re.search(rf"^\s+{re.escape(sub)}\s", top, re.M), f"{prog} has no command {sub!r}"
        text = help_text(prog, sub)
    missing = [o for o in options if not has_option(text, o)]
    assert not missing, f"{prog} {sub or ''}: no such option(s) {missing} in its --help"


def test_option_check_catches_typos() -> None:
    text = "  --shards TEXT  Folder.\n  --progress / --no-progress  Bars.\n"
    assert [o for o in ("--shards", "--no-progress", "--shard", "--progres", "--shards-dir")
            if has_option(text, o)] == ["--shards", "--no-progress"]


# ---------------------------------------------------------------------------------------------
# The image installs what `make install` (and so CI) installs.

def install_steps(text: str, python: str) -> list[str]:
    """The install recipe's commands in `text` (a Makefile recipe or a Dockerfile RUN), each with its
    interpreter written as `python` and -q dropped, in order."""
    text = text.replace("\\\n", " ")
    steps = []
    step = rf"(?:DALI_CUDA=\S* )?{re.escape(python)} -m (pip install|tools\.\S+)([^&;\n]*)"
    for m in re.finditer(step, text):
        args = [a for a in shlex.split(m.group(2)) if a not in ("-q", "--quiet")]
        steps.append(" ".join([m.group(1), *args]))
    return steps


def test_dockerfile_installs_as_the_makefile_does() -> None:
    """The same locked steps in the same order, less the Makefile's torch (the image's CUDA torch stays),
    and DALI's build chosen the same way (tools/dali_build.py, DALI_CUDA overriding)."""
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = DOCKERFILE.read_text()
    recipe = makefile.split("$(BIN)/.installed:", 1)[1].split("\n\n", 1)[0]
    make_steps = install_steps(recipe.replace("$(BIN)/pip ", "$(BIN)/python -m pip "), "$(BIN)/python")
    assert "pip install $(TORCH)" in make_steps, "the Makefile's torch step moved: update this test"
    code = "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    image_steps = install_steps(code, "python")
    # The Makefile passes its TORCH to the check (it may be overridden); the image checks the lock's pin.
    expected = [s.replace(' --torch "$(TORCH)"', "").replace(" --torch $(TORCH)", "")
                for s in make_steps if s != "pip install $(TORCH)"]
    assert image_steps == expected, f"Dockerfile {image_steps}, Makefile {make_steps}: keep them the same"
    assert "pip install --require-hashes --no-deps -r requirements.lock" in image_steps
    assert "tools.dali_build --install" in image_steps
    assert not any(re.search(r"(^|\s)torch\b", a) for a in image_steps), "the image's CUDA torch must stay"
    assert 'DALI_CUDA="$DALI_CUDA" python -m tools.dali_build --install' in code
    assert re.search(r"^ARG DALI_CUDA=$", dockerfile, re.M), "empty: the image's torch picks DALI's build"

    # The base image's torch is the version the lock pins (what CI tests with).
    torch_pin = requirements.torch_pin((ROOT / "requirements.lock").read_text()).split("==")[1]
    bases = re.findall(r"pytorch/pytorch:([\d.]+)-cuda(\d+)\.(\d+)-", dockerfile)
    assert bases and {v for v, _, _ in bases} == {torch_pin}, f"bases {bases}; the lock's torch {torch_pin}"


def test_dockerfile_layout() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^WORKDIR /workspace$", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "run as a non-root user"


def test_dockerignore_keeps_data_out_and_code_in() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:  # Docker's rule: the last matching pattern wins
        result = False
        for p in patterns:
            negate = p.startswith("!")
            if fnmatch.fnmatch(path, p.lstrip("!")) or fnmatch.fnmatch(path, p.lstrip("!") + "/*"):
                result = not negate
        return result

    for path in (".venv", ".git", "out", "runs", "shards/train-000000.tar", ".env"):
        assert ignored(path), f"{path} must stay out of the build context"
    for path in ("pyproject.toml", "paper.py", "tools/cli.py", "pipeline/train.py", "trainer/cli.py",
                 "tests/test_compose.py", "tests/data/compose-spec.json", "Makefile", "README.md",
                 "shards/README.md"):
        assert not ignored(path), f"{path} is needed in the image"

