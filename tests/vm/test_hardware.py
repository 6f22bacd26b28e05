"""Drivers from the hardware (issue 11), on Debian's generic kernel in QEMU.

1+2. The spec's local-boot example, adapted only to user networking (an
     e1000 NIC with mac de:ad:be:ef:b8:da), with /state an ext4 disk on a
     usb-storage device behind qemu-xhci, and two named machines disks:
     btrfs on AHCI (ich9-ahci + ide-hd) and btrfs on NVMe. The default
     image (--drivers generic) hands off with DHCP on br0, everything
     mounted, and the report says which device asked for each driver.
     One boot for both acceptance points: each TCG boot costs 20-40 s.
3.   A USB state disk attached through the QEMU monitor a few seconds
     after load_modules is found within initpy.timeout.disks: the modules
     hook's uevent loader brings usb-storage and sd_mod in, the storage
     wait sees the block device.
4.   A device with no driver in the image (an NVMe controller, in an
     initrd built with `--drivers none --driver ...` without nvme) ends in
     a rescue that names it and says how to add its driver.

3 and 4 boot a small storage-only initrd with a --driver list: they are
about the uevent path and the message, not about the generic set. The
kernel is booted as vmlinux (scripts/fetch-kernel extracts it): QEMU's PVH
entry skips the xz decompression that makes the generic bzImage slow
under TCG.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.harness import disks, qemu
from tests.harness.guest_output import read_sections, report
from tests.harness.images import InitrdFiles, KernelFiles
from tests.harness.qemu import Nic
from tests.harness.scenario import GUEST_PATH

from .conftest import build_initrd

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 300
SPEC_MAC = "de:ad:be:ef:b8:da"
RESCUE_LINE = r"initpy: rescue: .*"
# A storage-only image with the drivers of scenarios 3 and 4: USB and AHCI, no NVMe.
NARROW_DRIVERS = ("xhci_pci", "usb_storage", "ahci")


@pytest.fixture(scope="module")
def generic_initrd(
    generic_kernel: KernelFiles, tmp_path_factory: pytest.TempPathFactory
) -> InitrdFiles:
    """Every hook, the default --drivers generic."""
    return build_initrd(generic_kernel, tmp_path_factory.mktemp("generic-initrd"))


@pytest.fixture(scope="module")
def narrow_initrd(
    generic_kernel: KernelFiles, tmp_path_factory: pytest.TempPathFactory
) -> InitrdFiles:
    options = ["--hooks", "storage,persist,buildhost", "--drivers", "none"]
    for driver in NARROW_DRIVERS:
        options += ["--driver", driver]
    return build_initrd(generic_kernel, tmp_path_factory.mktemp("narrow-initrd"), *options)


def usb_controller() -> list[str]:
    return ["-device", "qemu-xhci,id=xhci"]


def usb_disk(path: str, id: str) -> list[str]:
    return [
        "-drive",
        f"if=none,id={id},file={path},format=raw",
        "-device",
        f"usb-storage,bus=xhci.0,drive={id}",
    ]


def ahci_disk(path: str) -> list[str]:
    return [
        "-device",
        "ich9-ahci,id=sata",
        "-drive",
        f"if=none,id=sata0,file={path},format=raw",
        "-device",
        "ide-hd,bus=sata.0,drive=sata0",
    ]


def nvme_disk(path: str) -> list[str]:
    return [
        "-drive",
        f"if=none,id=nvm0,file={path},format=raw",
        "-device",
        "nvme,serial=initpy0,drive=nvm0",
    ]


def state_disk(workdir: Path) -> str:
    return disks.ext4(
        workdir / "state.img",
        "buildos.state",
        contents=disks.state_contents(workdir / "state-tree"),
    )


@contextlib.contextmanager
def booted(
    kernel: KernelFiles,
    initrd: InitrdFiles,
    name: str,
    extra: Sequence[str],
    words: Sequence[str] = (),
    nics: Sequence[Nic] = (),
) -> Iterator[qemu.Vm]:
    args = qemu.BootArgs(
        [f"initpy.exec={GUEST_PATH}", "initpy.debug", *words], nics=list(nics), extra=list(extra)
    )
    with qemu.boot(kernel.boot_image, initrd.initrd, args, name=name) as vm:
        yield vm


def _by_why(modules: list[dict[str, object]]) -> dict[str, str]:
    return {str(m["name"]): str(m["why"]) for m in modules if m["result"] == "loaded"}


def test_spec_example_on_e1000_usb_ahci_nvme_with_the_generic_image(
    generic_kernel: KernelFiles, generic_initrd: InitrdFiles, tmp_path: Path
) -> None:
    sata = disks.btrfs([tmp_path / "sata.img"], "buildos.machines.sata")[0]
    nvme = disks.btrfs([tmp_path / "nvme.img"], "buildos.machines.nvme")[0]
    extra = [
        *usb_controller(),
        *usb_disk(state_disk(tmp_path), "usbstate"),
        *ahci_disk(sata),
        *nvme_disk(nvme),
    ]
    nic = Nic.user("net0", mac=SPEC_MAC, model="e1000")
    with booted(generic_kernel, generic_initrd, "hardware-spec-example", extra, nics=[nic]) as vm:
        vm.expect(rf"initpy: handoff: exec {GUEST_PATH}", BOOT_TIMEOUT, fail_on=RESCUE_LINE)
        sections = read_sections(vm, BOOT_TIMEOUT)
        boot = report(sections, vm)
        assert boot["outcome"] == "handoff", boot["reason"]
        # Acceptance 1: DHCP on br0, which holds the e1000 NIC.
        network = sections["network"]
        assert re.search(r"^addr: .*inet 10\.0\.2\.15/24 .*br0", network, re.M), network
        assert re.search(rf"^link: eth0 {SPEC_MAC} master=br0", network, re.M), network
        # Acceptance 2: every disk mounted where its label says.
        mounts = sections["storage"]
        for device, target in (
            ("/dev/sd", "/state"),
            ("/dev/sd", "/build/machines/sata"),
            ("/dev/nvme0n1", "/build/machines/nvme"),
        ):
            assert re.search(rf"^mount: {device}\S* {target} ", mounts, re.M), mounts
        # ... and the report says which device asked for each driver.
        why = _by_why(boot["modules"])
        for driver, device in (
            ("e1000", "device pci/"),
            ("ahci", "device pci/"),
            ("nvme", "device pci/"),
            ("xhci_pci", "device pci/"),
            ("usb_storage", "device /devices/"),  # arrived by uevent, behind xhci
            ("sd_mod", "device "),
        ):
            assert why.get(driver, "").startswith(device), (driver, why)
        assert why["btrfs"] == "hook storage" and why["bridge"] == "hook network", why
        # Not every driver of the image: only what this machine's devices asked for.
        assert len(boot["modules"]) < 80, [m["name"] for m in boot["modules"]]


def test_a_usb_state_disk_plugged_in_after_boot_is_found(
    generic_kernel: KernelFiles, narrow_initrd: InitrdFiles, tmp_path: Path
) -> None:
    machines = disks.btrfs([tmp_path / "sata.img"], "buildos.machines")[0]
    state = state_disk(tmp_path)
    extra = [*usb_controller(), *ahci_disk(machines)]
    words = ["initpy.timeout.disks=90"]
    with booted(generic_kernel, narrow_initrd, "hardware-late-usb", extra, words) as vm:
        vm.expect(r"initpy: load_modules: ok", BOOT_TIMEOUT, fail_on=RESCUE_LINE)
        time.sleep(3)
        vm.monitor(f"drive_add 0 if=none,id=late,file={state},format=raw")
        vm.monitor("device_add usb-storage,bus=xhci.0,drive=late,id=latedisk")
        vm.expect(r"initpy: find_disks: ok", BOOT_TIMEOUT, fail_on=RESCUE_LINE)
        vm.expect(rf"initpy: handoff: exec {GUEST_PATH}", BOOT_TIMEOUT, fail_on=RESCUE_LINE)
        sections = read_sections(vm, BOOT_TIMEOUT)
        assert re.search(r"^mount: /dev/sd\S* /state ", sections["storage"], re.M)
        why = _by_why(report(sections, vm)["modules"])
        assert why.get("usb_storage", "").startswith("device /devices/"), why


def test_a_controller_without_a_driver_is_named_in_the_rescue(
    generic_kernel: KernelFiles, narrow_initrd: InitrdFiles, tmp_path: Path
) -> None:
    # /state on NVMe, whose driver the narrow image lacks.
    machines = disks.btrfs([tmp_path / "sata.img"], "buildos.machines")[0]
    extra = [*ahci_disk(machines), *nvme_disk(state_disk(tmp_path))]
    words = ["initpy.timeout.disks=5"]
    with booted(generic_kernel, narrow_initrd, "hardware-no-driver", extra, words) as vm:
        vm.expect(r"initpy: rescue: find_disks: no disk labelled buildos\.state", BOOT_TIMEOUT)
        vm.expect(r"NVMe controller at PCI 0000:00:\S+, id 1b36:0010", 60)
        vm.expect(r"modprobe -S \S+ -R 'pci:v00001B36d00000010", 60)
        vm.expect(r"--driver NAME", 60)
        vm.expect(re.escape("(initpy rescue) # "), 120)
        vm.leave_rescue_shell(120)
