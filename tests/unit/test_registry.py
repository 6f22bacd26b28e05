"""The hook registry: ordering, errors that name the hooks, discovery."""

from __future__ import annotations

import os

import pytest

from initpy.runtime.hook import (
    Hook,
    HookError,
    Milestone,
    State,
    build_registry,
    discover,
    select,
)


def state(
    name: str,
    provides: tuple[str, ...] = (),
    needs: tuple[str, ...] = (),
    wants: tuple[str, ...] = (),
) -> State:
    return State(name, lambda ctx: None, f"does {name}", provides, needs, wants)


def hook(name: str, *states: State, **needs: tuple[str, ...]) -> Hook:
    return Hook(name, f"the {name} hook", tuple(states), **needs)  # type: ignore[arg-type]


def test_order_follows_milestones_and_wraps_core_states() -> None:
    net = hook("net", state("dhcp", needs=("mounted",)), state("bridges", provides=("up",)))
    disk = hook("disk", state("mount", needs=("loaded",), provides=("mounted",)))
    mods = hook("mods", state("modules", provides=("loaded",)))
    late = hook("late", state("late", needs=("up",)))
    registry = build_registry([late, net, disk, mods])
    assert registry.order == (
        "early_mounts",
        "cmdline",
        "modules",
        "mount",
        "dhcp",
        "bridges",
        "late",
        "handoff",
    )


def test_a_hook_keeps_its_declared_order_and_is_not_interleaved() -> None:
    registry = build_registry([hook("a", state("x"), state("y")), hook("b", state("z"))])
    assert registry.order[2:5] == ("x", "y", "z")
    # Once b is ready after x, a's chain still goes on first.
    registry = build_registry(
        [
            hook("a", state("x", provides=("m",)), state("y")),
            hook("b", state("z", needs=("m",))),
        ]
    )
    assert registry.order[2:5] == ("x", "y", "z")


def test_wants_orders_after_a_provider_and_is_dropped_without_one() -> None:
    storage = hook("storage", state("mount", provides=("state",)))
    net = hook("net", state("dhcp", wants=("state",)))
    assert build_registry([net, storage]).order[2:4] == ("mount", "dhcp")
    # The storage hook not chosen: dhcp still boots.
    registry = build_registry([net], known=[storage, net])
    assert registry.order == ("early_mounts", "cmdline", "dhcp", "handoff")


def test_a_need_nobody_provides_is_an_error_naming_who_could() -> None:
    storage = hook("storage", state("mount", provides=("state",)))
    keys = hook("keys", state("restore", needs=("state",)))
    with pytest.raises(
        HookError,
        match="hook 'keys': state 'restore' needs milestone "
        "'state', which no chosen hook provides; add hook "
        "storage",
    ):
        build_registry([keys], known=[storage, keys])
    with pytest.raises(HookError, match="no hook at all provides it"):
        build_registry([hook("alpha", state("x", needs=("nowhere",)))])


def test_a_want_of_a_milestone_no_hook_has_is_a_typo() -> None:
    with pytest.raises(HookError, match="wants milestone 'netwrk', which no hook provides"):
        build_registry([hook("alpha", state("x", wants=("netwrk",)))])
    # A core milestone may be wanted with no provider at all: the want is dropped.
    registry = build_registry([hook("alpha", state("x", wants=(Milestone.NETWORK,)))])
    assert registry.order == ("early_mounts", "cmdline", "x", "handoff")


def test_a_milestone_is_provided_once() -> None:
    with pytest.raises(HookError, match="milestone 'up' is provided twice: by hook 'a'"):
        build_registry(
            [hook("a", state("x", provides=("up",))), hook("b", state("y", provides=("up",)))]
        )


def test_cycle_names_states_and_hooks() -> None:
    a = hook("alpha", state("x", needs=("b",), provides=("a",)))
    b = hook("beta", state("y", needs=("a",), provides=("b",)))
    with pytest.raises(HookError, match=r"cycle among states x, y \(hooks: alpha, beta\)"):
        build_registry([a, b])


def test_duplicate_state_names_both_hooks() -> None:
    with pytest.raises(HookError, match="declared twice: by hook 'a' and by hook 'b'"):
        build_registry([hook("a", state("x")), hook("b", state("x"))])


def test_duplicate_hook_and_core_state_names() -> None:
    with pytest.raises(HookError, match="two hooks are named 'a'"):
        build_registry([hook("a"), hook("a")])
    with pytest.raises(HookError, match="the driver owns"):
        build_registry([hook("a", state("handoff"))])


def test_needs_are_gathered_from_every_hook() -> None:
    a = hook("a", binaries=("nft", "ip"), modules=("bridge",), files=("/etc/x",))
    b = hook("b", binaries=("nft",), modules=("bridge", "btrfs"))
    registry = build_registry([a, b])
    assert registry.binaries() == {"nft": ["a", "b"], "ip": ["a"]}
    assert registry.modules() == ["bridge", "btrfs"]
    assert registry.files() == ["/etc/x"]


def test_discover_user_folder_overrides_and_select(tmp_path: os.PathLike[str]) -> None:
    base, user = os.path.join(tmp_path, "base"), os.path.join(tmp_path, "user")
    for folder, text in ((base, "first"), (user, "second")):
        os.makedirs(folder)
        with open(os.path.join(folder, "greet.py"), "w") as f:
            f.write(
                "from initpy.runtime.hook import Hook, State\n"
                f"HOOK = Hook('greet', '{text}', (State('hello', lambda ctx: '{text}', 'hi'),))\n"
            )
    found = discover([base, user])
    assert found["greet"].description == "second"
    assert select(found, ["greet"])[0].states[0].name == "hello"
    with pytest.raises(HookError, match="unknown hook\\(s\\) nope; available: greet"):
        select(found, ["nope"])


def test_a_hook_file_without_hook_is_an_error(tmp_path: os.PathLike[str]) -> None:
    with open(os.path.join(tmp_path, "broken.py"), "w") as f:
        f.write("X = 1\n")
    with pytest.raises(HookError, match="defines no HOOK"):
        discover([str(tmp_path)])


def test_a_hook_may_be_a_folder_with_its_helpers(tmp_path: os.PathLike[str]) -> None:
    folder = os.path.join(tmp_path, "extra", "greeter")
    os.makedirs(folder)
    with open(os.path.join(folder, "words.py"), "w") as f:
        f.write("WORD = 'hello'\n")
    with open(os.path.join(folder, "__init__.py"), "w") as f:
        f.write(
            "from initpy.runtime.hook import Hook, State\n"
            "from .words import WORD\n"
            "HOOK = Hook('greeter', WORD, (State('greet', lambda ctx: WORD, 'hi'),))\n"
        )
    found = discover([os.path.join(tmp_path, "extra")])
    assert found["greeter"].description == "hello"
