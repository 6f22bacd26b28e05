"""Which device drivers the initrd packs: mkinitrd --drivers and --driver.

Owned by the builder (mkinitrd); initpy.builder.kmod then adds their
dependencies and stages them. `generic` is every driver a build host may
boot from or network through, chosen by where the module lives in the
kernel tree (`RULES`, less `EXCLUDE`); `host`, of those the ones the build
machine's own devices ask for (their modaliases) or that it has loaded;
`none`; plus `--driver NAME`s. At boot a driver loads only when a device
asks for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from enum import StrEnum

from initpy.builder.kmod import SCSI_DISK, ModuleError, ModuleTree, canonical


class Drivers(StrEnum):
    """mkinitrd --drivers: which device drivers the initrd packs."""

    GENERIC = "generic"
    HOST = "host"
    NONE = "none"


# (kernel-tree path prefix, why): a module whose path starts with a prefix is
# in the generic set, unless an EXCLUDE prefix matches.
RULES: tuple[tuple[str, str], ...] = (
    ("kernel/drivers/net/ethernet/", "Ethernet NIC"),
    ("kernel/drivers/net/phy/", "Ethernet PHY"),
    ("kernel/drivers/net/mdio/", "Ethernet PHY bus"),
    ("kernel/drivers/net/virtio_net.ko", "virtio NIC"),
    ("kernel/drivers/net/vmxnet3/", "VMware NIC"),
    ("kernel/drivers/net/hyperv/", "Hyper-V NIC"),
    ("kernel/drivers/net/xen-netfront.ko", "Xen NIC"),
    ("kernel/drivers/net/usb/r8152.ko", "USB Ethernet"),
    ("kernel/drivers/net/usb/ax88179_178a.ko", "USB Ethernet"),
    ("kernel/drivers/net/usb/asix.ko", "USB Ethernet"),
    ("kernel/drivers/net/usb/cdc_ether.ko", "USB Ethernet"),
    ("kernel/drivers/net/usb/cdc_ncm.ko", "USB Ethernet"),
    ("kernel/drivers/net/usb/smsc95xx.ko", "USB Ethernet"),
    ("kernel/drivers/net/usb/lan78xx.ko", "USB Ethernet"),
    ("kernel/drivers/net/usb/aqc111.ko", "USB Ethernet"),
    ("kernel/drivers/ata/", "SATA/PATA controller"),
    ("kernel/drivers/nvme/host/nvme.ko", "NVMe controller"),
    ("kernel/drivers/scsi/", "SCSI/SAS/RAID HBA"),
    ("kernel/drivers/message/fusion/", "LSI Fusion SAS/SPI HBA"),
    ("kernel/drivers/usb/host/", "USB host controller"),
    ("kernel/drivers/usb/storage/", "USB storage"),
    ("kernel/drivers/block/virtio_blk.ko", "virtio disk"),
    ("kernel/drivers/block/xen-blkfront.ko", "Xen disk"),
    ("kernel/drivers/virtio/virtio_pci.ko", "virtio PCI transport"),
    ("kernel/drivers/hv/hv_vmbus.ko", "Hyper-V bus"),
)
EXCLUDE: tuple[str, ...] = (
    "kernel/drivers/ata/pata_pcmcia.ko",
    "kernel/drivers/scsi/pcmcia/",
    # SAN and offload (Fibre Channel, FCoE, iSCSI): not how a build host boots;
    # lpfc and qla2xxx alone are about 3 MB.
    "kernel/drivers/scsi/lpfc/",
    "kernel/drivers/scsi/qla2xxx/",
    "kernel/drivers/scsi/qla4xxx/",
    "kernel/drivers/scsi/bfa/",
    "kernel/drivers/scsi/csiostor/",
    "kernel/drivers/scsi/fcoe/",
    "kernel/drivers/scsi/fnic/",
    "kernel/drivers/scsi/bnx2fc/",
    "kernel/drivers/scsi/qedf/",
    "kernel/drivers/scsi/libfc/",
    "kernel/drivers/scsi/bnx2i/",
    "kernel/drivers/scsi/qedi/",
    "kernel/drivers/scsi/be2iscsi/",
    "kernel/drivers/scsi/cxgbi/",
    "kernel/drivers/scsi/iscsi_",
    "kernel/drivers/scsi/libiscsi",
    "kernel/drivers/scsi/scsi_transport_iscsi.ko",
    "kernel/drivers/scsi/scsi_transport_fc.ko",
    "kernel/drivers/scsi/snic/",
    # SCSI upper-level drivers other than disks
    "kernel/drivers/scsi/st.ko",
    "kernel/drivers/scsi/ch.ko",
    "kernel/drivers/scsi/sr_mod.ko",
    "kernel/drivers/scsi/sg.ko",
    "kernel/drivers/scsi/ses.ko",
    "kernel/drivers/scsi/scsi_debug.ko",
    # the USB debug-capability driver living under usb/host
    "kernel/drivers/usb/host/xhci-dbc",
)


def generic_drivers(tree: ModuleTree) -> dict[str, str]:
    """Module -> why it is in the generic set (the rule its path matched)."""
    chosen: dict[str, str] = {}
    for name, path in sorted(tree.paths.items()):
        if any(path.startswith(prefix) for prefix in EXCLUDE) or name.endswith("_cs"):
            continue  # _cs: PCMCIA cards
        for prefix, why in RULES:
            if path.startswith(prefix):
                chosen[name] = why
                break
    if SCSI_DISK in tree.paths:
        chosen[SCSI_DISK] = "SCSI disk"
    return chosen


def read_modalias(device_dir: str) -> str | None:
    """A device's modalias: its `modalias` file, else MODALIAS= in `uevent`."""
    try:
        with open(os.path.join(device_dir, "modalias")) as f:
            return f.read().strip() or None
    except OSError:
        pass
    try:
        with open(os.path.join(device_dir, "uevent")) as f:
            for line in f:
                if line.startswith("MODALIAS="):
                    return line[9:].strip() or None
    except OSError:
        pass
    return None


