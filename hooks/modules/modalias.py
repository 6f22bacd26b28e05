"""Drivers from the hardware: the devices' modaliases, matched against the initrd's index.

The builder writes the alias index of the packed drivers
(initpy.runtime.layout.AliasIndex at layout.MODALIAS_INDEX). Here, at boot,
every device on every bus is read from sysfs (`/sys/bus/*/devices/*`: every
device with a modalias sits on a bus, so two directory levels suffice, no
walk of /sys/devices), and later the MODALIAS of each `add` uevent; both
become "module M, asked for by device D"; `layout.load_order` then puts
each module's dependencies (the manifest's `needs`) before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from initpy.runtime.kernel import Kernel
from initpy.runtime.layout import AliasIndex
from initpy.runtime.record import frozen

SYS_BUS = "/sys/bus"


@frozen
class Device:
    """A device as the kernel announces it: where it is, and its modalias."""

    where: str  # "pci/0000:00:03.0" (bus/name) or a uevent's DEVPATH
    modalias: str


@frozen
class Wanted:
    """A module some device asked for, and which device (the first one)."""

    module: str
    device: Device
    alias: str  # the modules.alias glob that matched


def read_modalias(kernel: Kernel, folder: str) -> str | None:
    """A device's modalias: MODALIAS= in its `uevent`, else its `modalias` file.

    Every device has a `uevent` file, and it carries MODALIAS= wherever the
    bus gives one, so one open per device suffices; most devices on a bus
    have no `modalias` file (cpu, memory, ...), and a failed open of it cost
    as much as a read (sysfs lookups are the scan's whole time under TCG).
    """
    try:
        for line in kernel.read_text(f"{folder}/uevent").splitlines():
            if line.startswith("MODALIAS="):
                return line[9:].strip() or None
        return None
    except OSError:
        pass
    try:
        return kernel.read_text(f"{folder}/modalias").strip() or None
    except OSError:
        return None


def sysfs_devices(kernel: Kernel) -> list[Device]:
    """Every device with a modalias, as /sys/bus lists them."""
    found = []
    try:
        buses = sorted(kernel.listdir(SYS_BUS))
    except OSError:
        return []
    for bus in buses:
        folder = f"{SYS_BUS}/{bus}/devices"
        try:
            names = sorted(kernel.listdir(folder))
        except OSError:
            continue
        for name in names:
            modalias = read_modalias(kernel, f"{folder}/{name}")
            if modalias:
                found.append(Device(f"{bus}/{name}", modalias))
    return found


def uevent_device(properties: Mapping[str, str]) -> Device | None:
    """The device of an `add` uevent that carries a MODALIAS; None for any other.

    `bind` events repeat MODALIAS once a driver is bound: nothing new to load.
    """
    modalias = properties.get("MODALIAS")
    if properties.get("ACTION") != "add" or not modalias:
        return None
    return Device(properties.get("DEVPATH", "?"), modalias)


def wanted(index: AliasIndex, devices: Iterable[Device]) -> list[Wanted]:
    """The modules the devices ask for, each once (the first device that asked)."""
    seen: dict[str, dict[str, str]] = {}
    found: dict[str, Wanted] = {}
    for device in devices:
        hits = seen.get(device.modalias)
        if hits is None:
            hits = seen[device.modalias] = index.modules_for(device.modalias)
        for module, glob in hits.items():
            found.setdefault(module, Wanted(module, device, glob))
    return list(found.values())
