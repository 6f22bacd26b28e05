"""Storage in QEMU (issue 4): real ext4 and btrfs images attached as virtio disks.

1. state (ext4) + one machines disk (btrfs): both mounted, /etc/fstab right,
   /build/tftp a tmpfs owned by build; and a second boot on the same
   images restores the same host keys and a new seed (acceptance 1 and 6);
2. named machines disks, one of them a two-device btrfs (acceptance 2, 3);
3. the labelling story: blank disks, rescue with the listing, the test
   types the mkfs commands, leaves the shell, QEMU ends (-no-reboot), and
   a second QEMU on the same images hands off with both mounted (4);
4. an ext4 machines disk and a duplicated label end in rescue (5).

These boot an initrd of the storage hook alone (with the always-included
modules and rescue tools): a storage test must not fail because DHCP or
another hook does, and it boots faster. The whole boot, with every hook
and the standard disks, is scenario (a) of test_boot.py (scenario.py).
INITPY_VM_STORAGE_INITRD=DIR reuses an OUTDIR built before.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import disks, qemu
from tests.harness.guest_output import read_sections, report
from tests.harness.images import InitrdFiles, KernelFiles
from tests.harness.qemu import BootArgs
from tests.harness.scenario import GUEST_PATH

from .conftest import build_initrd, prebuilt

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 240
SHELL_TIMEOUT = 120  # mkfs.btrfs under TCG takes a few seconds
RESCUE_PROMPT = re.escape("(initpy rescue) # ")
Boot = Callable[..., contextlib.AbstractContextManager[qemu.Vm]]


@pytest.fixture(scope="module")
def storage_initrd(vm_kernel: KernelFiles, tmp_path_factory: pytest.TempPathFactory) -> InitrdFiles:
    return prebuilt("INITPY_VM_STORAGE_INITRD") or build_initrd(
        vm_kernel, tmp_path_factory.mktemp("storage-initrd"), "--hooks", "storage,persist,buildhost"
    )


@pytest.fixture
def boot(storage_initrd: InitrdFiles, request: pytest.FixtureRequest) -> Boot:
    """`with boot(disk_paths, *words) as vm:` one QEMU run on those disks."""

    @contextlib.contextmanager
    def run(disk_paths: list[str], *words: str) -> Iterator[qemu.Vm]:
        args = BootArgs(
            append=[f"initpy.exec={GUEST_PATH}", "initpy.debug", *words], disks=list(disk_paths)
        )
        with qemu.boot(
            storage_initrd.image, storage_initrd.initrd, args, name=request.node.name
        ) as vm:
            yield vm

    return run


def storage_lines(vm: qemu.Vm) -> dict[str, list[str]]:
    """The guest's storage section as {key: [values]} ("mount: ...", "fstab: ...")."""
    vm.expect(r"initpy: handoff: exec ", BOOT_TIMEOUT)
    sections = read_sections(vm, BOOT_TIMEOUT)
    found: dict[str, list[str]] = {"report": [repr(report(sections, vm))]}
    for line in sections["storage"].splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            found.setdefault(key, []).append(value)
    vm.expect(r"reboot: Power down", 60)
    return found


def mounts(found: dict[str, list[str]]) -> dict[str, tuple[str, str, str]]:
    """Mount point -> (source, fstype, options), from /proc/mounts in the guest."""
    table = {}
    for line in found.get("mount", []):
        source, target, fstype, options = line.split()[:4]
        table[target] = (source, fstype, options)
    return table


# -- 1 and 6 -----------------------------------------------------------------------------


def test_state_and_machines_mount_and_keys_and_seed_survive_a_reboot(
    boot: Boot, tmp_path: Path
) -> None:
    images = disks.state_and_machines(tmp_path, host_keys=False)  # the first boot
    with boot(images) as vm:
        first = storage_lines(vm)
    table = mounts(first)
    assert table["/state"][:2] == ("/dev/vda", "ext4"), first
    assert table["/build/machines"][:2] == ("/dev/vdb", "btrfs"), first
    assert table["/build/tftp"][1] == "tmpfs" and "uid=1100,gid=1100" in table["/build/tftp"][2]
    assert "size=" in table["/build/tftp"][2]
    assert first["fstab"] == [
        "LABEL=buildos.state /state ext4 defaults,nofail 0 0",
        "LABEL=buildos.machines /build/machines btrfs defaults,nofail 0 0",
        "tmpfs /build/tftp tmpfs size=10%,mode=0755,uid=1100,gid=1100,nosuid,nodev 0 0",
    ]
    assert first["id"][0].startswith("uid=1100(build) gid=1100(build)"), first["id"]
    assert first["tftp"] == ["1100 1100 755"]
    assert len(first["hostkey"]) == 3, first
    # On /state: three key pairs, every file mode 0600, owned by root.
    assert len(first["statekey"]) == 7  # "total N" and six files
    assert all(line.startswith("-rw-------") for line in first["statekey"][1:]), first
    assert "generated and saved ed25519, ecdsa, rsa" in first["report"][0]

    with boot(images) as vm:
        second = storage_lines(vm)
    assert second["hostkey"] == first["hostkey"]
    assert second["seed"] != first["seed"]
    assert "fed 512 saved bytes to the kernel" in second["report"][0]
    assert "host keys: restored ed25519, ecdsa, rsa" in second["report"][0]
    assert mounts(second)["/state"][:2] == ("/dev/vda", "ext4")


