"""The hook contract and the registry: the one place that knows every hook.

A hook is data plus functions. It declares its name, the states it adds with
their before/after ordering, what it needs inside the initrd (binaries,
kernel modules, files) and the command-line parameters it reads. The
registry orders the states, and from it are derived the boot's state
machine, the state diagram in docs/ and mkinitrd's list of files.

A hook lives in a file of a hooks folder and exposes `HOOK = Hook(...)`.
Hook files are imported at boot, so they import only the standard library
and `initpy` at module level; heavy imports (pyroute2) go inside the state
functions that need them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from initpy.cmdline import BootConfig, Parameter

if TYPE_CHECKING:
    from initpy.kernel import Kernel
    from initpy.report import Report

T = TypeVar("T")

# The states the driver itself owns. Hooks order their states against these
# (and against each other's).
EARLY_MOUNTS = "early_mounts"
CMDLINE = "cmdline"
HANDOFF = "handoff"
RESCUE = "rescue"
CORE_STATES = (EARLY_MOUNTS, CMDLINE)


class BootFailure(Exception):
    """A state failed in a way the operator can fix.

    `reason` says what is wrong, `fix` what to do about it. Both are printed
    on the console as `initpy: rescue: ...` and kept in the boot report.
    """

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


class HookError(Exception):
    """The hooks do not fit together (cycle, unknown state, duplicate)."""


@dataclass(frozen=True)
class Fact(Generic[T]):
    """A typed key for a result that one state leaves for later ones."""

    name: str


@dataclass
class BootContext:
    """What a state function gets: the seam, the command line, the report."""

    kernel: Kernel
    report: Report
    config: BootConfig = field(default_factory=BootConfig)
    _facts: dict[str, object] = field(default_factory=dict)

    def put(self, fact: Fact[T], value: T) -> None:
        self._facts[fact.name] = value

    def get(self, fact: Fact[T], default: T) -> T:
        return cast(T, self._facts.get(fact.name, default))

    def value(self, parameter: Parameter[T]) -> T:
        return self.config.value(parameter)

    def say(self, message: str) -> None:
        """A progress line inside the current state (console and kernel log)."""
        self.report.say(message)

    def warn(self, message: str) -> None:
        """A problem that does not stop the boot, kept in the report's warnings."""
        self.report.warn(message)


# A state function returns a short detail for the report, or None.
StateFunction = Callable[[BootContext], "str | None"]


@dataclass(frozen=True)
class State:
    """One step of the boot, run once, in order."""

    name: str
    run: StateFunction
    description: str
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hook:
    """One feature of the init, as data plus the functions it runs."""

    name: str
    description: str
    states: tuple[State, ...] = ()
    binaries: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # "SRC" or "SRC:DST", host paths
    parameters: tuple[Parameter[object], ...] = ()


@dataclass(frozen=True)
class Registry:
    """The selected hooks and the order of their states."""

    hooks: tuple[Hook, ...]
    order: tuple[str, ...]  # every state name, in boot order

    @property
    def states(self) -> dict[str, State]:
        return {s.name: s for h in self.hooks for s in h.states}

    def owner(self, state: str) -> Hook:
        for hook in self.hooks:
            if any(s.name == state for s in hook.states):
                return hook
        raise KeyError(state)

    def parameters(self) -> list[Parameter[object]]:
        return [p for h in self.hooks for p in h.parameters]

    def binaries(self) -> dict[str, list[str]]:
        """Binary name -> the hooks that want it."""
        wanted: dict[str, list[str]] = {}
        for hook in self.hooks:
            for binary in hook.binaries:
                wanted.setdefault(binary, []).append(hook.name)
        return wanted

    def modules(self) -> list[str]:
        seen: dict[str, None] = {}
        for hook in self.hooks:
            for module in hook.modules:
                seen.setdefault(module, None)
        return list(seen)

    def files(self) -> list[str]:
        return [f for h in self.hooks for f in h.files]


