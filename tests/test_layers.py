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


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("gpulab", *parts))


def imports(path: Path) -> set[str]:
    """The gpulab modules ``path`` imports, wherever in the file (relative ones resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("gpulab.")}


def graph() -> dict[str, set[str]]:
    return {
        module_name(path): imports(path)
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


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


def test_the_graph_sees_relative_and_deferred_imports():
    edges = graph()
    # "from .kernels import KernelSwitch" in the extension, "from gpulab.hub.app import
    # context" inside a function in the kubernetes backend
    assert "gpulab.extensions.server.kernels" in edges["gpulab.extensions.server.handlers"]
    assert "gpulab.hub.app" in edges["gpulab.spawner.kube_backend"]
    assert breaches({"gpulab.serving.x": {"gpulab.hub.settings"}}, USER_SIDE, SERVER_SIDE)


def test_what_runs_in_users_processes_imports_nothing_of_the_hub():
    assert breaches(graph(), USER_SIDE, SERVER_SIDE) == []


def test_the_core_imports_nothing_of_the_layers_above_it():
    assert breaches(graph(), CORE, ABOVE_CORE) == []
