"""The hook contract and the registry: the one place that knows every hook.

A hook is data plus functions. It declares its name, the states it adds
with the milestones each provides, needs or wants, what it needs inside the
initrd (binaries, kernel modules, files) and the command-line parameters it
reads. The registry orders the states, and from it are derived the boot's
state machine, the state diagram in docs/ and mkinitrd's list of files.

A hook is a file NAME.py or a folder NAME/ (its helpers beside its
__init__.py) in a hooks folder, and exposes `HOOK = Hook(...)`. Hooks are
imported at boot, so they import only the standard library, `initpy.runtime`
and their own helpers at module level; heavy imports (pyroute2) go inside
the state functions that need them.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Generic, TypeVar, cast

from initpy.runtime.cmdline import BootConfig, Parameter
from initpy.runtime.kernel import Kernel
from initpy.runtime.layout import Manifest
from initpy.runtime.osimage import OsFile, OsPackage
from initpy.runtime.record import field, frozen, mutable
from initpy.runtime.report import Report

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


@frozen
class Fact(Generic[T]):
    """A typed key for a result that one state leaves for later ones."""

    name: str


@mutable
class BootContext:
    """What a state function gets: the seam, the command line, the report."""

    kernel: Kernel
    report: Report
    config: BootConfig = field(default_factory=BootConfig)
    # What the builder packed (None for a tree without a manifest).
    manifest: Manifest | None = None
    _facts: dict[str, object] = field(default_factory=dict)
    # The milestones the states that ran so far provided.
    reached: set[str] = field(default_factory=set)
    # What to stop before the hand-off and before a rescue shell (see on_exit).
    _on_exit: list[Callable[[], None]] = field(default_factory=list)
    # What the hooks do at a rescue, once its report is written (see Hook.on_rescue).
    _on_rescue: list[Callable[[BootContext], None]] = field(default_factory=list)

    def put(self, fact: Fact[T], value: T) -> None:
        self._facts[fact.name] = value

    def get(self, fact: Fact[T], default: T) -> T:
        return cast(T, self._facts.get(fact.name, default))

    def require(self, fact: Fact[T], producer: str) -> T:
        """The fact that `producer`, an earlier state, left; missing, a rescue
        that names both: the order of a hook's states is the hook's to keep."""
        if fact.name not in self._facts:
            raise BootFailure(
                f"no {fact.name}: the {producer} state did not run before this one",
                f"a hook bug: order {producer} before the states that read {fact.name}, "
                "and rebuild the initrd",
            )
        return cast(T, self._facts[fact.name])

    def value(self, parameter: Parameter[T]) -> T:
        return self.config.value(parameter)

    def state_mounted(self) -> bool:
        """Whether /state is mounted (the `state` milestone): reports are copied there."""
        return Milestone.STATE in self.reached

    def say(self, message: str) -> None:
        """A progress line inside the current state (console and kernel log)."""
        self.report.say(message)

    def warn(self, message: str) -> None:
        """A problem that does not stop the boot, kept in the report's warnings."""
        self.report.warn(message)

    def on_exit(self, stop: Callable[[], None]) -> None:
        """Run `stop` before the hand-off and before a rescue shell, before the report.

        For work a state leaves running in a background thread (the modules
        hook's uevent loader): it ends, and says what it did, before the
        report is written and before systemd or the shell takes the console.
        """
        self._on_exit.append(stop)

    def on_rescue(self, tell: Callable[[BootContext], None]) -> None:
        """Run `tell(ctx)` at a rescue, after its report is written, before the shell."""
        self._on_rescue.append(tell)

    def rescuing(self) -> None:
        """The driver's call at a rescue: each on_rescue function once, in order.

        A function must bound its own time (the mail of hooks/services
        gives up after 10 s); what it raises is a console line, never the
        end of the rescue.
        """
        while self._on_rescue:
            tell = self._on_rescue.pop(0)
            try:
                tell(self)
            except Exception as exc:  # noqa: BLE001 - the rescue must go on
                self.say(
                    f"rescue: {getattr(tell, '__name__', 'a hook')} failed: "
                    f"{type(exc).__name__}: {exc}"
                )

    def exiting(self) -> None:
        """The driver's call: run every on_exit function once, the last first."""
        while self._on_exit:
            stop = self._on_exit.pop()
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - the hand-off must go on
                self.warn(f"stopping background work failed: {type(exc).__name__}: {exc}")


# Core facts: results that several hooks use, named here so that no hook
# imports another. DRIVERLESS: set by the modules hook; given "network" or
# "storage", the lines naming the NICs or storage controllers that have no
# driver and how to add one ("" when every one has a driver). The network
# and storage hooks add it to their rescue reasons.
DRIVERLESS: Fact[Callable[[str], str] | None] = Fact("driverless")
# PRELOADED: set by the driver; waits for the modules loaded while Python started
# (initpy.runtime.preload), name -> ms. The modules hook takes them over.
PRELOADED: Fact[Callable[[], dict[str, int]] | None] = Fact("preloaded")

