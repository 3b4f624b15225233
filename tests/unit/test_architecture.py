"""The shape of mux/'s imports, read from the source with `ast` (nothing is imported).

- The module graph has no circle. Every `import` and `from ... import` counts, wherever it
  is: inside functions and under `TYPE_CHECKING` too, since a circle there is one refactor
  away from an import-time failure, and it means two modules that cannot be understood
  apart. Importing `a.b.c` also runs the packages `a.b` and `a`, so those are edges too
  (except the importer's own packages, which are always running before it).
- No product module (the daemon, the xenstore client, the backends' interface, the client
  library, the commands and the shared vocabulary) reaches the simulator, the bench, the
  demo or the tests, directly or through another module.
- Nothing under mux/ edits `sys.path`: the package is importable as installed or not at all.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MUX = REPO / "mux"
TESTS = REPO / "tests"

PRODUCT = (
    "mux.daemon",
    "mux.xenstore",
    "mux.hypervisor",
    "mux.client",
    "mux.commands",
    "mux.protocol",
    "mux.records",
)
NOT_FOR_PRODUCT = ("mux.sim", "mux.bench", "mux.demo", "mux.chaos", "mux.realxen", "mux.debpeers")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # path:line of the import statement

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where})"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(root: Path) -> dict[str, Path]:
    """Module name -> source, for every .py under `root`; compiled modules (.pyx) are
    nodes too, so that `from mux import _fast` names a module and not the package."""
    found = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    for p in sorted(root.rglob("*.pyx")):
        found.setdefault(module_name(p, root), p)
    return found


def is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _absolute(node: ast.ImportFrom, importer: str, package: bool) -> str:
    """The module a `from` import names, with a relative one resolved against `importer`."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not package:
        base.pop()  # a module's relative imports start from its package
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(module imported, line) for every import statement of one .py file, anywhere in it."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, name, is_package(name, modules))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                # `from pkg import mod` imports the module pkg.mod; `from mod import name`
                # imports mod.
                out.append((sub if sub in modules else target, node.lineno))
    return out


Graph = dict[str, list[Edge]]


def import_graph(root: Path = MUX) -> tuple[Graph, Graph]:
    """Edges between the modules under `root`, and each one's imports of outside modules."""
    modules = modules_of(root)
    graph: Graph = {m: [] for m in modules}
    outside: Graph = {m: [] for m in modules}
    for name, path in modules.items():
        if path.suffix != ".py":
            continue
        where_prefix = path.relative_to(root.parent)
        for target, line in imports_of(name, path, modules):
            if target not in modules:
                outside[name].append(Edge(name, target, f"{where_prefix}:{line}"))
                continue
            own = set(ancestors(name))
            for t in [*ancestors(target), target]:
                if t in modules and t != name and (t == target or t not in own):
                    graph[name].append(Edge(name, t, f"{where_prefix}:{line}"))
    return graph, outside


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with a circle in them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for edge in edges:
                nxt = edge.target
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    self_loop = any(e.target == node for e in graph[node])
                    if len(component) > 1 or self_loop:
                        found.append(sorted(component))
    return found


def a_circle(graph: Graph, component: list[str]) -> list[Edge]:
    """One circle through the component's first module, edge by edge (breadth first, so
    the shortest)."""
    members = set(component)
    start = component[0]
    paths: Graph = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for edge in graph[node]:
            if edge.target == start:
                return [*paths[node], edge]
            if edge.target in members and edge.target not in paths:
                paths[edge.target] = [*paths[node], edge]
                queue.append(edge.target)
    raise AssertionError(f"no circle through {start}")  # pragma: no cover - Tarjan said so


def reach(graph: Graph, start: str) -> Graph:
    """Every module `start` imports, directly or not, with the chain of imports to it."""
    paths: Graph = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for edge in graph[node]:
            if edge.target not in paths:
                paths[edge.target] = [*paths[node], edge]
                queue.append(edge.target)
    return paths


def test_the_import_graph_has_no_circle():
    graph, _ = import_graph()
    components = strongly_connected(graph)
    assert not components, "import circles in mux/:\n" + "\n".join(
        f"  {', '.join(c)}; for one: " + " | ".join(map(str, a_circle(graph, c)))
        for c in components
    )


def forbidden_reaches(
    graph: Graph,
    outside: Graph,
    product: tuple[str, ...],
    forbidden: tuple[str, ...],
    test_modules: set[str],
) -> list[str]:
    """Each chain of imports from a product module to a forbidden one or to a test module."""
    bad = []
    for name in graph:
        if not any(within(name, p) for p in product):
            continue
        for target, chain in reach(graph, name).items():
            if any(within(target, p) for p in forbidden):
                bad.append(" | ".join(map(str, chain)))
            for edge in outside[target]:
                if edge.target.partition(".")[0] in test_modules:
                    bad.append(" | ".join(map(str, [*chain, edge])))
    return bad


