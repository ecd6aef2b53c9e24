"""Which of gpulab's packages may import which (docs/architecture.md): checked on the
source, top-level and deferred imports alike.

- What runs in users' processes (the server extension in their Jupyter server, the
  model server) imports nothing of the hub or the backends: it would pull the hub's
  settings and database code into a process its user controls.
- The core (settings, names, inventory, ledger) imports nothing of the layers above it:
  the backends, the workloads, the API, the hub's wiring and the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

from hubfixture import REPO

PACKAGES = ("hub", "spawner", "extensions", "serving")

USER_SIDE = ("gpulab.extensions", "gpulab.serving")
SERVER_SIDE = ("gpulab.hub", "gpulab.spawner")

CORE = ("gpulab.hub.settings", "gpulab.hub.names", "gpulab.hub.inventory", "gpulab.hub.ledger")
ABOVE_CORE = (
    "gpulab.spawner",
    "gpulab.hub.workloads",
    "gpulab.hub.api",
    "gpulab.hub.app",
    "gpulab.hub.hubconfig",
    "gpulab.hub.gpuswitch",
    "gpulab.hub.movers",
    "gpulab.hub.client",
)

BELOW_SERVICES = (
    "gpulab.spawner",
    "gpulab.hub.workloads",
    "gpulab.hub.gpuswitch",
    "gpulab.hub.movers",
    "gpulab.hub.storage",
)
SERVICES_AND_ABOVE = (
    "gpulab.hub.app",
    "gpulab.hub.api",
    "gpulab.hub.hubconfig",
    "gpulab.hub.client",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("gpulab", *parts))


def imports(path: Path, runtime: bool = False) -> set[str]:
    """The gpulab modules ``path`` imports, wherever in the file (relative ones resolved),
    and the names it imports from them (``gpulab.hub.app.Context``). ``runtime``: leave
    out what is imported only for type checking (``if TYPE_CHECKING:``)."""
    found = set()
    for base, names in _statements(path, runtime):
        found.add(base)
        found.update(f"{base}.{n}" for n in names)
    return {m for m in found if m.startswith("gpulab.")}


def _statements(path: Path, runtime: bool):
    """Each import of ``path`` as (module, names imported from it; none for ``import``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _walk(ast.parse(path.read_text(), str(path)), runtime):
        if isinstance(node, ast.Import):
            yield from ((a.name, ()) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [a.name for a in node.names]


def _walk(node: ast.AST, runtime: bool):
    yield node
    for child in ast.iter_child_nodes(node):
        if runtime and isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from (n for other in child.orelse for n in _walk(other, runtime))
            continue
        yield from _walk(child, runtime)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def graph(runtime: bool = False) -> dict[str, set[str]]:
    return {
        module_name(path): imports(path, runtime)
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def module_graph() -> dict[str, set[str]]:
    """Which gpulab modules each one imports when it runs (type-checking imports left
    out). ``from . import gpuinfo`` is an edge to ``gpuinfo``, not to the package that
    holds it; ``from gpulab.hub.ledger import Grant`` one to ``gpulab.hub.ledger``."""
    paths = {
        module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")
    }

    def module_of(name: str) -> str:
        while name not in paths and "." in name:
            name = name.rpartition(".")[0]
        return name

    edges = {}
    for a, path in paths.items():
        targets = set()
        for base, names in _statements(path, runtime=True):
            # each name is a submodule of its own, or a name of the module it comes from
            for full in [f"{base}.{n}" for n in names] or [base]:
                targets.add(full if full in paths else module_of(base))
        edges[a] = {t for t in targets if t in paths} - {a}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def breaches(edges: dict[str, set[str]], lower: tuple[str, ...], upper: tuple[str, ...]):
    return sorted(
        f"{a} imports {b}"
        for a, targets in edges.items()
        if within(a, lower)
        for b in targets
        if within(b, upper)
    )


def test_the_graph_sees_relative_deferred_and_type_checking_imports():
    edges = graph()
    # "from .kernels import KernelSwitch" in the extension; "from gpulab.hub.kube import
    # core_api, namespace" inside a function of the kubernetes backend
    assert "gpulab.extensions.server.kernels" in edges["gpulab.extensions.server.handlers"]
    assert "gpulab.hub.kube" in edges["gpulab.spawner.kube_backend"]
    assert breaches({"gpulab.serving.x": {"gpulab.hub.settings"}}, USER_SIDE, SERVER_SIDE)
    # "if TYPE_CHECKING: from gpulab.hub.app import Context" in the spawners' base: seen,
    # and left out of what runs
    assert "gpulab.hub.app" in edges["gpulab.spawner.base"]
    assert "gpulab.hub.app" not in module_graph()["gpulab.spawner.base"]
    # the cycle finder finds one
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(planted) == [["a", "b", "c"]]


def test_what_runs_in_users_processes_imports_nothing_of_the_hub():
    assert breaches(graph(), USER_SIDE, SERVER_SIDE) == []


def test_the_core_imports_nothing_of_the_layers_above_it():
    assert breaches(graph(), CORE, ABOVE_CORE) == []


def test_the_backends_and_workloads_are_handed_the_hubs_services():
    # the hub's services (hub/app.py), API, wiring and CLI sit above the backends and the
    # workloads, which get what they need (the ledger, S3 accounts) when they are made
    assert breaches(graph(runtime=True), BELOW_SERVICES, SERVICES_AND_ABOVE) == []


def test_no_module_imports_itself_through_others():
    assert cycles(module_graph()) == []
