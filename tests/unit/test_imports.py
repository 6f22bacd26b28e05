"""The house's import rules, read from the source (every import, in functions too).

- No cycles among initpy's modules and the hooks, TYPE_CHECKING imports
  included.
- The runtime (what PID 1 runs) imports neither the builder, the dev tools
  nor a hook; the kernel seam imports nothing of initpy at all.
- The builder never imports the PID 1 driver.
- A hook imports the runtime and its own helpers, never the builder, the
  dev tools, the host's monitor or another hook.
- What runs on the booted host (initpy/host, under the OS's python3) imports
  the standard library, tftpy and initpy.runtime.layout, and nothing else:
  only those go into the image with it (hooks/monitor.py).
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator

import pytest

from tests.unit.conftest import REPO

PACKAGES = ("initpy", "hooks")


def module_name(path: str) -> str:
    relative = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
    if relative[-1] == "__init__":
        relative = relative[:-1]
    return ".".join(relative)


def sources() -> Iterator[tuple[str, str]]:
    for top in PACKAGES:
        for folder, dirs, names in os.walk(os.path.join(REPO, top)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    yield module_name(path), path


def imports_of(name: str, path: str) -> set[str]:
    """Every initpy or hooks module that `name` imports, resolved to a module."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        found.update(t for t in targets if t.split(".")[0] in PACKAGES)
    return found


def graph() -> dict[str, set[str]]:
    modules = dict(sources())
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        # `from x import y` names module x.y when it exists, else the attribute of x.
        # A module's own parent packages are imported before it by Python
        # itself (`from . import sibling` names one): not an edge.
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges[name] = {
            t for t in imports_of(name, path) if t in modules and t != name and t not in ancestors
        }
    return edges


GRAPH = graph()


def part(module: str) -> str:
    if module.startswith("hooks"):
        return "hooks"
    for name in ("runtime", "builder", "devtools", "host"):
        if module.startswith(f"initpy.{name}"):
            return name
    return "initpy"


def hook_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "hooks" and len(parts) > 1 else None


def test_there_is_no_import_cycle() -> None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if part(m) == "runtime"))
def test_the_runtime_imports_only_the_runtime(module: str) -> None:
    outside = sorted(t for t in GRAPH[module] if part(t) not in ("runtime", "initpy"))
    assert not outside, f"{module} (runs as PID 1) imports {outside}"
    if module == "initpy.runtime.kernel":
        # The record decorators stand in for dataclasses and import nothing.
        leaf = {
            "initpy",
            "initpy.runtime",
            "initpy.runtime.record",
            "initpy.runtime.processes",
            "initpy.runtime.sockets",
        }
        assert not GRAPH[module] - leaf, "the kernel seam must be a leaf"
    if module == "initpy.runtime.record":
        assert not GRAPH[module] - {"initpy", "initpy.runtime"}, "records import nothing"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if part(m) == "builder"))
def test_the_builder_never_imports_the_driver_or_the_dev_tools(module: str) -> None:
    bad = sorted(
        t
        for t in GRAPH[module]
        if t in ("initpy.runtime.driver", "initpy.runtime.entry")
        or part(t) in ("devtools", "hooks")
    )
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if part(m) == "hooks"))
def test_a_hook_imports_the_runtime_and_its_own_helpers_only(module: str) -> None:
    own = hook_of(module)
    bad = sorted(
        t
        for t in GRAPH[module]
        if part(t) in ("builder", "devtools", "host")
        or (part(t) == "hooks" and t != "hooks" and hook_of(t) != own)
    )
    assert not bad, f"{module} imports {bad}"


HOST_MAY_IMPORT = {"initpy", "initpy.runtime", "initpy.runtime.layout"}
HOST_THIRD_PARTY = {"tftpy"}


def top_level_imports(path: str) -> set[str]:
    """The top-level name of every absolute import in a file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if part(m) == "host"))
def test_the_host_imports_the_stdlib_tftpy_and_layout_only(module: str) -> None:
    outside = sorted(t for t in GRAPH[module] if part(t) != "host" and t not in HOST_MAY_IMPORT)
    assert not outside, f"{module} (runs on the booted host) imports {outside}"
    path = dict(sources())[module]
    foreign = sorted(
        name
        for name in top_level_imports(path)
        if name not in sys.stdlib_module_names and name not in HOST_THIRD_PARTY | {"initpy"}
    )
    assert not foreign, f"{module} imports {foreign}, which the image does not get"


def test_the_check_sees_relative_and_function_level_imports() -> None:
    assert "hooks.network.dhcpclient" in GRAPH["hooks.network"]  # inside a state function
    assert "hooks.network.lease" in GRAPH["hooks.network.dhcpclient"]  # `from .lease import`
    assert "initpy.runtime.kernel" in GRAPH["initpy.runtime.driver"]
    assert "initpy.runtime.layout" in GRAPH["initpy.host.monitor"]
    assert "tftpy" in top_level_imports(dict(sources())["initpy.host.fetch"])  # in a function
