"""The QEMU command line of the VM tier: every rule of this machine, applied in one place.

- QEMU networking only as `-netdev user,...,restrict=on` (the guest cannot
  reach out), unix-socket `dgram`/`stream` links between local QEMUs, or
  `tap` links into namespaces the test made; `-nodefaults` so QEMU adds no
  default NIC of its own (`Nic`'s constructors make only those);
- TCG by default (KVM is broken on these hosts); INITPY_QEMU_ACCEL=kvm
  chooses KVM where it works;
- every guest's command line carries REQUIRED_APPEND.

`BootArgs` is what one boot gets besides the kernel and initrd; tests,
benchmarks and scripts/demo hand it whole to `qemu.boot()`.
tests/vm/test_qemu_rules.py checks the rules without starting QEMU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

QEMU = os.environ.get("INITPY_QEMU", "qemu-system-x86_64")
# What every guest needs on its command line for the harness to work: the
# console on the serial port we read, and a kernel panic (say, PID 1 died)
# that reboots at once, which -no-reboot turns into QEMU exiting, instead of
# a hang until the test's timeout.
REQUIRED_APPEND = ("console=ttyS0", "panic=-1")
# TCG's code cache when a guest may reboot (qemu_argv says why); 0: QEMU's
# default (benchmarks/tcg_reboot.py compares the two).
REBOOT_TB_SIZE_MIB = 128


@dataclass(frozen=True)
class Nic:
    """One guest NIC: a `-netdev` backend and the `-device` that uses it.

    Use the constructors: they only make the links this machine allows.
    """

    netdev: str
    device: str

    @staticmethod
    def user(
        id: str, mac: str | None = None, model: str = "virtio-net-pci", options: str = ""
    ) -> Nic:
        """QEMU's user network, restricted: DHCP answers, no way out."""
        extra = f",{options}" if options else ""
        return Nic(f"user,id={id},restrict=on{extra}", _device(model, id, mac))

    @staticmethod
    def socket_link(
        id: str, path: str, listen: bool, mac: str | None = None, model: str = "virtio-net-pci"
    ) -> Nic:
        """A point-to-point link to another local QEMU over a unix stream socket."""
        role = (
            f"server=on,addr.type=unix,addr.path={path}"
            if listen
            else f"server=off,addr.type=unix,addr.path={path}"
        )
        return Nic(f"stream,id={id},{role}", _device(model, id, mac))

    @staticmethod
    def tap(id: str, ifname: str, mac: str | None = None, model: str = "virtio-net-pci") -> Nic:
        """A tap link; the test must have made `ifname` inside its own namespace."""
        return Nic(f"tap,id={id},ifname={ifname},script=no,downscript=no", _device(model, id, mac))


def _device(model: str, id: str, mac: str | None) -> str:
    return f"{model},netdev={id}" + (f",mac={mac}" if mac else "")


def check_netdev(spec: str) -> None:
    """Refuse any QEMU network backend this machine does not allow."""
    kind, _, rest = spec.partition(",")
    options = dict(o.partition("=")[::2] for o in rest.split(",") if o)
    if kind == "user":
        if options.get("restrict") not in ("on", "yes", "y"):
            raise ValueError(f"-netdev {spec}: a user network must have restrict=on")
        return
    if kind in ("stream", "dgram"):
        unix = [k for k, v in options.items() if k.endswith("type") and v == "unix"]
        inet = [k for k, v in options.items() if k.endswith("type") and v != "unix"]
        if unix and not inet:
            return
        raise ValueError(f"-netdev {spec}: {kind} links must use unix sockets only")
    if kind == "tap":
        if options.get("script", "no") != "no" or options.get("downscript", "no") != "no":
            raise ValueError(f"-netdev {spec}: tap links take no scripts (script=no)")
        if "ifname" not in options:
            raise ValueError(f"-netdev {spec}: name the tap you made (ifname=...)")
        return
    raise ValueError(
        f"-netdev {spec}: only user (restrict=on), unix stream/dgram and tap "
        "links are allowed on this machine"
    )


