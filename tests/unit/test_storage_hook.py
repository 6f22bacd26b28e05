"""The storage hook on the fake kernel: waiting, mounting, fstab, rescue reasons.

Disks are made in the fake root's /sys exactly as the kernel lays them out
(/sys/class/block/<name> a symlink into /sys/devices/..., partitions inside
their disk's folder), with crafted superblock images behind /dev/<name>.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hooks import storage as MODULE
from hooks.storage.blockdev import scan, wait_for_devices
from initpy.devtools.fake import FakeKernel, HandedOff, Rebooted
from initpy.devtools.walk import fake_ssh_keygen
from initpy.runtime.hook import BootContext, BootFailure
from initpy.runtime.report import Report
from initpy.runtime.uevent import Uevent
from tests.unit.conftest import read_report
from tests.unit.storage_boot import (
    HOOKS,
    boot,
    etc_text,
    mounts,
    rescue_text,
    standard_disks,
    write_etc,
)
from tests.unit.test_labels import btrfs_image, ext_image, xfs_image


def arrives(k: FakeKernel, name: str, image: bytes) -> Callable[[], list[Uevent]]:
    """A uevent step: the disk appears in /sys, and the kernel says so."""

    def step() -> list[Uevent]:
        k.add_block_device(name, image)
        return [Uevent("add", f"/devices/virtual/block/{name}", "block", {"DEVNAME": name})]

    return step


@pytest.fixture
def k(kernel: FakeKernel) -> FakeKernel:
    kernel.commands["ssh-keygen"] = fake_ssh_keygen(kernel)
    return kernel


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
    k.add_block_device("vda", ext_image("buildos.state"))
    k.add_block_device("vdb", btrfs_image("buildos.machines.fast", fsid="a" * 32))
    k.add_block_device("vdc", btrfs_image("buildos.machines.big", fsid="b" * 32))
    assert isinstance(boot(k), HandedOff)
    targets = {c[1]: c[0] for c in mounts(k)}
    assert targets["/build/machines/big"] == "/dev/vdc"
    assert targets["/build/machines/fast"] == "/dev/vdb"
    with open(k.path("/etc/fstab")) as f:
        text = f.read()
    assert "LABEL=buildos.machines.big /build/machines/big btrfs" in text
    assert "LABEL=buildos.machines.fast /build/machines/fast btrfs" in text


def test_two_device_btrfs_waits_for_both_and_names_both_to_the_mount(k: FakeKernel) -> None:
    k.add_block_device("vda", ext_image("buildos.state"))
    k.add_block_device("vdb", btrfs_image("buildos.machines", devid=1, num_devices=2))
    k.uevent_script = [arrives(k, "vdc", btrfs_image("buildos.machines", devid=2, num_devices=2))]
    assert isinstance(boot(k), HandedOff)
    machines = [c for c in mounts(k) if c[1] == "/build/machines"]
    assert machines == [
        ("/dev/vdb", "/build/machines", "btrfs", 0, "device=/dev/vdb,device=/dev/vdc")
    ]
    # Members of one filesystem share its label: that is not a duplicate.
    assert rescue_text(k) == ""


def test_partitions_are_probed_like_disks(k: FakeKernel) -> None:
    k.add_block_device("sda", bytes(4096), model="Samsung SSD 870", rotational=False)
    k.add_block_device("sda1", ext_image("buildos.state"), parent="sda")
    k.add_block_device("sda2", btrfs_image("buildos.machines"), parent="sda")
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
    k.add_block_device("vda", ext_image("buildos.state"))
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
    k.add_block_device("vda", ext_image("buildos.state"))
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
    k.add_block_device("vda", ext_image("buildos.state"))
    original_sleep = k.sleep

    def sleep(seconds: float) -> None:
        original_sleep(seconds)
        if len(k.syscalls("sleep")) == 3:
            k.add_block_device("vdb", btrfs_image("buildos.machines"))

    k.sleep = sleep  # type: ignore[method-assign]
    result = wait_for_devices(k, MODULE.required_present, 10.0)
    assert result.satisfied and result.polled and len(result.devices) == 2


def test_an_empty_device_and_a_garbage_one_are_listed_not_fatal(k: FakeKernel) -> None:
    k.add_block_device("loop0", b"", size=0)
    k.add_block_device("vda", b"\xff" * 70000)
    k.add_block_device("vdb", btrfs_image("buildos.machines")[:0x10100])  # truncated superblock
    names = [(d.name, d.fstype) for d in scan(k)]
    assert names == [("vda", ""), ("vdb", "")]


# -- the labelling rescue -------------------------------------------------------------------


def test_blank_disks_rescue_with_the_listing_and_the_commands(k: FakeKernel) -> None:
    k.add_block_device("vda", bytes(4096), size=2 << 30, serial="blank-a")
    k.add_block_device("vdb", bytes(4096), size=8 << 30, model="QEMU HARDDISK", rotational=False)
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
    k.add_block_device("vda", ext_image("buildos.state"))
    boot(k)
    text = rescue_text(k)
    assert "no disk labelled buildos.machines" in text
    assert "no disk labelled buildos.state" not in text
    assert "ext4, label 'buildos.state'" in text


# -- the other rescue reasons ------------------------------------------------------------------


def test_machines_disk_that_is_not_btrfs(k: FakeKernel) -> None:
    k.add_block_device("vda", ext_image("buildos.state"))
    k.add_block_device("vdb", ext_image("buildos.machines"))
    start = k.clock
    assert isinstance(boot(k), Rebooted)
    text = rescue_text(k)
    assert (
        "/dev/vdb is labelled buildos.machines but holds ext4; machines disks must be btrfs" in text
    )
    assert "mkfs.btrfs -f -L buildos.machines -m single /dev/vdb" in text
    assert k.clock - start < 1.0  # the labels were there: no waiting for the deadline


def test_single_and_named_forms_together(k: FakeKernel) -> None:
    k.add_block_device("vda", ext_image("buildos.state"))
    k.add_block_device("vdb", btrfs_image("buildos.machines", fsid="a" * 32))
    k.add_block_device("vdc", btrfs_image("buildos.machines.x", fsid="b" * 32))
    boot(k)
    text = rescue_text(k)
    assert (
        "both buildos.machines (/dev/vdb) and buildos.machines.<name> (/dev/vdc as "
        "buildos.machines.x) are present; use one form"
    ) in text
    assert "btrfs filesystem label /dev/vdb buildos.machines.NAME" in text


def test_two_filesystems_with_one_label_name_both_devices(k: FakeKernel) -> None:
    k.add_block_device(
        "vda", ext_image("buildos.state", uuid="00000000-0000-0000-0000-000000000001")
    )
    k.add_block_device("vdb", btrfs_image("buildos.machines"))
    k.add_block_device(
        "vdc", ext_image("buildos.state", uuid="00000000-0000-0000-0000-000000000002")
    )
    boot(k)
    text = rescue_text(k)
    assert "2 filesystems are labelled buildos.state: /dev/vda (ext4, uuid " in text
    assert "/dev/vdc (ext4, uuid 00000000-0000-0000-0000-000000000002)" in text


def test_two_btrfs_filesystems_with_one_label(k: FakeKernel) -> None:
    k.add_block_device("vda", ext_image("buildos.state"))
    k.add_block_device("vdb", btrfs_image("buildos.machines", fsid="a" * 32))
    k.add_block_device("vdc", btrfs_image("buildos.machines", fsid="b" * 32))
    boot(k)
    assert "2 filesystems are labelled buildos.machines: /dev/vdb" in rescue_text(k)
    assert "/dev/vdc (btrfs" in rescue_text(k)


def test_a_copied_btrfs_device_is_not_taken_for_a_second_member(k: FakeKernel) -> None:
    k.add_block_device("vda", ext_image("buildos.state"))
    k.add_block_device("vdb", btrfs_image("buildos.machines", devid=1, num_devices=2))
    k.add_block_device("vdc", btrfs_image("buildos.machines", devid=1, num_devices=2))
    boot(k)
    text = rescue_text(k)
    assert "/dev/vdb, /dev/vdc are copies of the same btrfs device" in text


@pytest.mark.parametrize("name", ["", "..", ".hidden", "a/b", "-x", "has space"])
def test_a_name_that_is_not_a_safe_path_component(k: FakeKernel, name: str) -> None:
    k.add_block_device("vda", ext_image("buildos.state"))
    k.add_block_device("vdb", btrfs_image(f"buildos.machines.{name}"))
    boot(k)
    text = rescue_text(k)
    assert f"/dev/vdb is labelled buildos.machines.{name}, but {name!r} is not a safe" in text
    assert not any(str(c[1]).startswith("/build/machines") for c in mounts(k))


def test_an_incomplete_multi_device_btrfs_names_what_is_there(k: FakeKernel) -> None:
    k.cmdline = "initpy.timeout.disks=2"
    with open(k.path("/proc/cmdline"), "w") as f:
        f.write(k.cmdline + "\n")
    k.add_block_device("vda", ext_image("buildos.state"))
    k.add_block_device("vdb", btrfs_image("buildos.machines", devid=2, num_devices=3))
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


def test_fstab_keeps_the_images_own_entries(k: FakeKernel) -> None:
    standard_disks(k)
    write_etc(
        k,
        "fstab",
        "# UNCONFIGURED FSTAB FOR BASE SYSTEM\nproc /proc proc defaults 0 0\n"
        "/dev/old /state ext4 defaults 0 2\n",
    )
    boot(k)
    text = etc_text(k, "fstab")
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
    k.add_block_device("vda", ext_image("buildos.state"))
    k.add_block_device("vdb", btrfs_image(HOSTILE_LABEL))
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


def test_a_mount_state_without_find_disks_is_a_rescue_that_names_both(tmp_path: Path) -> None:
    """A state that reads another's fact, run without it (a hook's own order
    broken), stops with a reason naming the missing fact and the state that
    leaves it, not an AttributeError on None."""
    k = FakeKernel(str(tmp_path))
    ctx = BootContext(kernel=k, report=Report(k))
    with pytest.raises(BootFailure) as failure:
        MODULE.mount_state(ctx)
    assert failure.value.reason == (
        "no storage_plan: the find_disks state did not run before this one"
    )
    assert "order find_disks before" in failure.value.fix
    assert [call for call in k.calls if call[0] == "mount"] == []