# -- 2 and 3 ------------------------------------------------------------------------------


def test_named_machines_disks_and_a_two_device_btrfs(boot: Boot, tmp_path: Path) -> None:
    images = [
        disks.ext4(
            tmp_path / "state.img",
            "buildos.state",
            contents=disks.state_contents(tmp_path / "state-tree"),
        ),
        *disks.btrfs([tmp_path / "fast.img"], "buildos.machines.fast"),
        *disks.btrfs([tmp_path / "big1.img", tmp_path / "big2.img"], "buildos.machines.big"),
    ]
    with boot(images) as vm:
        found = storage_lines(vm)
    table = mounts(found)
    assert table["/build/machines/fast"][:2] == ("/dev/vdb", "btrfs"), found
    assert table["/build/machines/big"][1] == "btrfs", found
    assert table["/build/machines/big"][0] in ("/dev/vdc", "/dev/vdd")
    assert "/build/machines" not in table
    assert "/build/machines/big <- /dev/vdc, /dev/vdd" in found["report"][0]
    assert (
        "LABEL=buildos.machines.big /build/machines/big btrfs defaults,nofail 0 0" in found["fstab"]
    )
    assert (
        "LABEL=buildos.machines.fast /build/machines/fast btrfs defaults,nofail 0 0"
        in found["fstab"]
    )


# -- 4: the labelling story ---------------------------------------------------------------


def test_blank_disks_rescue_then_label_them_in_the_shell_and_the_next_boot_mounts(
    boot: Boot, tmp_path: Path
) -> None:
    images = [disks.blank(tmp_path / "a.img", 64), disks.blank(tmp_path / "b.img", 256)]
    with boot(images, "initpy.timeout.disks=3") as vm:
        vm.expect(
            r"initpy: rescue: find_disks: no disk labelled buildos\.state \(for /state\); "
            r"no disk labelled buildos\.machines or buildos\.machines\.<name>",
            BOOT_TIMEOUT,
        )
        vm.expect(r"Disks found \(after waiting 3\.\d s\):")
        vm.expect(
            re.escape(
                "  /dev/vda, 64.0 MiB, model 'virtio disk', rotational, no filesystem initpy knows"
            )
        )
        vm.expect(
            re.escape(
                "  /dev/vdb, 256.0 MiB, model 'virtio disk', rotational, no filesystem initpy knows"
            )
        )
        vm.expect(re.escape("mkfs.ext4 -L buildos.state /dev/sdX"))
        vm.expect(re.escape("mkfs.btrfs -L buildos.machines -m single /dev/sdY"))
        vm.expect(RESCUE_PROMPT, SHELL_TIMEOUT)
        # The commands the rescue gave, on the listed disks; the echo of what
        # we type does not contain the computed words.
        vm.send("mkfs.ext4 -L buildos.state /dev/vda && echo state-$((40 + 2))")
        vm.expect(r"^state-42$", SHELL_TIMEOUT, re.M)
        vm.send("mkfs.btrfs -L buildos.machines -m single /dev/vdb && echo machines-$((40 + 3))")
        vm.expect(r"^machines-43$", SHELL_TIMEOUT, re.M)
        vm.leave_rescue_shell(SHELL_TIMEOUT)

    with boot(images) as vm:
        found = storage_lines(vm)
    table = mounts(found)
    assert table["/state"][:2] == ("/dev/vda", "ext4"), found
    assert table["/build/machines"][:2] == ("/dev/vdb", "btrfs"), found


# -- 5: rescues that name the devices ------------------------------------------------------


def test_an_ext4_machines_disk_is_a_rescue_that_says_btrfs(boot: Boot, tmp_path: Path) -> None:
    images = [
        disks.ext4(tmp_path / "state.img", "buildos.state"),
        disks.ext4(tmp_path / "machines.img", "buildos.machines"),
    ]
    with boot(images) as vm:
        vm.expect(
            r"initpy: rescue: find_disks: /dev/vdb is labelled buildos\.machines but "
            r"holds ext4; machines disks must be btrfs",
            BOOT_TIMEOUT,
        )
        vm.expect(re.escape("mkfs.btrfs -f -L buildos.machines -m single /dev/vdb"))
        vm.expect(RESCUE_PROMPT, SHELL_TIMEOUT)


def test_a_duplicated_label_is_a_rescue_naming_both_devices(boot: Boot, tmp_path: Path) -> None:
    images = [
        disks.ext4(tmp_path / "state1.img", "buildos.state"),
        *disks.btrfs([tmp_path / "machines.img"], "buildos.machines"),
        disks.ext4(tmp_path / "state2.img", "buildos.state"),
    ]
    with boot(images) as vm:
        vm.expect(
            r"initpy: rescue: find_disks: 2 filesystems are labelled buildos\.state: "
            r"/dev/vda \(ext4, uuid [0-9a-f-]+\); /dev/vdc \(ext4, uuid [0-9a-f-]+\)",
            BOOT_TIMEOUT,
        )
        vm.expect(RESCUE_PROMPT, SHELL_TIMEOUT)