def test_product_modules_never_reach_the_sim_the_bench_the_demo_or_the_tests():
    graph, outside = import_graph()
    test_modules = {module_name(p, TESTS).partition(".")[2] for p in TESTS.glob("*.py")}
    test_modules |= {"tests", "conftest"}
    bad = forbidden_reaches(graph, outside, PRODUCT, NOT_FOR_PRODUCT, test_modules)
    assert not bad, "product modules reaching what they must not:\n  " + "\n  ".join(bad)


def _edits_sys_path(tree: ast.AST) -> list[int]:
    def is_sys_path(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "path"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        )

    lines = []
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and is_sys_path(node.func.value)  # sys.path.insert(...), .append, .extend...
        ):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            lines.extend(node.lineno for alias in node.names if alias.name == "path")
        for t in targets:
            if is_sys_path(t) or (isinstance(t, ast.Subscript) and is_sys_path(t.value)):
                lines.append(node.lineno)
    return lines


def test_nothing_under_mux_edits_sys_path():
    edits = []
    for path in sorted(MUX.rglob("*.py")):
        for line in _edits_sys_path(ast.parse(path.read_text(), str(path))):
            edits.append(f"{path.relative_to(REPO)}:{line}")
    assert not edits, f"sys.path edited at {', '.join(edits)}"


# -- the checks themselves can fail ----------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    root = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import x\n",
            "pkg/b.py": "def f():\n    from . import c\n",
            "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n",
            "pkg/d.py": "import pkg.a\n",
        },
    )
    graph, outside = import_graph(root)
    assert strongly_connected(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    circle = a_circle(graph, ["pkg.a", "pkg.b", "pkg.c"])
    assert [(e.source, e.target) for e in circle] == [
        ("pkg.a", "pkg.b"),
        ("pkg.b", "pkg.c"),
        ("pkg.c", "pkg.a"),
    ]
    assert circle[1].where == "pkg/b.py:2"
    assert [str(e) for e in outside["pkg.c"]] == ["pkg.c -> typing (pkg/c.py:1)"]


def test_a_package_init_importing_its_submodule_is_no_circle(tmp_path):
    root = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "from pkg.sub.base import X\n",
            "pkg/sub/base.py": "X = 1\n",
            "pkg/sub/impl.py": "from pkg.sub.base import X\n",
            "pkg/other.py": "from pkg.sub.impl import X\n",
        },
    )
    graph, _ = import_graph(root)
    assert strongly_connected(graph) == []
    # Importing pkg.sub.impl from outside runs pkg.sub's __init__ first.
    assert {e.target for e in graph["pkg.other"]} == {"pkg.sub", "pkg.sub.impl"}


def test_a_package_init_reached_through_its_own_submodule_is_a_circle(tmp_path):
    root = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "from pkg.sub.impl import X\n",
            "pkg/sub/impl.py": "from pkg.other import X\n",
            "pkg/other.py": "import pkg.sub\nX = 1\n",
        },
    )
    graph, _ = import_graph(root)
    assert strongly_connected(graph) == [["pkg.other", "pkg.sub", "pkg.sub.impl"]]


def test_a_product_module_reaching_the_sim_or_a_test_through_another_is_found(tmp_path):
    root = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/core.py": "def f():\n    import pkg.helper\n",
            "pkg/helper.py": "from pkg.sim import x\nimport simhelpers\n",
            "pkg/sim.py": "x = 1\n",
            "pkg/tool.py": "import pkg.sim\n",
        },
    )
    graph, outside = import_graph(root)
    bad = forbidden_reaches(graph, outside, ("pkg.core",), ("pkg.sim",), {"simhelpers"})
    assert sorted(bad) == [
        "pkg.core -> pkg.helper (pkg/core.py:2) | pkg.helper -> pkg.sim (pkg/helper.py:1)",
        "pkg.core -> pkg.helper (pkg/core.py:2) | pkg.helper -> simhelpers (pkg/helper.py:2)",
    ]


@pytest.mark.parametrize(
    "source",
    [
        "import sys\nsys.path.insert(0, 'x')\n",
        "import sys\nsys.path.append('x')\n",
        "import sys\nsys.path[:0] = ['x']\n",
        "import sys\nsys.path = ['x']\n",
        "import sys\nsys.path += ['x']\n",
        "from sys import path\n",
    ],
)
def test_sys_path_edits_are_found(source):
    assert _edits_sys_path(ast.parse(source)) != []


def test_reading_sys_path_is_no_edit():
    assert _edits_sys_path(ast.parse("import sys\nprint(list(sys.path))\n")) == []
