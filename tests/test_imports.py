"""Layering (docs/design.md, section 2): the board runtime never imports torch, and every floor imports downwards only.

Floors, lowest first: common (the ground floor: it imports nothing of the project) -> coordinator_free ->
firmware_profiles -> agent -> predictor -> host (host-side operations) -> benchmarks -> p2pntk (the CLI: the
roof, so that ``p2pntk bench`` imports the benchmarks). The peer table, coordinator_free.membership, imports no
socket and no clock.
A module's floor is that of its longest prefix in FLOORS. The import graph is read from the source (ast),
so it also sees lazy imports inside functions, relative imports, ``importlib.import_module("x")`` /
``import_module("x")`` / ``__import__("x")`` with a literal name, and "package.module:function" strings
(entry-point style, resolved with importlib at run time).
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = [("common",), ("coordinator_free",), ("firmware_profiles",), ("agent",), ("predictor",), ("host",),
          ("benchmarks",), ("p2pntk",)]  # lowest first
PACKAGES = ["common", "coordinator_free", "firmware_profiles", "agent", "predictor", "host", "benchmarks", "p2pntk"]
SANS_IO = {"coordinator_free.membership": {"zmq", "socket", "time", "selectors", "threading", "asyncio"}}
BOARD = ["common", "coordinator_free", "firmware_profiles", "agent"]  # the board runtime: never torch
GROUND = "common"
IMPORT_CALLS = {"import_module", "__import__"}
ENTRY_POINT = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def floor(module: str) -> int | None:
    """The floor of a dotted module name (None: not one of ours)."""
    best = None
    for rank, prefixes in enumerate(FLOORS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (rank, p)
    return None if best is None else best[0]


def floor_name(rank: int) -> str:
    return "/".join(FLOORS[rank])


class Import(NamedTuple):
    importer: str  # dotted module name of the importing file
    path: Path
    line: int
    target: str  # absolute dotted name: a module, or "pkg.name" when ``from pkg import name`` names a submodule

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.target}"


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``packages`` under ``root``."""
    found = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _absolute(name: str, level: int, module: str, is_package: bool) -> str | None:
    """The absolute name of a relative import (None if it climbs above the top package)."""
    if not level:
        return name
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 >= len(base):
        return None
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _call_name(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def collect_imports(root: Path, packages=PACKAGES) -> list[Import]:
    """Every import of every module of ``packages``, as absolute dotted targets."""
    files = module_files(root, packages)
    found = []
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node.module or "", node.level, module, is_package)
                if base is not None:  # ``from pkg import name``: an edge to pkg.name when that is a module
                    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                    targets = subs + ([base] if len(subs) < len(node.names) and base else [])
            elif (isinstance(node, ast.Call) and _call_name(node.func) in IMPORT_CALLS and node.args
                  and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                name = node.args[0].value
                dots = len(name) - len(name.lstrip("."))
                targets = [_absolute(name[dots:], dots, module, is_package)]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = ENTRY_POINT.fullmatch(node.value.strip())
                if match and match.group(1).split(".")[0] in PACKAGES:
                    targets = [match.group(1)]
            rel = path.relative_to(root)
            found += [Import(module, rel, node.lineno, t) for t in targets if t]
    return found


def layer_violations(root: Path) -> list[Import]:
    """Imports of a higher floor from a lower one."""
    bad = []
    for imp in collect_imports(root):
        to, at = floor(imp.target), floor(imp.importer)
        if to is not None and at is not None and to > at:
            bad.append(imp)
    return bad


def ground_violations(root: Path) -> list[Import]:
    """Imports of any other package of the project from the ground floor, common/."""
    return [imp for imp in collect_imports(root) if imp.importer.split(".")[0] == GROUND
            and imp.target.split(".")[0] in PACKAGES and imp.target.split(".")[0] != GROUND]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the packages it imports (a target that is not a module: its longest module prefix)."""
    files = module_files(root)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for imp in collect_imports(root):
        parts = imp.target.split(".")
        for n in range(len(parts), 0, -1):
            target = ".".join(parts[:n])
            if target in files:
                if target != imp.importer:
                    graph[imp.importer].add(target)
                break
    return graph


def import_cycles(root: Path) -> list[list[str]]:
    """One cycle [a, b, ..., a] for each strongly connected component of the import graph with 2+ modules."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(v: str) -> None:  # Tarjan; the graph has ~100 modules, so recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:  # a shortest way round from the component's first module
        start = min(component)
        paths, frontier = {start: [start]}, [start]
        while start not in graph[frontier[0]]:
            v = frontier.pop(0)
            for w in sorted(graph[v] & component):
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    frontier.append(w)
        cycles.append(paths[frontier[0]] + [start])
    return cycles


@pytest.mark.parametrize("module", [*BOARD, "agent.simulator", "agent.kernels", "agent.process", "agent.spec",
                                    "coordinator_free.topology", "coordinator_free.transport", "p2pntk.cli"])
def test_runtime_does_not_import_torch(module):
    code = f"import sys, importlib; importlib.import_module({module!r}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_package_has_a_floor():
    assert sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests") == \
        sorted(PACKAGES)
    assert all(floor(p) is not None for p in PACKAGES)


def test_lower_floors_never_import_higher_ones():
    bad = layer_violations(ROOT)
    assert not bad, "upward imports (floors, lowest first: " + " -> ".join(map(floor_name, range(len(FLOORS)))) + \
        "):\n" + "\n".join(map(str, bad))


def test_the_membership_state_machine_imports_no_socket_and_no_clock():
    for module, banned in SANS_IO.items():
        bad = [imp for imp in collect_imports(ROOT, packages=["coordinator_free"]) if imp.importer == module
               and imp.target.split(".")[0] in banned]
        seen = {imp.target for imp in collect_imports(ROOT, packages=["coordinator_free"]) if imp.importer == module}
        assert seen and not bad, f"{module} must own no socket and read no clock:\n" + "\n".join(map(str, bad))


def test_packages_import_each_other_one_way():
    """No cycle between packages either (host -> benchmarks -> host would hide behind module-level order)."""
    edges = {(imp.importer.split(".")[0], imp.target.split(".")[0]) for imp in collect_imports(ROOT)
             if imp.target.split(".")[0] in PACKAGES}
    both = sorted((a, b) for a, b in edges if a < b and (b, a) in edges)
    assert not both, f"packages importing each other: {both}"


def test_the_ground_floor_imports_nothing_of_the_project():
    bad = ground_violations(ROOT)
    assert not bad, f"{GROUND} is the ground floor; it imports the rest of the project:\n" + "\n".join(map(str, bad))


def test_module_import_graph_has_no_cycles():
    cycles = import_cycles(ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_every_kind_of_import(tmp_path):
    """The checks on a planted tree: each kind of import is found, and a clean tree passes."""
    files = {
        "common/__init__.py": "",
        "common/errors.py": "from coordinator_free import wire\n",  # the ground floor imports floor 1
        "coordinator_free/__init__.py": "",
        "coordinator_free/wire.py": "import importlib\n\ndef f():\n    return importlib.import_module('agent.x')\n",
        "firmware_profiles/__init__.py": "TARGET = 'p2pntk.cli:main'\n",
        "agent/__init__.py": "",
        "agent/x.py": "def g():\n    from importlib import import_module\n    import_module('benchmarks.b')\n",
        "agent/y.py": "from . import z\n",
        "agent/z.py": "from agent import y\n",  # a cycle y -> z -> y
        "predictor/__init__.py": "",
        "predictor/p.py": "from host import loopback\n",
        "host/__init__.py": "",
        "host/loopback.py": "from p2pntk.commands import bench\nimport benchmarks\n",  # host sits below both
        "p2pntk/__init__.py": "",
        "p2pntk/commands/__init__.py": "",
        "p2pntk/commands/bench.py": "import benchmarks\n",  # the roof: fine
        "p2pntk/cli.py": "__import__('firmware_profiles')\nfrom .commands import bench\n",
        "benchmarks/__init__.py": "",
        "benchmarks/b.py": "from p2pntk.cli import main\nfrom host import loopback\n",  # the roof: no; host: fine
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert {(i.importer, i.target) for i in layer_violations(tmp_path)} == {
        ("common.errors", "coordinator_free.wire"), ("coordinator_free.wire", "agent.x"),
        ("firmware_profiles", "p2pntk.cli"), ("agent.x", "benchmarks.b"), ("predictor.p", "host.loopback"),
        ("host.loopback", "p2pntk.commands.bench"), ("host.loopback", "benchmarks"), ("benchmarks.b", "p2pntk.cli")}
    assert [(i.importer, i.target) for i in ground_violations(tmp_path)] == [("common.errors", "coordinator_free.wire")]
    assert sorted(import_cycles(tmp_path)) == [["agent.y", "agent.z", "agent.y"],  # and the two planted above:
                                               ["firmware_profiles", "p2pntk.cli", "firmware_profiles"]]
    assert "p2pntk.cli" not in import_graph(tmp_path)["p2pntk.cli"]
    for name in ("common/errors.py", "coordinator_free/wire.py", "firmware_profiles/__init__.py", "agent/x.py",
                 "agent/z.py", "predictor/p.py", "host/loopback.py", "benchmarks/b.py"):
        (tmp_path / name).write_text("import numpy\nfrom common import errors\n")
    (tmp_path / "common/errors.py").write_text("import numpy\n")
    assert not layer_violations(tmp_path) and not import_cycles(tmp_path) and not ground_violations(tmp_path)