# A state function returns a short detail for the report, or None.
StateFunction = Callable[[BootContext], "str | None"]
# What a hook does at a rescue (BootContext.on_rescue): say why the host
# stopped, elsewhere than on the console (the services hook mails the admin).
RescueFunction = Callable[[BootContext], None]
# What a hook starts before the first state (Hook.on_start): work in the
# background (Kernel.start_thread) that one of its states joins later.
StartFunction = Callable[[BootContext], None]


class Milestone(StrEnum):
    """The core milestones: points of the boot that hooks provide and need.

    Hooks meet only through milestones, never through each other's state
    names. A hook may also provide a milestone of its own (any string);
    another hook that needs it then needs that hook.
    """

    MODULES = "modules"  # the initrd's kernel modules are loaded
    OS = "os"  # the OS's /usr is in place (its image mounted, hooks/os_image.py)
    STATE = "state"  # /state is mounted (the driver keeps report copies there)
    MACHINES = "machines"  # the machines storage is mounted under /build/machines
    RESTORED = "restored"  # the seed is fed, the saved host keys in place, new ones on the way
    HOSTNAME = "hostname"  # the host has its name
    NETWORK = "network"  # br0 holds the lease, br1 and the NAT are up


@frozen
class State:
    """One step of the boot, run once, in order.

    A hook's states run in the order it declares them. Across hooks, a
    state runs after the states that provide what it `needs` (a milestone
    no chosen hook provides is an error) and what it `wants` (ignored when
    no chosen hook provides it).
    """

    name: str
    run: StateFunction
    description: str
    provides: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Milestones compare and print as plain strings (a Milestone is one).
        for name in ("provides", "needs", "wants"):
            object.__setattr__(self, name, tuple(str(m) for m in getattr(self, name)))


@frozen
class Hook:
    """One feature of the init, as data plus the functions it runs."""

    name: str
    description: str
    states: tuple[State, ...] = ()
    binaries: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # "SRC" or "SRC:DST", host paths
    parameters: tuple[Parameter[object], ...] = ()
    # Run at any rescue of a boot that chose this hook, whatever state
    # failed (the driver registers them with BootContext.on_rescue). Each
    # checks for itself what it needs (ctx.reached, ctx.value) and bounds
    # its own time.
    on_rescue: tuple[RescueFunction, ...] = ()
    # Run once before the first state (the driver's run), in the order of the
    # hooks: start early, join late. Each returns at once, and cannot read a
    # parameter yet (the command line comes later). Importing a hook file
    # starts nothing: the builder, the walk and the tests import it too.
    on_start: tuple[StartFunction, ...] = ()
    # What the OS after the hand-off gets from this hook and must hold for
    # it (only with --rootfs; initpy.builder.rootfs).
    os_files: tuple[OsFile, ...] = ()
    os_packages: tuple[OsPackage, ...] = ()


@frozen
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


def build_registry(selected: Sequence[Hook], known: Iterable[Hook] = ()) -> Registry:
    """Order the states of the `selected` hooks by their milestones.

    `known` are all the hooks that exist, chosen or not: a state that
    `needs` a milestone is told which of them provides it, and a `wants`
    that no hook at all provides is a typo, an error. Among states that may
    run, the one that continues the hook that ran last goes first, then the
    earliest in `selected`: a hook's chain is not interleaved without need.
    """
    declared: dict[str, str] = {}
    states: list[State] = []
    names: dict[str, Hook] = {}
    provider: dict[str, State] = {}
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
            for milestone in state.provides:
                if milestone in provider:
                    raise HookError(
                        f"milestone {milestone!r} is provided twice: by hook "
                        f"{declared[provider[milestone].name]!r} (state "
                        f"{provider[milestone].name!r}) and by hook {hook.name!r} "
                        f"(state {state.name!r})"
                    )
                provider[milestone] = state
    elsewhere: dict[str, list[str]] = {}
    for hook in known:
        for state in hook.states:
            for milestone in state.provides:
                elsewhere.setdefault(milestone, []).append(hook.name)
    position = {s.name: i for i, s in enumerate(states)}
    hook_of = {s.name: declared[s.name] for s in states}
    edges: dict[str, set[str]] = {s.name: set() for s in states}  # name -> must come after it
    for hook in selected:
        for first, second in zip(hook.states, hook.states[1:], strict=False):
            edges[first.name].add(second.name)
    for state in states:
        owner = declared[state.name]
        for milestone in state.needs:
            if milestone not in provider:
                others = sorted(set(elsewhere.get(milestone, [])))
                raise HookError(
                    f"hook {owner!r}: state {state.name!r} needs milestone {milestone!r}, "
                    "which no chosen hook provides"
                    + (
                        f"; add hook {', '.join(others)}"
                        if others
                        else "; no hook at all provides it"
                    )
                )
        for milestone in (*state.needs, *state.wants):
            source = provider.get(milestone)
            if source is None:
                if milestone not in elsewhere and milestone not in set(Milestone):
                    raise HookError(
                        f"hook {owner!r}: state {state.name!r} wants milestone "
                        f"{milestone!r}, which no hook provides (core milestones: "
                        + ", ".join(m.value for m in Milestone)
                        + ")"
                    )
                continue
            if source.name == state.name:
                raise HookError(
                    f"hook {owner!r}: state {state.name!r} needs the milestone "
                    f"{milestone!r} it provides itself"
                )
            edges[source.name].add(state.name)
    # Kahn's algorithm; among the ready states, the last state's hook goes on.
    indegree = {name: 0 for name in edges}
    for targets in edges.values():
        for target in targets:
            indegree[target] += 1
    ready = {n for n, d in indegree.items() if d == 0}
    order: list[str] = []
    while ready:
        last_hook = hook_of[order[-1]] if order else None
        name = min(ready, key=lambda n: (hook_of[n] != last_hook, position[n]))
        ready.discard(name)
        order.append(name)
        for target in edges[name]:
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.add(target)
    if len(order) != len(states):
        stuck = sorted(n for n, d in indegree.items() if d > 0)
        hooks = sorted({declared[n] for n in stuck})
        raise HookError(
            "the hooks' milestones make a cycle among states "
            + ", ".join(stuck)
            + " (hooks: "
            + ", ".join(hooks)
            + ")"
        )
    return Registry(tuple(selected), (*CORE_STATES, *order, HANDOFF))


