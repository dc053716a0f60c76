"""The house rules of the package layout (docs/ARCHITECTURE.md), checked on the source.

Imports are read with ``ast`` from every file under ``src/refocus``, including imports inside
functions and under ``if TYPE_CHECKING:``: a deferred import is still a dependency, and a cycle
hidden by one is still a cycle for whoever has to change the code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is package) for every file of the package."""
    out = {}
    for path in sorted((SRC / "refocus").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _targets(module: str, is_pkg: bool, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The refocus modules an import statement loads (``from a import b`` with a module ``b``
    points at ``a.b``; with a name ``b``, at ``a``)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{prefix}.{alias.name}"
        if sub in MODULES:
            out.add(sub)
        elif prefix in MODULES:
            out.add(prefix)
    return out


def _import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, (path, is_pkg) in MODULES.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _targets(module, is_pkg, node)
        graph[module] = edges - {module}
    return graph


GRAPH = _import_graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _room(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to: ``refocus.video.stores`` ->
    ``refocus.video``."""
    return ".".join(module.split(".")[:2])


def test_the_import_graph_is_read():
    # The checks below are only as good as the graph: it must see deferred imports too.
    assert "refocus.video" in GRAPH["refocus.video.stores"]  # inside FrameStore.get
    assert "refocus.policy.sampling" in GRAPH["refocus.policy.modeling"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_library_module_imports_the_cli():
    offenders = {
        module: sorted(t for t in targets if _room(t) == "refocus.cli")
        for module, targets in GRAPH.items()
        if _room(module) not in ("refocus.cli", "refocus.__main__")
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_no_import_cycle_between_files():
    assert _cycles(GRAPH) == []


def test_no_import_cycle_between_subpackages():
    rooms: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        rooms.setdefault(_room(module), set()).update(
            _room(t) for t in targets if _room(t) != _room(module)
        )
    assert _cycles(rooms) == []


@pytest.mark.parametrize("module", ["refocus", "refocus.cli", "refocus.io", "refocus.estimators"])
def test_import_loads_no_torch(module):
    code = (
        f"import sys; import {module}; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'av') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    env = {"PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_no_function_in_src_is_over_100_lines():
    long = []
    for path in sorted((SRC / "refocus").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # decorators excluded, docstring included
                if lines > 100:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_test_fixtures_are_not_in_the_package():
    assert not (SRC / "refocus" / "reference" / "tiny.py").exists()
    assert (Path(__file__).parent / "tiny_models.py").is_file()


def _documented_rooms() -> dict[str, set[str]]:
    """The "may import" column of docs/ARCHITECTURE.md's table of rooms."""
    doc = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = doc.split("## Rooms and what each may import", 1)[1].split("\n## ", 1)[0]
    rooms = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0] != "room":
            allowed = cells[2]
            rooms["refocus." + cells[0].strip("`")] = (
                None if allowed == "any room" else
                set() if allowed == "-" else {"refocus." + a.strip() for a in allowed.split(",")}
            )
    return rooms


def test_every_room_is_documented_and_imports_only_what_the_table_allows():
    rooms = _documented_rooms()
    actual = {_room(m) for m in GRAPH} - {"refocus", "refocus.__main__"}
    assert sorted(actual - set(rooms)) == []  # every subpackage / top-level module has a row
    offenders = {}
    for module, targets in GRAPH.items():
        room = _room(module)
        allowed = rooms.get(room)
        if allowed is None:
            continue
        extra = {_room(t) for t in targets} - allowed - {room, "refocus"}
        if extra:
            offenders[module] = sorted(extra)
    assert offenders == {}
