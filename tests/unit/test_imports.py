"""The house's import rules, read from the source (every import, in functions too).

`RULES` is the one table: each part of the house, what it may import, and
why. Every module of initpy and hooks belongs to exactly one part
(`part()`), and every import it makes (TYPE_CHECKING ones included) must
land in its own part or in one its rule allows. docs/design.md carries the
table as text between two markers; a test renders `RULES` and fails when
the two differ, so the picture a newcomer reads is the one enforced here.
No cycles anywhere.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator

import pytest

from hooks.monitor import HOST_RUNTIME
from tests.unit.conftest import REPO

PACKAGES = ("initpy", "hooks")

# Runtime modules that must stay leaves: they import the standard library and
# one another only. The seam (kernel.py and its siblings), the records, the
# kernel's wire formats, the builder's contract, the exit-status words and
# the escaping of outside text (the last the booted host imports too).
LEAVES = frozenset(
    f"initpy.runtime.{name}"
    for name in (
        "kernel",
        "files",
        "processes",
        "sockets",
        "record",
        "uevent",
        "layout",
        "exit_status",
        "escape",
    )
)
# PID 1's life: the entry, the freeze's script, the machine and rescue. Only
# the dev tools run it; a hook or the builder that imported it would pull
# the whole boot in.
ENGINE = frozenset(f"initpy.runtime.{name}" for name in ("entry", "frozen", "driver", "rescue"))
# What the booted host's python3 may import of the runtime: the modules the
# monitor hook puts into the image beside initpy/host.
HOST_SHIPPED = frozenset(f"initpy.runtime.{name}" for name in HOST_RUNTIME)


# part -> (the parts it may import besides its own, why). "own hook": a hook
# imports its own folder's helpers, never another hook; "shipped runtime":
# HOST_SHIPPED.
RULES: dict[str, tuple[tuple[str, ...], str]] = {
    "leaves": ((), "the seam, the records, the wire formats: stdlib only"),
    "cli": ((), "initpy/cli.py, every command's edge (die, --debug): stdlib only"),
    "runtime": (("leaves",), "what PID 1 runs, but never the engine"),
    "engine": (("leaves", "runtime"), "PID 1's life"),
    "hooks": (("leaves", "runtime", "own hook"), "never the engine, the builder, another hook"),
    "builder": (("leaves", "runtime", "cli"), "mkinitrd: never frozen, never the engine"),
    "devtools": (
        ("leaves", "runtime", "engine", "builder", "hooks", "cli"),
        "the fake plays the hooks' counterparts",
    ),
    "host": (("shipped runtime", "cli"), "runs under the booted host's python3"),
    "initpy": (("devtools",), "`python -m initpy`"),
}
# The third-party packages a part may import (None: any that the build has).
THIRD_PARTY: dict[str, frozenset[str] | None] = {
    "leaves": frozenset(),
    "cli": frozenset(),
    "host": frozenset(),
}

DESIGN = os.path.join(REPO, "docs", "design.md")
BEGIN = "<!-- import rules: generated from RULES in tests/unit/test_imports.py -->"
END = "<!-- end of import rules -->"


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
SOURCES = dict(sources())
# Packages whose __init__ is empty of imports: reaching one imports nothing.
PACKAGE_ROOTS = {"initpy", "initpy.runtime", "hooks"}


def part(module: str) -> str:
    if module.startswith("hooks"):
        return "hooks"
    if module in LEAVES:
        return "leaves"
    if module in ENGINE:
        return "engine"
    if module == "initpy.cli":
        return "cli"
    for name in ("runtime", "builder", "devtools", "host"):
        if module == f"initpy.{name}" or module.startswith(f"initpy.{name}."):
            return name
    return "initpy"


def hook_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "hooks" and len(parts) > 1 else None


def allowed(source: str, target: str) -> bool:
    """Whether `source` may import `target` by RULES."""
    if target in PACKAGE_ROOTS:
        return True
    own, there = part(source), part(target)
    may, _ = RULES[own]
    if own == "hooks":
        return (there == "hooks" and hook_of(target) == hook_of(source)) or there in may
    if "shipped runtime" in may and target in HOST_SHIPPED:
        return True
    return there == own or there in may


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


def render_rules() -> list[str]:
    """RULES as the lines docs/design.md carries."""

    def names(modules: frozenset[str]) -> str:
        return ", ".join(sorted(m.rpartition(".")[2] for m in modules))

    lines = ["part     may import, besides itself"]
    lines += [
        f"{name:<8} {', '.join(may) or 'nothing'} ({why})" for name, (may, why) in RULES.items()
    ]
    lines += [
        f"leaves   = runtime/{{{names(LEAVES)}}}",
        f"engine   = runtime/{{{names(ENGINE)}}}",
        f"shipped runtime = runtime/{{{names(HOST_SHIPPED)}}} (HOST_RUNTIME in hooks/monitor.py)",
        "third party: "
        + "; ".join(
            f"{p} {', '.join(sorted(t)) or 'none'}" for p, t in THIRD_PARTY.items() if t is not None
        ),
        "no cycles anywhere; nothing imports host",
    ]
    return lines


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


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_each_module_imports_what_its_part_may(module: str) -> None:
    bad = sorted(t for t in GRAPH[module] if not allowed(module, t))
    assert not bad, f"{module} ({part(module)}: {RULES[part(module)][1]}) imports {bad}"
    extra = THIRD_PARTY.get(part(module))
    if extra is not None:
        foreign = sorted(
            name
            for name in top_level_imports(SOURCES[module])
            if name not in sys.stdlib_module_names and name not in extra | set(PACKAGES)
        )
        assert not foreign, f"{module} imports {foreign}, which its part may not"


def test_every_part_has_modules_and_a_rule() -> None:
    found = {part(m) for m in GRAPH}
    assert found == set(RULES), f"parts without a rule or without modules: {found ^ set(RULES)}"
    assert LEAVES | ENGINE <= set(GRAPH), "a named leaf or engine module does not exist"


def test_the_host_gets_only_leaves() -> None:
    """What the image gets beside initpy/host is whole: each shipped module imports
    only the standard library and other shipped modules."""
    assert HOST_SHIPPED <= LEAVES
    for module in HOST_SHIPPED:
        assert GRAPH[module] - PACKAGE_ROOTS <= HOST_SHIPPED, module


def test_design_md_carries_the_rules() -> None:
    with open(DESIGN, encoding="utf-8") as f:
        text = f.read()
    assert BEGIN in text and END in text, f"docs/design.md lacks the {BEGIN} block"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    shown = [line for line in block.strip("\n").splitlines() if not line.startswith("```")]
    assert shown == render_rules(), (
        "docs/design.md's import rules differ from RULES in tests/unit/test_imports.py; "
        "put these lines between the markers:\n" + "\n".join(render_rules())
    )


def test_the_check_sees_relative_and_function_level_imports() -> None:
    assert "hooks.network.race" in GRAPH["hooks.network"]  # inside a state function
    assert "hooks.network.lease" in GRAPH["hooks.network.race"]  # `from .lease import`
    assert "initpy.runtime.kernel" in GRAPH["initpy.runtime.driver"]
    assert "initpy.runtime.layout" in GRAPH["initpy.host.monitor"]
    assert "glob" in top_level_imports(SOURCES["hooks.monitor"])  # in a function


def test_a_breach_is_seen() -> None:
    """The rules bite: each forbidden edge the house once had or might grow."""
    assert not allowed("initpy.runtime.kernel", "initpy.runtime.hook")  # the seam stays a leaf
    assert not allowed("initpy.builder.mkinitrd", "initpy.runtime.driver")
    assert not allowed("hooks.monitor", "initpy.runtime.driver")  # the hand-off, not the engine
    assert not allowed("hooks.persist", "hooks.storage.blockdev")  # another hook
    assert not allowed("initpy.host.monitor", "initpy.runtime.kernel")  # not in the image
    assert not allowed("initpy.runtime.report", "initpy.devtools.fake")
    assert allowed("initpy.devtools.fake_network", "hooks.network.lease")
