"""The hook registry: ordering, errors that name the hooks, discovery."""

from __future__ import annotations

import os

import pytest

from initpy.hook import Hook, HookError, State, build_registry, discover, select


def state(name: str, after: tuple[str, ...] = (), before: tuple[str, ...] = ()) -> State:
    return State(name, lambda ctx: None, f"does {name}", after, before)


def hook(name: str, *states: State, **needs: tuple[str, ...]) -> Hook:
    return Hook(name, f"the {name} hook", tuple(states), **needs)  # type: ignore[arg-type]


def test_order_follows_after_and_before_and_wraps_core_states() -> None:
    net = hook("net", state("dhcp", after=("mount",)), state("bridges", after=("dhcp",)))
    disk = hook("disk", state("mount", after=("modules",)))
    mods = hook("mods", state("modules"), state("late", before=("handoff",), after=("bridges",)))
    registry = build_registry([net, disk, mods])
    assert registry.order == (
        "early_mounts", "cmdline", "modules", "mount", "dhcp", "bridges", "late", "handoff",
    )


def test_ties_keep_declaration_order() -> None:
    registry = build_registry([hook("a", state("x"), state("y")), hook("b", state("z"))])
    assert registry.order[2:5] == ("x", "y", "z")


def test_before_moves_a_state_earlier() -> None:
    registry = build_registry([hook("a", state("x")), hook("b", state("z", before=("x",)))])
    assert registry.order[2:4] == ("z", "x")


def test_cycle_names_states_and_hooks() -> None:
    a = hook("alpha", state("x", after=("y",)))
    b = hook("beta", state("y", after=("x",)))
    with pytest.raises(HookError, match=r"cycle among states x, y \(hooks: alpha, beta\)"):
        build_registry([a, b])


def test_unknown_reference_names_the_hook() -> None:
    with pytest.raises(HookError, match="hook 'alpha': state 'x' is to run after 'nowhere'"):
        build_registry([hook("alpha", state("x", after=("nowhere",)))])
    with pytest.raises(HookError, match="run before 'nowhere'"):
        build_registry([hook("alpha", state("x", before=("nowhere",)))])


def test_reference_to_a_known_but_unselected_hook_is_dropped() -> None:
    storage = hook("storage", state("mount"))
    net = hook("net", state("dhcp", after=("mount",)))
    registry = build_registry([net], known=[storage, net])
    assert registry.order == ("early_mounts", "cmdline", "dhcp", "handoff")


def test_duplicate_state_names_both_hooks() -> None:
    with pytest.raises(HookError, match="declared twice: by hook 'a' and by hook 'b'"):
        build_registry([hook("a", state("x")), hook("b", state("x"))])


def test_duplicate_hook_and_core_state_names() -> None:
    with pytest.raises(HookError, match="two hooks are named 'a'"):
        build_registry([hook("a"), hook("a")])
    with pytest.raises(HookError, match="the driver owns"):
        build_registry([hook("a", state("handoff"))])
    with pytest.raises(HookError, match="driver runs first"):
        build_registry([hook("a", state("x", before=("cmdline",)))])


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
                "from initpy.hook import Hook, State\n"
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


def test_states_of_hooks_left_out_of_the_initrd_resolve() -> None:
    # mkinitrd packs only the chosen hook files, and lists the others' states.
    net = hook("net", state("dhcp"))
    late = hook("late", state("build_user", after=("dhcp",)))
    registry = build_registry([late], known=[], absent_states=["dhcp"])
    assert registry.order == ("early_mounts", "cmdline", "build_user", "handoff")
    assert build_registry([net, late]).order[2:4] == ("dhcp", "build_user")
