"""Secure Boot enforced (issue 20, acceptance 2): the signed chain boots initpy, lockdown refuses
an unsigned module and the report names it.

OVMF with Microsoft's keys enrolled boots Debian's signed shim from an
ESP, shim checks Debian's signed GRUB, GRUB has shim check the kernel
(mkinitrd's buildos-image, Debian's signed cloud kernel), and the kernel
in lockdown checks every module initpy loads. The initrd is the small
one, with virtio-rng's driver packed and then replaced by a copy whose
signature was cut off (tests/harness/secureboot.py): the guest has a
virtio-rng device, so the boot loads its driver by modalias, the kernel
refuses it, and the boot goes on to the hand-off with a warning that
names it. Then the full image (the Debian OS packed with --rootfs) boots
the same way to multi-user.target with no failed unit, still locked down
and with no module loaded unsigned. The ESP is a folder QEMU shows as a
FAT disk. Last, the same chain from the network: OVMF's own PXE fetches
shim from a `pxe-layout` folder by TFTP, GRUB the kernel and initrd
(`--http-base` cannot work here: the signed GRUB refuses http.mod under
Secure Boot, docs/fleet.md section 2a).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from initpy.runtime.hook import HANDOFF
from tests.harness import qemu, secureboot
from tests.harness.disks import state_and_machines
from tests.harness.fullos import BOOT_TIMEOUT as FULL_BOOT_TIMEOUT
from tests.harness.fullos import READY, Ssh, free_port, full_os_args, make_key, pxe_layout
from tests.harness.guest_output import key_values, read_sections, report
from tests.harness.images import InitrdFiles, KernelFiles
from tests.harness.machine import loosely
from tests.harness.qemu import BootArgs
from tests.harness.scenario import GUEST_PATH

from .conftest import build_initrd

pytestmark = pytest.mark.vm

# OVMF's SMM build, shim, GRUB and the xz kernel under TCG: slower than -kernel.
BOOT_TIMEOUT = 600
UNSIGNED = "virtio_rng"
RNG_DEVICE = ["-device", "virtio-rng-pci"]
TAINT_UNSIGNED_MODULE = 1 << 13
COMPRESSION = "lz4"
NET_MAC = "de:ad:be:ef:b8:da"  # the spec's Network Boot example


@pytest.fixture(scope="module")
def secure_initrd(vm_kernel: KernelFiles, tmp_path_factory: pytest.TempPathFactory) -> InitrdFiles:
    """The small initrd with virtio-rng's driver, and that driver's signature cut off."""
    outdir = tmp_path_factory.mktemp("sb-initrd")
    files = build_initrd(vm_kernel, outdir, "--driver", UNSIGNED, "--compress", COMPRESSION)
    module = next(vm_kernel.modules.glob("kernel/drivers/char/hw_random/virtio-rng.ko"))
    inside = f"usr/lib/modules/{vm_kernel.modules.name}/{module.relative_to(vm_kernel.modules)}"
    unsigned = files.outdir / "buildos-initrd-unsigned-rng"
    secureboot.with_unsigned_module(files.initrd, unsigned, inside, module, COMPRESSION)
    return InitrdFiles(files.outdir, files.image, unsigned, files.buildid)


def test_the_chain_is_signed() -> None:
    """What the firmware and shim check: each loader and the kernel carry a PE signature."""
    shim, grub = secureboot.signed_loaders()
    assert secureboot.pe_signature_size(shim) > 0
    assert secureboot.pe_signature_size(grub) > 0


def test_secure_boot_enforced_refuses_the_unsigned_module_and_names_it(
    vm_kernel: KernelFiles, secure_initrd: InitrdFiles, full_boot: BootArgs, tmp_path: Path
) -> None:
    # mkinitrd's buildos-image is Debian's signed kernel, byte for byte.
    assert secure_initrd.image.read_bytes() == vm_kernel.vmlinuz.read_bytes()
    assert secureboot.pe_signature_size(secure_initrd.image) > 0
    args = _firmware_args(full_boot.plus(extra=RNG_DEVICE), secure_initrd, tmp_path)
    with qemu.firmware_boot(args, name="secureboot") as vm:
        vm.expect(r"Secure boot enabled", BOOT_TIMEOUT)
        sections = locked_down_handoff(vm)
        console = vm.console
    boot = report(sections, vm)

    # Every other module loaded with its signature checked; the unsigned one was refused.
    results = {m["name"]: m for m in boot["modules"]}
    refused = results.pop(UNSIGNED)
    assert refused["result"] == "failed", refused
    assert str(refused["error"]).startswith(
        "refused by the kernel: the module carries no signature"
    )
    assert {"virtio_net", "virtio_blk", "btrfs"} <= set(results)
    assert [m for m in results.values() if "refused" in str(m.get("error"))] == []
    # Only optional helpers the emulated CPU lacks (crc32c_intel: no SSE4.2) fail otherwise.
    failed = {n: m["error"] for n, m in results.items() if m["result"] == "failed"}
    assert set(failed.values()) <= {"No such device"}, failed
    assert all(m["why"].startswith("needed by") for n, m in results.items() if n in failed)
    (warning,) = [w for w in boot["warnings"] if UNSIGNED in w]
    assert "carries no signature" in warning and "lockdown" in warning
    # The kernel's own word for it, beside initpy's: Debian's kernel enforces module
    # signatures when Secure Boot is on (EKEYREJECTED), before lockdown's EPERM.
    assert "Loading of unsigned module is rejected" in console


def locked_down_handoff(vm: qemu.Vm) -> dict[str, str]:
    """initpy handed off, under Secure Boot's lockdown, no module unsigned; vmcheck's sections."""
    vm.expect(
        rf"initpy: {HANDOFF}: exec {re.escape(GUEST_PATH)}",
        BOOT_TIMEOUT,
        fail_on=r"initpy: rescue: .*",
    )
    sections = read_sections(vm, BOOT_TIMEOUT)
    assert report(sections, vm)["outcome"] == "handoff"
    # The firmware enforced Secure Boot, and the kernel locked itself down for it.
    secure = sections["secureboot"]
    assert "secureboot: Secure boot enabled" in secure, secure
    assert re.search(r"lockdown=.*\[integrity\]", secure), secure
    assert "Kernel is locked down from EFI Secure Boot" in secure, secure
    # No module was loaded without a valid signature (taint flag E).
    tainted = int(key_values(secure, "=")["tainted"])
    assert tainted & TAINT_UNSIGNED_MODULE == 0, tainted
    return sections


def _firmware_args(args: BootArgs, image: InitrdFiles, workdir: Path) -> BootArgs:
    """`args` booted through OVMF and the signed chain: its append line goes to grub.cfg."""
    esp = secureboot.esp(workdir / "esp", image.image, image.initrd, args.append)
    firmware = secureboot.firmware_args(workdir, esp)
    return BootArgs([], args.disks, args.nics, [*args.extra, *firmware], args.memory)


def test_the_full_image_reaches_multi_user_under_secure_boot(
    vm_full_image: InitrdFiles, tmp_path: Path
) -> None:
    key = make_key(tmp_path)
    mail = tmp_path / "mail"
    mail.mkdir()
    port = free_port()
    args = full_os_args(tmp_path, port, key.with_suffix(".pub").read_text().strip(), mail)
    with qemu.firmware_boot(
        _firmware_args(args, vm_full_image, tmp_path), name="secureboot-full"
    ) as vm:
        vm.expect(r"Secure boot enabled", BOOT_TIMEOUT)
        ready = vm.expect(READY, FULL_BOOT_TIMEOUT, fail_on=r"initpy: rescue: .*")
        state, _multi_user_ms, _systemd_ms, failed, _active = ready.groups()
        assert state == "running" and failed == "", ready.group(0)
        ssh = Ssh(port, key)
        ssh.wait()
        out = ssh.sections(
            {
                "lockdown": "cat /sys/kernel/security/lockdown",
                "tainted": "cat /proc/sys/kernel/tainted",
                "modules": "lsmod | awk 'NR > 1 {print $1}' | sort | tr '\\n' ' '",
                "refused": "dmesg | grep -c 'unsigned module loading is restricted' || true",
            }
        )
    assert "[integrity]" in out["lockdown"], out
    assert int(out["tainted"]) & TAINT_UNSIGNED_MODULE == 0, out
    # initpy's modules and the ones systemd-udevd loaded from the OS tree, all signed.
    assert {"btrfs", "virtio_net", "nf_tables"} <= set(out["modules"].split()), out
    assert out["refused"] == "0", out


def test_secure_boot_enforced_netboots_the_layout_over_tftp(
    vm_initrd: InitrdFiles, tmp_path: Path
) -> None:
    """The same chain from pxe-layout's folder: the firmware's own PXE fetches shim by TFTP.

    QEMU's virtio-net carries an iPXE option ROM that nobody signed; without
    it (`romfile=`) OVMF drives the NIC with its own VirtioNetDxe and boots
    `shimx64.efi` from the DHCP answer, shim checks GRUB (Debian's signed
    network image, fetched beside it), GRUB reads the MAC's own file and
    fetches the kernel and initrd by TFTP, and has shim check the kernel.
    """
    tftp = tmp_path / "tftp"
    pxe_layout(
        str(vm_initrd.outdir), str(tftp), "--mac", NET_MAC, "--timeout", "0",
        "--append", f"console=ttyS0 panic=-1 initpy.debug initpy.exec={GUEST_PATH}",
    )  # fmt: skip
    nic = qemu.Nic.user(
        "net0",
        mac=NET_MAC,
        model="virtio-net-pci,romfile=",
        options=f"tftp={tftp},bootfile=shimx64.efi",
    )
    with qemu.network_boot(
        nics=[nic],
        disks=state_and_machines(tmp_path),
        extra=secureboot.secure_firmware(tmp_path),
        name="secureboot-tftp",
    ) as vm:
        vm.expect(loosely("Start PXE over IPv4"), BOOT_TIMEOUT)
        vm.expect(loosely(f"buildos: GRUB config grub.cfg-01-{NET_MAC.replace(':', '-')}"), 300)
        vm.expect(loosely("buildos: loading the kernel by tftp"), 60)
        vm.expect(r"EFI stub: UEFI Secure Boot is enabled", BOOT_TIMEOUT)
        locked_down_handoff(vm)