def hooks_package(folder: str) -> str:
    """The import package a hooks folder is loaded as.

    A folder named `hooks` is the package `hooks` (the repository's, and
    the initrd's /usr/lib/initpy/hooks), so that tests import its helpers
    by that name and get the same modules as the boot; any other folder
    gets a package of its own. Hook files import their helpers relatively.
    The package is registered in sys.modules when new.
    """
    folder = os.path.realpath(folder)
    base = os.path.basename(folder)
    candidates = [base] if base == "hooks" else []
    candidates.append("initpy_hooks_" + "".join(c if c.isalnum() else "_" for c in folder))
    for name in candidates:
        loaded = sys.modules.get(name)
        if loaded is None:
            spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            spec.submodule_search_locations = [folder]
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            return name
        paths = [os.path.realpath(p) for p in getattr(loaded, "__path__", [])]
        if folder in paths:
            return name
    raise HookError(f"hooks folder {folder}: its package name is taken by another folder")


def hook_entries(folder: str) -> list[str]:
    """The hooks of a folder: NAME.py files and NAME/ packages (not _private ones)."""
    found = []
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(("_", ".")):
            continue
        path = os.path.join(folder, entry)
        if entry.endswith(".py") and os.path.isfile(path):
            found.append(entry[:-3])
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            found.append(entry)
    return found


def _changed_since(path: str, since_ns: int) -> bool:
    """Was a Python file of the hook at `path` (a file or a folder) modified since then?"""
    files = [path + ".py"] if os.path.isfile(path + ".py") else []
    if os.path.isdir(path):
        for folder, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    return any(os.stat(name).st_mtime_ns >= since_ns for name in files)


def load_hook(folder: str, entry: str) -> Hook:
    """Import one hook (folder/ENTRY.py or folder/ENTRY/) and return its `HOOK`.

    Imported once; imported again only when its files changed since (a
    builder or a test that rewrites a hook in the same process). A first
    import looks at no file times: PID 1 imports each hook once.
    """
    name = f"{hooks_package(folder)}.{entry}"
    loaded = sys.modules.get(name)
    # A module imported by name (a test's `from hooks import network`) is taken as it is.
    since = getattr(loaded, "__initpy_imported_ns__", None)
    if since is not None and _changed_since(os.path.join(folder, entry), since):
        for stale in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[stale]
        importlib.invalidate_caches()
        loaded = None
    imported_ns = time.time_ns()
    module = importlib.import_module(name)
    if loaded is None:
        module.__initpy_imported_ns__ = imported_ns  # type: ignore[attr-defined]
    hook = getattr(module, "HOOK", None)
    if not isinstance(hook, Hook):
        raise HookError(f"{os.path.join(folder, entry)}: defines no HOOK = Hook(...)")
    return hook


def discover_with_paths(folders: Sequence[str]) -> dict[str, tuple[Hook, str]]:
    """Every hook in the folders, by name, with the .py file or the folder
    that defines it (what mkinitrd packs); a later folder overrides an earlier."""
    found: dict[str, tuple[Hook, str]] = {}
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for entry in hook_entries(folder):
            hook = load_hook(folder, entry)
            path = os.path.join(folder, entry)
            found[hook.name] = (hook, path if os.path.isdir(path) else f"{path}.py")
    return found


def discover(folders: Sequence[str]) -> dict[str, Hook]:
    """Every hook in the folders, by name; a later folder overrides an earlier."""
    return {name: hook for name, (hook, _path) in discover_with_paths(folders).items()}


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
