"""The storage hook on the fake kernel: waiting, mounting, fstab, rescue reasons, state.

Disks are made in the fake root's /sys exactly as the kernel lays them out
(/sys/class/block/<name> a symlink into /sys/devices/..., partitions inside
their disk's folder), with crafted superblock images behind /dev/<name>.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import cast

import pytest

from hooks import buildhost, modules, persist
from hooks import storage as MODULE
from hooks.storage.blockdev import scan, wait_for_devices
from initpy.devtools.fake import FakeKernel, HandedOff, Rebooted
from initpy.runtime.hook import Hook
from initpy.runtime.kernel import Completed
from initpy.runtime.uevent import Uevent
from tests.unit.conftest import make_executable, read_report, run_boot
from tests.unit.test_labels import btrfs_image, ext_image, xfs_image

storage = MODULE.HOOK
# The storage states with their real neighbours: the modules hook provides
# the milestone find_disks needs, persist and the build host come after.
HOOKS = (modules.HOOK, storage, persist.HOOK, buildhost.HOOK)

_minor = [0]


def add_disk(
    k: FakeKernel,
    name: str,
    image: bytes,
    *,
    parent: str | None = None,
    size: int = 1 << 30,
    model: str | None = None,
    rotational: str = "1",
    serial: str = "",
) -> None:
    """A block device as sysfs shows it, with `image` as its first bytes."""
    folder = f"sys/devices/pci0000:00/virtio{len(name)}/block/"
    folder += f"{parent}/{name}" if parent else name
    os.makedirs(k.path("/" + folder), exist_ok=True)
    _minor[0] += 1

    def put(relative: str, text: str) -> None:
        path = k.path(f"/{folder}/{relative}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")

    put("size", str(size // 512))
    put("dev", f"254:{_minor[0]}")
    if parent:
        put("partition", "1")
    else:
        put("queue/rotational", rotational)
        if model is None:
            put("device/modalias", "virtio:d00000002v00001AF4")
        else:
            put("device/model", model)
        if serial:
            put("serial", serial)
    os.makedirs(k.path("/sys/class/block"), exist_ok=True)
    os.symlink(f"../../{folder.removeprefix('sys/')}", k.path(f"/sys/class/block/{name}"))
    k.block_devices[f"/dev/{name}"] = image


def arrives(k: FakeKernel, name: str, image: bytes, **kw: object) -> Callable[[], list[Uevent]]:
    """A uevent step: the disk appears in /sys, and the kernel says so."""

    def step() -> list[Uevent]:
        add_disk(k, name, image, **kw)  # type: ignore[arg-type]
        return [Uevent("add", f"/devices/virtual/block/{name}", "block", {"DEVNAME": name})]

    return step


def boot(k: FakeKernel, hooks: Sequence[Hook] = HOOKS) -> HandedOff | Rebooted:
    ended = run_boot(k, hooks)
    assert isinstance(ended, HandedOff | Rebooted)
    return ended


def rescue_text(k: FakeKernel) -> str:
    return "\n".join(line for line in k.console_lines if line.startswith("initpy: rescue"))


def fake_ssh_keygen(k: FakeKernel) -> Callable[[Sequence[str]], Completed]:
    def keygen(argv: Sequence[str]) -> Completed:
        path = argv[argv.index("-f") + 1]
        kind = argv[argv.index("-t") + 1]
        with open(k.path(path), "w") as f:
            f.write(
                f"-----BEGIN OPENSSH PRIVATE KEY-----\n{kind} {len(k.calls)}\n"
                "-----END OPENSSH PRIVATE KEY-----\n"
            )
        with open(k.path(path + ".pub"), "w") as f:
            f.write(f"ssh-{kind} AAAA{len(k.calls)} root@buildos\n")
        return Completed(tuple(argv), 0, "", "")

    return keygen


@pytest.fixture
def k(kernel: FakeKernel) -> FakeKernel:
    kernel.commands["ssh-keygen"] = fake_ssh_keygen(kernel)
    return kernel


def standard_disks(k: FakeKernel) -> None:
    add_disk(k, "vda", ext_image("buildos.state"), serial="state0")
    add_disk(k, "vdb", btrfs_image("buildos.machines"), serial="machines0")


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


# -- the happy paths ----------------------------------------------------------------------


def test_state_and_single_machines_disk_boot_to_handoff_with_fstab(k: FakeKernel) -> None:
    standard_disks(k)
    assert isinstance(boot(k), HandedOff)
    assert mounts(k) == [
        ("/dev/vda", "/state", "ext4", 0, ""),
        ("/dev/vdb", "/build/machines", "btrfs", 0, ""),
        ("tmpfs", "/build/tftp", "tmpfs", 6, "size=10%,mode=0755,uid=1100,gid=1100"),
    ]
    with open(k.path("/etc/fstab")) as f:
        fstab = [ln for ln in f.read().splitlines() if ln and not ln.startswith("#")]
    assert fstab == [
        "LABEL=buildos.state /state ext4 defaults,nofail 0 0",
        "LABEL=buildos.machines /build/machines btrfs defaults,nofail 0 0",
        "tmpfs /build/tftp tmpfs size=10%,mode=0755,uid=1100,gid=1100,nosuid,nodev 0 0",
    ]
    # /state mounted: the report is kept there.
    with open(k.path("/state/initpy/reports/report.json.0")) as f:
        assert json.load(f)["outcome"] == "handoff"
    assert "initpy: find_disks: ok" in "\n".join(k.console_lines)


def test_named_machines_disks_mount_below_build_machines(k: FakeKernel) -> None:
    add_disk(k, "vda", ext_image("buildos.state"))
    add_disk(k, "vdb", btrfs_image("buildos.machines.fast", fsid="a" * 32))
    add_disk(k, "vdc", btrfs_image("buildos.machines.big", fsid="b" * 32))
    assert isinstance(boot(k), HandedOff)
    targets = {c[1]: c[0] for c in mounts(k)}
    assert targets["/build/machines/big"] == "/dev/vdc"
    assert targets["/build/machines/fast"] == "/dev/vdb"
    with open(k.path("/etc/fstab")) as f:
        text = f.read()
    assert "LABEL=buildos.machines.big /build/machines/big btrfs" in text
    assert "LABEL=buildos.machines.fast /build/machines/fast btrfs" in text


def test_two_device_btrfs_waits_for_both_and_names_both_to_the_mount(k: FakeKernel) -> None:
    add_disk(k, "vda", ext_image("buildos.state"))
    add_disk(k, "vdb", btrfs_image("buildos.machines", devid=1, num_devices=2))
    k.uevent_script = [arrives(k, "vdc", btrfs_image("buildos.machines", devid=2, num_devices=2))]
    assert isinstance(boot(k), HandedOff)
    machines = [c for c in mounts(k) if c[1] == "/build/machines"]
    assert machines == [
        ("/dev/vdb", "/build/machines", "btrfs", 0, "device=/dev/vdb,device=/dev/vdc")
    ]
    # Members of one filesystem share its label: that is not a duplicate.
    assert rescue_text(k) == ""


def test_partitions_are_probed_like_disks(k: FakeKernel) -> None:
    add_disk(k, "sda", bytes(4096), model="Samsung SSD 870", rotational="0")
    add_disk(k, "sda1", ext_image("buildos.state"), parent="sda")
    add_disk(k, "sda2", btrfs_image("buildos.machines"), parent="sda")
    assert isinstance(boot(k), HandedOff)
    assert [c[0] for c in mounts(k)][:2] == ["/dev/sda1", "/dev/sda2"]
    disks = read_report(k)["disks"]
    assert isinstance(disks, list)
    assert (
        "/dev/sda1, 1.0 GiB, partition of /dev/sda, model 'Samsung SSD 870', "
        "non-rotational, ext4, label 'buildos.state'" in disks
    )
    assert (
        "/dev/sda, 1.0 GiB, model 'Samsung SSD 870', non-rotational, partitions sda1, sda2" in disks
    )


# -- waiting ---------------------------------------------------------------------------------


def test_waiting_stops_at_the_uevent_that_completes_the_set_without_sleeping(k: FakeKernel) -> None:
    add_disk(k, "vda", ext_image("buildos.state"))
    k.uevent_script = [
        [Uevent("add", "/devices/virtual/net/eth0", "net")],  # not a disk: no rescan
        arrives(k, "vdb", btrfs_image("buildos.machines")),
        arrives(k, "vdc", xfs_image("never-seen")),  # after the set is complete
    ]
    start = k.clock
    assert isinstance(boot(k), HandedOff)
    assert k.syscalls("sleep") == []
    assert k.clock - start < 1.0  # the fake clock only moves on a timeout
    assert len(k.uevent_script) == 0  # the late drain took the third step too
    assert "3 block device(s)" in " ".join(k.console_lines)


def test_missing_labels_wait_the_whole_timeout_then_rescue(k: FakeKernel) -> None:
    k.cmdline = "initpy.timeout.disks=7"
    with open(k.path("/proc/cmdline"), "w") as f:
        f.write(k.cmdline + "\n")
    add_disk(k, "vda", ext_image("buildos.state"))
    start = k.clock
    assert isinstance(boot(k), Rebooted)
    assert 7.0 <= k.clock - start < 8.0
    assert "after waiting 7.0 s" in rescue_text(k)


def test_without_a_uevent_socket_it_polls_sysfs(k: FakeKernel) -> None:
    k.failures = {"uevents": {"netlink": 97}}
    standard_disks(k)
    assert isinstance(boot(k), HandedOff)
    assert any("polled /sys/class/block" in line for line in k.console_lines)


def test_polling_finds_a_late_disk(k: FakeKernel) -> None:
    k.failures = {"uevents": {"netlink": 97}}
    add_disk(k, "vda", ext_image("buildos.state"))
    original_sleep = k.sleep

    def sleep(seconds: float) -> None:
        original_sleep(seconds)
        if len(k.syscalls("sleep")) == 3:
            add_disk(k, "vdb", btrfs_image("buildos.machines"))

    k.sleep = sleep  # type: ignore[method-assign]
    result = wait_for_devices(k, MODULE.required_present, 10.0)
    assert result.satisfied and result.polled and len(result.devices) == 2


def test_an_empty_device_and_a_garbage_one_are_listed_not_fatal(k: FakeKernel) -> None:
    add_disk(k, "loop0", b"", size=0)
    add_disk(k, "vda", b"\xff" * 70000)
    add_disk(k, "vdb", btrfs_image("buildos.machines")[:0x10100])  # truncated superblock
    names = [(d.name, d.fstype) for d in scan(k)]
    assert names == [("vda", ""), ("vdb", "")]


# -- the labelling rescue -------------------------------------------------------------------


def test_blank_disks_rescue_with_the_listing_and_the_commands(k: FakeKernel) -> None:
    add_disk(k, "vda", bytes(4096), size=2 << 30, serial="blank-a")
    add_disk(k, "vdb", bytes(4096), size=8 << 30, model="QEMU HARDDISK", rotational="0")
    assert isinstance(boot(k), Rebooted)
    text = rescue_text(k)
    assert "no disk labelled buildos.state (for /state)" in text
    assert "no disk labelled buildos.machines or buildos.machines.<name>" in text
    assert (
        "  /dev/vda, 2.0 GiB, model 'virtio disk', serial 'blank-a', rotational, "
        "no filesystem initpy knows"
    ) in text
    assert "  /dev/vdb, 8.0 GiB, model 'QEMU HARDDISK', non-rotational" in text
    for command in (
        "mkfs.ext4 -L buildos.state /dev/sdX",
        "mkfs.btrfs -L buildos.machines -m single /dev/sdY",
        "e2label /dev/sdX buildos.state",
        "btrfs filesystem label /dev/sdY buildos.machines",
        "leave this shell (exit or Ctrl-D) to reboot",
    ):
        assert command in text
    report = read_report(k)
    assert report["outcome"] == "rescue"
    assert "no disk labelled buildos.state" in str(report["reason"])
    # Nothing was mounted, and /state never claimed.
    assert mounts(k) == []
    assert not os.path.exists(k.path("/state/initpy"))


def test_no_disks_at_all_says_the_driver_may_be_missing(k: FakeKernel) -> None:
    assert isinstance(boot(k), Rebooted)
    assert "no block device appeared" in rescue_text(k)


def test_only_the_machines_disk_missing(k: FakeKernel) -> None:
    add_disk(k, "vda", ext_image("buildos.state"))
    boot(k)
    text = rescue_text(k)
    assert "no disk labelled buildos.machines" in text
    assert "no disk labelled buildos.state" not in text
    assert "ext4, label 'buildos.state'" in text


# -- the other rescue reasons ------------------------------------------------------------------


def test_machines_disk_that_is_not_btrfs(k: FakeKernel) -> None:
    add_disk(k, "vda", ext_image("buildos.state"))
    add_disk(k, "vdb", ext_image("buildos.machines"))
    start = k.clock
    assert isinstance(boot(k), Rebooted)
    text = rescue_text(k)
    assert (
        "/dev/vdb is labelled buildos.machines but holds ext4; machines disks must be btrfs" in text
    )
    assert "mkfs.btrfs -f -L buildos.machines -m single /dev/vdb" in text
    assert k.clock - start < 1.0  # the labels were there: no waiting for the deadline


def test_single_and_named_forms_together(k: FakeKernel) -> None:
    add_disk(k, "vda", ext_image("buildos.state"))
    add_disk(k, "vdb", btrfs_image("buildos.machines", fsid="a" * 32))
    add_disk(k, "vdc", btrfs_image("buildos.machines.x", fsid="b" * 32))
    boot(k)
    text = rescue_text(k)
    assert (
        "both buildos.machines (/dev/vdb) and buildos.machines.<name> (/dev/vdc as "
        "buildos.machines.x) are present; use one form"
    ) in text
    assert "btrfs filesystem label /dev/vdb buildos.machines.NAME" in text


def test_two_filesystems_with_one_label_name_both_devices(k: FakeKernel) -> None:
    add_disk(k, "vda", ext_image("buildos.state", uuid="00000000-0000-0000-0000-000000000001"))
    add_disk(k, "vdb", btrfs_image("buildos.machines"))
    add_disk(k, "vdc", ext_image("buildos.state", uuid="00000000-0000-0000-0000-000000000002"))
    boot(k)
    text = rescue_text(k)
    assert "2 filesystems are labelled buildos.state: /dev/vda (ext4, uuid " in text
    assert "/dev/vdc (ext4, uuid 00000000-0000-0000-0000-000000000002)" in text


def test_two_btrfs_filesystems_with_one_label(k: FakeKernel) -> None:
    add_disk(k, "vda", ext_image("buildos.state"))
    add_disk(k, "vdb", btrfs_image("buildos.machines", fsid="a" * 32))
    add_disk(k, "vdc", btrfs_image("buildos.machines", fsid="b" * 32))
    boot(k)
    assert "2 filesystems are labelled buildos.machines: /dev/vdb" in rescue_text(k)
    assert "/dev/vdc (btrfs" in rescue_text(k)


def test_a_copied_btrfs_device_is_not_taken_for_a_second_member(k: FakeKernel) -> None:
    add_disk(k, "vda", ext_image("buildos.state"))
    add_disk(k, "vdb", btrfs_image("buildos.machines", devid=1, num_devices=2))
    add_disk(k, "vdc", btrfs_image("buildos.machines", devid=1, num_devices=2))
    boot(k)
    text = rescue_text(k)
    assert "/dev/vdb, /dev/vdc are copies of the same btrfs device" in text


@pytest.mark.parametrize("name", ["", "..", ".hidden", "a/b", "-x", "has space"])
def test_a_name_that_is_not_a_safe_path_component(k: FakeKernel, name: str) -> None:
    add_disk(k, "vda", ext_image("buildos.state"))
    add_disk(k, "vdb", btrfs_image(f"buildos.machines.{name}"))
    boot(k)
    text = rescue_text(k)
    assert f"/dev/vdb is labelled buildos.machines.{name}, but {name!r} is not a safe" in text
    assert not any(str(c[1]).startswith("/build/machines") for c in mounts(k))


def test_an_incomplete_multi_device_btrfs_names_what_is_there(k: FakeKernel) -> None:
    k.cmdline = "initpy.timeout.disks=2"
    with open(k.path("/proc/cmdline"), "w") as f:
        f.write(k.cmdline + "\n")
    add_disk(k, "vda", ext_image("buildos.state"))
    add_disk(k, "vdb", btrfs_image("buildos.machines", devid=2, num_devices=3))
    boot(k)
    assert (
        "btrfs buildos.machines (fsid 11111111-2222-3333-4444-555555555555) has 1 of its "
        "3 devices after 2.0 s: /dev/vdb (devid 2)" in rescue_text(k)
    )


def test_a_failed_mount_is_a_rescue_with_the_check_command(k: FakeKernel) -> None:
    standard_disks(k)
    k.failures = {"mount": {"/build/machines": 22}}
    boot(k)
    text = rescue_text(k)
    assert "cannot mount /dev/vdb (btrfs, label buildos.machines) on /build/machines" in text
    assert "btrfs check --readonly /dev/vdb" in text


# -- /state: seed and host keys ------------------------------------------------------------------


def _state_files(k: FakeKernel) -> dict[str, bytes]:
    found = {}
    top = k.path("/state")
    for folder, _, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, top)] = f.read()
    return found


def test_first_boot_generates_keys_and_a_seed_second_boot_restores(
    k: FakeKernel, tmp_path: os.PathLike[str]
) -> None:
    standard_disks(k)
    boot(k)
    first = _state_files(k)
    keys = {n for n in first if n.startswith("initpy/ssh/")}
    assert keys == {
        f"initpy/ssh/ssh_host_{t}_key{e}" for t in ("ed25519", "ecdsa", "rsa") for e in ("", ".pub")
    }
    for name in keys:
        assert os.stat(k.path(f"/state/{name}")).st_mode & 0o777 == 0o600
    assert os.stat(k.path("/etc/ssh/ssh_host_ed25519_key")).st_mode & 0o777 == 0o600
    assert os.stat(k.path("/etc/ssh/ssh_host_ed25519_key.pub")).st_mode & 0o777 == 0o644
    assert len(first["initpy/random-seed"]) == 512
    assert not os.path.exists(k.path("/dev/urandom"))  # nothing saved yet to feed
    assert len([argv for argv in commands_run(k) if argv[0] == "ssh-keygen"]) == 3

    # Second boot: same /state (the fake root), a fresh RAM root otherwise.
    second = FakeKernel(root=k.root)
    make_executable(second, "/sbin/init")
    second.commands["ssh-keygen"] = fake_ssh_keygen(second)
    second.block_devices = k.block_devices
    with open(second.path("/proc/self/mounts"), "w") as f:
        f.write("rootfs / rootfs rw 0 0\n")
    boot(second)
    again = _state_files(second)
    assert [argv for argv in commands_run(second) if argv[0] == "ssh-keygen"] == []
    assert {n: again[n] for n in keys} == {n: first[n] for n in keys}
    with open(second.path("/dev/urandom"), "rb") as f:
        assert f.read() == first["initpy/random-seed"]  # the old seed fed to the kernel
    assert again["initpy/random-seed"] != first["initpy/random-seed"]
    with open(second.path("/etc/ssh/ssh_host_rsa_key"), "rb") as f:
        assert f.read() == first["initpy/ssh/ssh_host_rsa_key"]
    assert "host keys: restored ed25519, ecdsa, rsa" in " ".join(second.console_lines)


def test_every_write_to_state_is_atomic_and_only_in_its_own_folder(k: FakeKernel) -> None:
    standard_disks(k)
    os.makedirs(k.path("/state/precious"), exist_ok=True)
    with open(k.path("/state/precious/data"), "w") as f:
        f.write("the operator's\n")
    os.makedirs(k.path("/build/machines/vm1"), exist_ok=True)
    with open(k.path("/build/machines/vm1/disk.img"), "w") as f:
        f.write("a machine\n")
    before = _state_files(k)
    boot(k)
    after = _state_files(k)
    assert after["precious/data"] == before["precious/data"]
    assert all(n.startswith("initpy/") for n in set(after) - set(before))
    atomic = {c[1] for c in k.syscalls("write_atomic")}
    for name in set(after) - set(before):
        assert f"/state/{name}" in atomic
    with open(k.path("/build/machines/vm1/disk.img")) as f:
        assert f.read() == "a machine\n"
    assert not any(str(c[1]).startswith("/build/machines") for c in k.syscalls("chown"))
    # No mkfs, wipefs or rm was ever run.
    assert not [argv for argv in commands_run(k) if argv[0] != "ssh-keygen"]


def test_a_half_saved_key_pair_is_completed_not_replaced(k: FakeKernel) -> None:
    standard_disks(k)
    os.makedirs(k.path("/state/initpy/ssh"))
    private = "-----BEGIN OPENSSH PRIVATE KEY-----\nold\n-----END OPENSSH PRIVATE KEY-----\n"
    for suffix, text in (("", private), (".pub", "ssh-ed25519 OLD\n")):
        with open(k.path(f"/state/initpy/ssh/ssh_host_ed25519_key{suffix}"), "w") as f:
            f.write(text)
    boot(k)
    generated = [a[a.index("-t") + 1] for a in commands_run(k) if a[0] == "ssh-keygen"]
    assert generated == ["ecdsa", "rsa"]
    with open(k.path("/etc/ssh/ssh_host_ed25519_key.pub")) as f:
        assert f.read() == "ssh-ed25519 OLD\n"


def test_a_failing_ssh_keygen_is_a_warning_not_a_rescue(k: FakeKernel) -> None:
    standard_disks(k)
    k.commands["ssh-keygen"] = Completed(("ssh-keygen",), 127, "", "not found")
    assert isinstance(boot(k), HandedOff)
    assert any(
        "warning: host_keys: cannot generate the rsa key" in line for line in k.console_lines
    )
    assert "host keys: FAILED ed25519, ecdsa, rsa" in "\n".join(k.console_lines)
    assert os.path.exists(k.path("/state/initpy/random-seed"))


# -- the build user and /build/tftp ------------------------------------------------------------


def _etc(k: FakeKernel, name: str) -> str:
    with open(k.path(f"/etc/{name}")) as f:
        return f.read()


def _write_etc(k: FakeKernel, name: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(k.path("/etc"), exist_ok=True)
    with open(k.path(f"/etc/{name}"), "w") as f:
        f.write(text)
    os.chmod(k.path(f"/etc/{name}"), mode)


def test_build_user_is_created_in_passwd_group_and_shadow(k: FakeKernel) -> None:
    standard_disks(k)
    make_executable(k, "/bin/bash")
    _write_etc(k, "passwd", "root:x:0:0:root:/root:/bin/bash\n")
    _write_etc(k, "group", "root:x:0:\n")
    _write_etc(k, "shadow", "root:*:19000:0:99999:7:::\n", 0o640)
    boot(k)
    assert _etc(k, "passwd").splitlines()[-1] == "build:x:1100:1100:build:/build:/bin/bash"
    assert _etc(k, "group").splitlines()[-1] == "build:x:1100:"
    assert _etc(k, "shadow").splitlines()[-1] == "build:!::0:99999:7:::"
    assert os.stat(k.path("/etc/shadow")).st_mode & 0o777 == 0o640
    assert ("chown", "/build", 1100, 1100) in k.calls


def test_build_user_without_any_passwd_file(k: FakeKernel) -> None:
    standard_disks(k)
    boot(k)
    assert _etc(k, "passwd") == (
        "root:*:0:0:root:/root:/bin/sh\nbuild:*:1100:1100:build:/build:/bin/sh\n"
    )
    assert _etc(k, "group") == "root:x:0:\nbuild:x:1100:\n"
    assert not os.path.exists(k.path("/etc/shadow"))


def test_build_user_is_idempotent_and_an_existing_one_is_kept(k: FakeKernel) -> None:
    standard_disks(k)
    _write_etc(k, "passwd", "root:x:0:0:root:/root:/bin/sh\nbuild:x:2000:2000::/build:/bin/sh\n")
    _write_etc(k, "group", "root:x:0:\nbuild:x:2000:\n")
    boot(k)
    assert [ln for ln in _etc(k, "passwd").splitlines() if ln.startswith("build:")] == [
        "build:x:2000:2000::/build:/bin/sh"
    ]
    assert [ln for ln in _etc(k, "group").splitlines() if ln.startswith("build:")] == [
        "build:x:2000:"
    ]
    tftp = [c for c in mounts(k) if c[1] == "/build/tftp"]
    assert tftp[0][4] == "size=10%,mode=0755,uid=2000,gid=2000"
    # And running the state again changes nothing.
    passwd, group = _etc(k, "passwd"), _etc(k, "group")
    from initpy.runtime.hook import BootContext
    from initpy.runtime.report import Report

    buildhost.build_user(BootContext(kernel=k, report=Report(k)))
    assert (_etc(k, "passwd"), _etc(k, "group")) == (passwd, group)


def test_build_uid_taken_by_someone_else_is_a_rescue(k: FakeKernel) -> None:
    standard_disks(k)
    _write_etc(k, "passwd", "root:x:0:0:root:/root:/bin/sh\nalice:x:1100:1100::/home/a:/bin/sh\n")
    _write_etc(k, "group", "root:x:0:\n")
    boot(k)
    assert "uid 1100 already belongs to 'alice'" in rescue_text(k)


def test_tftp_size_parameter_and_a_bad_value(k: FakeKernel) -> None:
    standard_disks(k)
    k.cmdline = "initpy.tftp_size=4G"
    with open(k.path("/proc/cmdline"), "w") as f:
        f.write(k.cmdline + "\n")
    boot(k)
    tftp_options = [c for c in mounts(k) if c[1] == "/build/tftp"][0][4]
    assert isinstance(tftp_options, str) and tftp_options.startswith("size=4G,")
    with pytest.raises(Exception, match="tmpfs size like 2G"):
        buildhost.TFTP_SIZE.parse("lots")


def test_fstab_keeps_the_images_own_entries(k: FakeKernel) -> None:
    standard_disks(k)
    _write_etc(
        k,
        "fstab",
        "# UNCONFIGURED FSTAB FOR BASE SYSTEM\nproc /proc proc defaults 0 0\n"
        "/dev/old /state ext4 defaults 0 2\n",
    )
    boot(k)
    text = _etc(k, "fstab")
    assert "proc /proc proc defaults 0 0" in text
    assert "/dev/old" not in text and "UNCONFIGURED" not in text
    assert text.count("LABEL=buildos.state") == 1


def test_the_states_are_in_the_agreed_order() -> None:
    from hooks import network
    from initpy.runtime.hook import build_registry

    order = build_registry([*HOOKS, network.HOOK]).order
    names = [
        "load_modules",
        "find_disks",
        "mount_state",
        "mount_machines",
        "restore_state",
        "find_nics",
        "bridges",
        "build_user",
        "tftp",
        "handoff",
    ]
    assert [n for n in order if n in names] == names


# -- labels are the disk's, not the console's ----------------------------------------------------

# A machines label that would clear the screen, retitle the terminal, forge a
# rescue line of its own and return the cursor over it, if printed raw.
HOSTILE_LABEL = "buildos.machines.x\x1b[2J\x1b]0;owned\x07\ninitpy: rescue: fix: rm -rf /build\r"


def test_a_hostile_label_is_escaped_on_the_console_and_kept_whole_in_the_report(
    k: FakeKernel,
) -> None:
    add_disk(k, "vda", ext_image("buildos.state"))
    add_disk(k, "vdb", btrfs_image(HOSTILE_LABEL))
    assert isinstance(boot(k), Rebooted)
    for line in k.console_lines + k.kmsg_lines:
        assert line.startswith("initpy: ") and line.isprintable(), repr(line)
    # The label's own "line" never begins a console line: it stays inside the reason.
    assert not any(line.startswith("initpy: rescue: fix: rm") for line in k.console_lines)
    shown = "buildos.machines.x\\x1b[2J\\x1b]0;owned\\x07\\ninitpy: rescue: fix: rm -rf /build\\r"
    assert f"/dev/vdb is labelled {shown}, but " in rescue_text(k)
    # report.json keeps the label's other characters as they are (JSON escapes
    # them itself); only its line breaks are escaped, as the reason's lines are
    # the hook's.
    reason = read_report(k)["reason"]
    kept = "buildos.machines.x\x1b[2J\x1b]0;owned\x07\\ninitpy: rescue: fix: rm -rf /build\\r"
    assert isinstance(reason, str) and f"is labelled {kept}, but" in reason
