"""The rooms of README "Architecture", from the code's own imports: no import circle among the
project's modules, and each room imports only the rooms it may.

Every import counts, the ones inside functions too (the CLI and the benchmarks import lazily to
start fast): a circle through a lazy import still means two modules that cannot be read apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tools", "pipeline", "trainer")

# What each room may import besides itself (README "Architecture"). Longest prefix wins.
MAY_IMPORT = {
    "paper": (),
    "tools": ("paper",),
    "pipeline": ("paper", "tools"),
    "trainer": ("paper", "tools", "pipeline"),
}


def modules() -> dict[str, Path]:
    """Every project module by dotted name (a package's __init__ under the package's name)."""
    found = {"paper": ROOT / "paper.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, anywhere in it. `from a import b` names the module a.b
    when there is one, else a itself."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_each_room_imports_only_the_rooms_below_it() -> None:
    wrong = []
    for name, targets in graph().items():
        room = name.split(".")[0]
        allowed = (room, *MAY_IMPORT[room])
        wrong += [f"{name} imports {t}" for t in targets if t.split(".")[0] not in allowed]
    assert not wrong, wrong


def test_the_loop_experiments_and_benchmarks_are_imported_by_the_cli_alone() -> None:
    """trainer.train (the loop), trainer.experiments and trainer.benchmarks are leaves: what they share
    with others lives in modules every one of them imports (README "Architecture")."""
    leaves = ("trainer.train", "trainer.experiments", "trainer.benchmarks")
    wrong = []
    for name, targets in graph().items():
        for t in targets:
            leaf = next((leaf for leaf in leaves if t == leaf or t.startswith(leaf + ".")), None)
            if leaf and name != "trainer.cli" and not name.startswith(leaf):
                wrong.append(f"{name} imports {t}")
    assert not wrong, wrong