def build_registry(selected: Sequence[Hook], known: Iterable[Hook] = (),
                   absent_states: Iterable[str] = ()) -> Registry:
    """Order the states of `selected` hooks.

    `known` are hooks that exist but were not chosen, and `absent_states`
    the states of such hooks that are not even present (mkinitrd packs only
    the chosen hook files and lists the others' states): a reference to one
    of those is dropped, while a reference to a state nobody declares is an
    error. Ties are broken by the order of `selected`, then declaration.
    """
    declared: dict[str, str] = {}
    states: list[State] = []
    names: dict[str, Hook] = {}
    for hook in selected:
        if hook.name in names:
            raise HookError(f"two hooks are named {hook.name!r}")
        names[hook.name] = hook
        for state in hook.states:
            if state.name in (*CORE_STATES, HANDOFF, RESCUE):
                raise HookError(
                    f"hook {hook.name!r} declares state {state.name!r}, which the driver owns"
                )
            if state.name in declared:
                raise HookError(
                    f"state {state.name!r} is declared twice: by hook "
                    f"{declared[state.name]!r} and by hook {hook.name!r}"
                )
            declared[state.name] = hook.name
            states.append(state)
    elsewhere = {s.name for h in known if h.name not in names for s in h.states}
    elsewhere.update(absent_states)
    position = {s.name: i for i, s in enumerate(states)}
    edges: dict[str, set[str]] = {s.name: set() for s in states}  # name -> must come before
    for state in states:
        for other in state.after:
            if other in CORE_STATES:
                continue
            if other in position:
                edges[other].add(state.name)
            elif other not in elsewhere:
                raise HookError(
                    f"hook {declared[state.name]!r}: state {state.name!r} is to run after "
                    f"{other!r}, which no hook declares"
                )
        for other in state.before:
            if other == HANDOFF:
                continue
            if other in CORE_STATES:
                raise HookError(
                    f"hook {declared[state.name]!r}: state {state.name!r} cannot run before "
                    f"{other!r}, which the driver runs first"
                )
            if other in position:
                edges[state.name].add(other)
            elif other not in elsewhere:
                raise HookError(
                    f"hook {declared[state.name]!r}: state {state.name!r} is to run before "
                    f"{other!r}, which no hook declares"
                )
    # Kahn's algorithm, always taking the earliest-declared ready state.
    indegree = {name: 0 for name in edges}
    for targets in edges.values():
        for target in targets:
            indegree[target] += 1
    ready = sorted((n for n, d in indegree.items() if d == 0), key=position.__getitem__)
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for target in edges[name]:
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
        ready.sort(key=position.__getitem__)
    if len(order) != len(states):
        stuck = sorted(n for n, d in indegree.items() if d > 0)
        hooks = sorted({declared[n] for n in stuck})
        raise HookError(
            "the hooks' ordering has a cycle among states "
            + ", ".join(stuck) + " (hooks: " + ", ".join(hooks) + ")"
        )
    return Registry(tuple(selected), (*CORE_STATES, *order, HANDOFF))


def load_hook_file(path: str) -> Hook:
    """Import one hook file and return its `HOOK`."""
    stem = os.path.splitext(os.path.basename(path))[0]
    module_name = f"initpy_hooks.{stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise HookError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    hook = getattr(module, "HOOK", None)
    if not isinstance(hook, Hook):
        raise HookError(f"{path}: defines no HOOK = Hook(...)")
    return hook


def discover(folders: Sequence[str]) -> dict[str, Hook]:
    """Every hook in the folders, by name; a later folder overrides an earlier."""
    found: dict[str, Hook] = {}
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.listdir(folder)):
            if entry.endswith(".py") and not entry.startswith("_"):
                hook = load_hook_file(os.path.join(folder, entry))
                found[hook.name] = hook
    return found


def select(found: Mapping[str, Hook], names: Sequence[str] | None) -> list[Hook]:
    """The chosen hooks, in the order given (all, sorted by name, if None)."""
    if names is None:
        return [found[n] for n in sorted(found)]
    missing = [n for n in names if n not in found]
    if missing:
        raise HookError(
            "unknown hook(s) " + ", ".join(missing) + "; available: " + ", ".join(sorted(found))
        )
    return [found[n] for n in names]
