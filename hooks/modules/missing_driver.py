"""Name the NIC or disk controller that has no driver, and say how to add one.

Used when a rescue reason is "no Ethernet interface found" or "no disk
labelled buildos.state" (through the core fact DRIVERLESS, so that the
network and storage hooks need not import this one). It asks sysfs, not
the alias index, which devices lack a driver: a device is driven exactly
when its `driver` link exists, whatever loaded it.

It looks at the devices that stand between the host and its NICs or disks:
- PCI devices of class 02 (network), 01 (mass storage) and 0c03 (USB
  controller);
- USB interfaces of class 08 (mass storage) and 02/06, 02/0d (CDC
  Ethernet ECM/NCM).
Each is named by bus address, vendor:device (PCI) or idVendor:idProduct
(USB, with its product string), class and modalias; the text says how to
find the kernel's driver for the modalias on the build machine
(`modprobe -R`) and how to pack it (`mkinitrd --driver`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from initpy.runtime.kernel import Kernel
from initpy.runtime.record import frozen

# PCI class (first two bytes, hex) -> (kind, what the operator calls it)
PCI_CLASSES: dict[str, tuple[str, str]] = {
    "0100": ("storage", "SCSI controller"),
    "0101": ("storage", "IDE controller"),
    "0104": ("storage", "RAID controller"),
    "0105": ("storage", "ATA controller"),
    "0106": ("storage", "SATA controller"),
    "0107": ("storage", "SAS controller"),
    "0108": ("storage", "NVMe controller"),
    "0180": ("storage", "storage controller"),
    "0200": ("network", "Ethernet controller"),
    "0280": ("network", "network controller"),
    "0c03": ("storage", "USB controller"),
}
USB_CLASSES: dict[tuple[str, str], tuple[str, str]] = {
    ("08", ""): ("storage", "USB mass storage"),
    ("02", "06"): ("network", "USB Ethernet (CDC ECM)"),
    ("02", "0d"): ("network", "USB Ethernet (CDC NCM)"),
}
PCI = "/sys/bus/pci/devices"
USB = "/sys/bus/usb/devices"


@frozen
class Driverless:
    kind: str  # "network" or "storage"
    what: str  # "Ethernet controller"
    bus: str  # "PCI" or "USB"
    address: str  # "0000:00:03.0" or "2-1:1.0"
    ids: str  # vendor:device
    modalias: str
    product: str = ""  # a USB device's product string
    packed: tuple[str, ...] = ()  # drivers in the initrd that match it (but did not bind)

    def line(self) -> str:
        product = f' "{self.product}"' if self.product else ""
        text = (
            f"{self.what} at {self.bus} {self.address}, id {self.ids}{product} "
            f"(modalias {self.modalias})"
        )
        if self.packed:
            text += f": the initrd's {', '.join(self.packed)} did not take it (see dmesg)"
        return text


def _read(kernel: Kernel, path: str) -> str:
    try:
        return kernel.read_text(path).strip()
    except OSError:
        return ""


def _entries(kernel: Kernel, folder: str) -> list[str]:
    try:
        return sorted(kernel.listdir(folder))
    except OSError:
        return []


def driverless(
    kernel: Kernel,
    kind: str | None = None,
    drivers_for: Callable[[str], Sequence[str]] = lambda modalias: (),
) -> Iterator[Driverless]:
    """NICs and storage controllers in sysfs that no driver has bound.

    `drivers_for(modalias)`: the initrd's drivers for a modalias (from its
    alias index), to tell "not in the initrd" from "in it, but it failed".
    """
    for address in _entries(kernel, PCI):
        d = f"{PCI}/{address}"
        pci_class = _read(kernel, f"{d}/class").removeprefix("0x")[:4].lower()
        known = PCI_CLASSES.get(pci_class)
        if known is None or kernel.exists(f"{d}/driver") or kind not in (None, known[0]):
            continue
        ids = ":".join(_read(kernel, f"{d}/{f}").removeprefix("0x") for f in ("vendor", "device"))
        modalias = _read(kernel, f"{d}/modalias")
        yield Driverless(
            known[0], known[1], "PCI", address, ids, modalias, "", tuple(drivers_for(modalias))
        )
    for address in _entries(kernel, USB):
        if ":" not in address:  # a USB device, not one of its interfaces
            continue
        d = f"{USB}/{address}"
        iclass = _read(kernel, f"{d}/bInterfaceClass").lower()
        isub = _read(kernel, f"{d}/bInterfaceSubClass").lower()
        known = USB_CLASSES.get((iclass, "")) or USB_CLASSES.get((iclass, isub))
        if known is None or kernel.exists(f"{d}/driver") or kind not in (None, known[0]):
            continue
        parent = f"{USB}/{address.split(':')[0]}"
        ids = ":".join(_read(kernel, f"{parent}/{f}") for f in ("idVendor", "idProduct"))
        modalias = _read(kernel, f"{d}/modalias")
        yield Driverless(
            known[0],
            known[1],
            "USB",
            address,
            ids,
            modalias,
            _read(kernel, f"{parent}/product"),
            tuple(drivers_for(modalias)),
        )


def rescue_text(devices: Sequence[Driverless], kernel_release: str) -> str:
    """The rescue reason's device part: what lacks a driver and how to add one."""
    if not devices:
        return ""
    lines = ["devices without a driver (a disk or NIC may be behind one):"]
    lines += [f"  - {device.line()}" for device in devices]
    unpacked = list(dict.fromkeys(d.modalias for d in devices if not d.packed and d.modalias))
    if unpacked:
        lines.append("To find their drivers, on the build machine run")
        lines += [f"  modprobe -S {kernel_release} -R '{alias}'" for alias in unpacked]
        lines += [
            "(add -d ROOT for an unpacked kernel), then rebuild the initrd with those modules:",
            "  mkinitrd.py ... --driver NAME   (or --drivers generic, the default)",
            "If modprobe names nothing, this kernel has no driver for the device: use a "
            "newer kernel.",
        ]
    return "\n".join(lines)