def host_modaliases(sys_root: str = "/sys") -> list[tuple[str, str]]:
    """(bus/device, modalias) of every device of the build machine."""
    found = []
    bus_root = os.path.join(sys_root, "bus")
    for bus in sorted(os.listdir(bus_root)) if os.path.isdir(bus_root) else []:
        folder = os.path.join(bus_root, bus, "devices")
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            modalias = read_modalias(os.path.join(folder, name))
            if modalias:
                found.append((f"{bus}/{name}", modalias))
    return found


def loaded_modules(proc_modules: str = "/proc/modules") -> list[str]:
    try:
        with open(proc_modules) as f:
            return [line.split()[0] for line in f if line.strip()]
    except OSError:
        return []


def host_drivers(
    tree: ModuleTree,
    devices: Iterable[tuple[str, str]],
    loaded: Iterable[str] = (),
) -> dict[str, str]:
    """Of the generic set, the drivers these devices ask for or that are loaded."""
    candidates = generic_drivers(tree)
    index = tree.full_index()
    chosen: dict[str, str] = {}
    for where, modalias in devices:
        for module in index.modules_for(modalias):
            if module in candidates:
                chosen.setdefault(module, f"{candidates[module]} for {where}")
    for name in loaded:
        name = canonical(name)
        if name in candidates:
            chosen.setdefault(name, f"{candidates[name]}, loaded on the build machine")
    return chosen


def choose_drivers(
    tree: ModuleTree,
    mode: Drivers,
    extra: Sequence[str] = (),
    sys_root: str = "/sys",
    proc_modules: str = "/proc/modules",
) -> dict[str, str]:
    """Driver -> why, for --drivers MODE plus --driver EXTRA names."""
    if mode == Drivers.GENERIC:
        chosen = generic_drivers(tree)
    elif mode == Drivers.HOST:
        chosen = host_drivers(tree, host_modaliases(sys_root), loaded_modules(proc_modules))
    else:
        chosen = {}
    for word in extra:
        name = tree.lookup(word)
        if name is None:
            raise ModuleError(
                f"--driver {word}: no such module in {tree.top}/modules.dep, and not built "
                f"into kernel {tree.version}",
                f"find the driver for a device with `modprobe -S {tree.version} -R MODALIAS` "
                "on a machine with this kernel",
            )
        chosen.setdefault(name, "--driver")
    return chosen