def check_extra(extra: Sequence[str]) -> None:
    """Extra QEMU arguments may not sneak in another network."""
    for i, arg in enumerate(extra):
        if arg in ("-net", "-nic", "-netdev", "--net", "--nic", "--netdev"):
            if arg.lstrip("-") != "netdev" or i + 1 >= len(extra):
                raise ValueError(f"{arg}: give NICs with nics=(Nic...), not extra arguments")
            check_netdev(extra[i + 1])


def drive_args(disk: str | Sequence[str]) -> list[str]:
    """A raw virtio disk from a path, or the caller's own list of arguments."""
    if isinstance(disk, str):
        return ["-drive", f"file={disk},if=virtio,format=raw"]
    return list(disk)


def qemu_argv(
    kernel: str | None,
    initrd: str | None,
    append: str,
    *,
    serial: str,
    monitor_path: str,
    disks: Sequence[str | Sequence[str]] = (),
    nics: Sequence[Nic] = (),
    extra: Sequence[str] = (),
    memory: int = 1024,
    reboot: bool = False,
    boot: str = "n",
) -> list[str]:
    """The whole QEMU command line; every rule of this machine is applied here.

    `kernel=None` boots through the firmware instead: from the network by
    default (`-boot n`: the first NIC's PXE ROM, QEMU's own iPXE), from a
    disk with `boot="c"` (OVMF and its ESP: tests/harness/secureboot.py);
    the boot loader then gives the command line, so `initrd` and `append`
    must be empty, and REQUIRED_APPEND is the caller's to put in the
    loader's config. `reboot=True` leaves out
    -no-reboot, so that a guest's reboot boots again instead of ending QEMU.
    """
    accel = os.environ.get("INITPY_QEMU_ACCEL", "tcg")
    if reboot and accel == "tcg" and REBOOT_TB_SIZE_MIB:
        # After a reboot in the same QEMU, TCG's default code cache (1 GiB,
        # full of the first boot's code) makes the next boot unpack its
        # initramfs about 5 times slower (full image: 36-40 s against 6-9 s);
        # a 128 MiB cache unpacks it in 6-7 s again (tests/vm/test_pxe.py).
        accel = f"tcg,tb-size={REBOOT_TB_SIZE_MIB}"
    argv = [QEMU, "-accel", accel, "-m", str(memory), "-smp", "1", "-nodefaults", "-nographic"]
    argv += [] if reboot else ["-no-reboot"]
    argv += ["-serial", serial, "-monitor", f"unix:{monitor_path},server=on,wait=off"]
    if kernel is None:
        if initrd is not None or append.strip():
            raise ValueError(
                "a network boot takes its initrd and command line from the boot loader's "
                "config (pxelinux.cfg), not from -initrd/-append"
            )
        argv += ["-boot", boot]
    else:
        if initrd is None:
            raise ValueError(f"-kernel {kernel} needs an initrd")
        words = append.split()
        for required in REQUIRED_APPEND:
            key = required.split("=")[0]
            if not any(w == required or w.startswith(key + "=") for w in words):
                append = f"{required} {append}"
        argv += ["-kernel", kernel, "-initrd", initrd, "-append", append.strip()]
    for disk in disks:
        argv += drive_args(disk)
    for nic in nics:
        check_netdev(nic.netdev)
        argv += ["-netdev", nic.netdev, "-device", nic.device]
    check_extra(extra)
    argv += list(extra)
    return argv


@dataclass
class BootArgs:
    """What one boot gets besides the kernel and initrd; extend, do not fork."""

    append: list[str] = field(default_factory=list)
    disks: list[str | Sequence[str]] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    memory: int = 1024

    def plus(self, append: Sequence[str] = (), extra: Sequence[str] = ()) -> BootArgs:
        """A copy with more command-line words and QEMU arguments; this one is left as it was."""
        return BootArgs(
            [*self.append, *append],
            list(self.disks),
            list(self.nics),
            [*self.extra, *extra],
            self.memory,
        )
