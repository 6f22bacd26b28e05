"""A boot with disks on the fake kernel, shared by the storage, persist and buildhost tests.

The storage states with their real neighbours (the modules hook provides the
milestone find_disks needs; persist and the build host come after), the two
standard disks, and what such a boot mounted, ran and wrote in /etc.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import cast

from hooks import buildhost, modules, persist, storage
from initpy.devtools.fake import FakeKernel, HandedOff, Rebooted
from initpy.devtools.walk import fake_ssh_keygen
from initpy.runtime.hook import Hook
from tests.unit.conftest import make_executable, run_boot
from tests.unit.test_labels import btrfs_image, ext_image

HOOKS = (modules.HOOK, storage.HOOK, persist.HOOK, buildhost.HOOK)


def boot(k: FakeKernel, hooks: Sequence[Hook] = HOOKS) -> HandedOff | Rebooted:
    ended = run_boot(k, hooks)
    assert isinstance(ended, HandedOff | Rebooted)
    return ended


def standard_disks(k: FakeKernel) -> None:
    k.add_block_device("vda", ext_image("buildos.state"), serial="state0")
    k.add_block_device("vdb", btrfs_image("buildos.machines"), serial="machines0")


def next_boot(k: FakeKernel) -> FakeKernel:
    """The same disks and /state (the fake root), a fresh RAM root otherwise."""
    second = FakeKernel(root=k.root)
    make_executable(second, "/sbin/init")
    second.commands["ssh-keygen"] = fake_ssh_keygen(second)
    second.block_devices = k.block_devices
    second.owners = {p: o for p, o in k.owners.items() if p.split("/")[1] == "state"}
    with open(second.path("/proc/self/mounts"), "w") as f:
        f.write("rootfs / rootfs rw 0 0\n")
    return second


def rescue_text(k: FakeKernel) -> str:
    return "\n".join(line for line in k.console_lines if line.startswith("initpy: rescue"))


def mounts(k: FakeKernel) -> list[tuple[object, ...]]:
    return [
        c[1:]
        for c in k.syscalls("mount")
        if c[2] != "/run"
        and str(c[2]).startswith("/")
        and c[3] != "proc"
        and c[3] != "sysfs"
        and c[3] not in ("devtmpfs", "devpts")
    ]


def commands_run(k: FakeKernel) -> list[tuple[str, ...]]:
    """The argv of every command the boot ran (the fake kernel records it as a tuple)."""
    return [cast(tuple[str, ...], c[1]) for c in k.syscalls("run")]


def etc_text(k: FakeKernel, name: str) -> str:
    with open(k.path(f"/etc/{name}")) as f:
        return f.read()


def write_etc(k: FakeKernel, name: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(k.path("/etc"), exist_ok=True)
    with open(k.path(f"/etc/{name}"), "w") as f:
        f.write(text)
    os.chmod(k.path(f"/etc/{name}"), mode)
