"""Block devices for the storage states: find them in /sys, wait for them, list them.

After the modules load, disks appear asynchronously (virtio, SCSI and NVMe
probe in the background). `wait_for_devices` opens a kernel uevent socket
(NETLINK_KOBJECT_UEVENT, through `Kernel.netlink_socket()`) *before* scanning
/sys/class/block, then rescans only when the kernel says a block device
came or changed, until the caller's condition holds or the deadline
passes: no blind sleeps, and no event can be missed between the scan and
the wait. The kernel's own netlink multicast is used rather than pyudev's
kernel-source monitor because it is a plain `socket` call: no libudev.so
in the initrd, no import cost on PID 1's start-up path.

Each device is read from sysfs (size, model, serial, rotational flag,
whole disk or partition) and its superblock is probed (hooks.storage.labels),
because without udevd nothing else knows the labels.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence

from initpy.runtime.kernel import Kernel, NetlinkSocket
from initpy.runtime.record import frozen
from initpy.runtime.uevent import KERNEL_GROUP, NETLINK_KOBJECT_UEVENT, Uevent, parse_uevent

from .labels import Superblock, probe_all

SYS_CLASS_BLOCK = "/sys/class/block"
# When no uevent socket can be had, poll /sys this often.
POLL_SECONDS = 0.25


# -- block devices in sysfs --------------------------------------------------------


@frozen
class BlockDevice:
    """One entry of /sys/class/block: a whole disk or a partition."""

    name: str  # "vda", "vda1", "nvme0n1p2"
    path: str  # "/dev/vda"
    size_bytes: int
    partition: bool
    parent: str  # the whole disk of a partition; "" for a whole disk
    model: str
    serial: str
    rotational: bool | None  # None when sysfs does not say
    superblocks: tuple[Superblock, ...] = ()

    @property
    def superblock(self) -> Superblock | None:
        return self.superblocks[0] if self.superblocks else None

    @property
    def fstype(self) -> str:
        return self.superblock.fstype if self.superblock else ""

    @property
    def label(self) -> str:
        return self.superblock.label if self.superblock else ""

    def describe(self, partitions: Sequence[str] = ()) -> str:
        """One line for the operator: what the disk is and what is on it."""
        parts = [self.path, human_size(self.size_bytes)]
        if self.partition:
            parts.append(f"partition of /dev/{self.parent}")
        parts.append(f"model {self.model!r}" if self.model else "model unknown")
        if self.serial:
            parts.append(f"serial {self.serial!r}")
        if self.rotational is not None:
            parts.append("rotational" if self.rotational else "non-rotational")
        if self.superblock is None and partitions:
            parts.append("partitions " + ", ".join(partitions))
        elif self.superblock is None:
            parts.append("no filesystem initpy knows")
        else:
            parts.append(self.fstype)
            parts.append(f"label {self.label!r}" if self.label else "no label")
            if len(self.superblocks) > 1:
                others = ", ".join(s.fstype for s in self.superblocks[1:])
                parts.append(f"also has {others} signature(s): wipefs would show them")
        return ", ".join(parts)


def listing(devices: Sequence[BlockDevice]) -> list[str]:
    """`describe()` of every device, a whole disk naming its partitions."""
    return [d.describe([p.name for p in devices if p.parent == d.name]) for d in devices]


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def _read(kernel: Kernel, path: str) -> str:
    try:
        return kernel.read_text(path).strip()
    except OSError:
        return ""


def _parent(kernel: Kernel, name: str) -> str:
    """The whole disk of a partition: sysfs puts vda1 inside vda's folder."""
    try:
        target = kernel.readlink(f"{SYS_CLASS_BLOCK}/{name}")
        parts = target.rstrip("/").split("/")
        if len(parts) >= 2:
            return parts[-2]
    except OSError:
        pass
    return name.rstrip("0123456789").removesuffix("p") if name[-1:].isdigit() else name


def device_node(kernel: Kernel, name: str) -> str:
    """/dev/<name>, made from sysfs's dev (major:minor) if devtmpfs lacks it."""
    path = "/dev/" + name.replace("!", "/")  # cciss!c0d0 -> /dev/cciss/c0d0
    if not kernel.exists(path):
        numbers = _read(kernel, f"{SYS_CLASS_BLOCK}/{name}/dev").split(":")
        if len(numbers) == 2 and all(n.isdigit() for n in numbers):
            try:
                kernel.mknod(path, stat.S_IFBLK | 0o600, int(numbers[0]), int(numbers[1]))
            except OSError:
                pass
    return path


def read_device(kernel: Kernel, name: str) -> BlockDevice | None:
    """One block device from sysfs, probed; None for an empty one (no medium)."""
    base = f"{SYS_CLASS_BLOCK}/{name}"
    sectors = _read(kernel, f"{base}/size")
    size = int(sectors) * 512 if sectors.isdigit() else 0
    if size == 0:
        return None  # an unused loop device, an empty CD drive
    partition = kernel.exists(f"{base}/partition")
    disk = _parent(kernel, name) if partition else name
    disk_base = f"{SYS_CLASS_BLOCK}/{disk}"
    model = _read(kernel, f"{disk_base}/device/model")
    if not model and _read(kernel, f"{disk_base}/device/modalias").startswith("virtio"):
        model = "virtio disk"
    serial = _read(kernel, f"{disk_base}/serial") or _read(kernel, f"{disk_base}/device/serial")
    rotational_text = _read(kernel, f"{disk_base}/queue/rotational")
    rotational = None if rotational_text not in ("0", "1") else rotational_text == "1"
    path = device_node(kernel, name)

    def read(offset: int, size: int) -> bytes:
        return kernel.read_bytes(path, offset, size)

    superblocks = tuple(probe_all(read)) if kernel.exists(path) else ()
    return BlockDevice(
        name,
        path,
        size,
        partition,
        disk if partition else "",
        model,
        serial,
        rotational,
        superblocks,
    )


def scan(kernel: Kernel) -> list[BlockDevice]:
    """Every block device with a medium, whole disks and partitions, by name."""
    try:
        names = kernel.listdir(SYS_CLASS_BLOCK)
    except OSError:
        return []
    devices = []
    for name in names:
        device = read_device(kernel, name)
        if device is not None:
            devices.append(device)
    return devices


@frozen
class Waited:
    """The outcome of waiting for block devices."""

    devices: tuple[BlockDevice, ...]
    seconds: float
    satisfied: bool
    uevents: int  # block uevents seen while waiting
    polled: bool  # True when no uevent socket could be opened


def _events(messages: list[bytes]) -> list[Uevent]:
    """Parsed uevents; a lost burst (b"") counts as a block event: rescan."""
    events = []
    for message in messages:
        event = parse_uevent(message) if message else Uevent("overflow", "", "block")
        if event is not None:
            events.append(event)
    return events


def _block(events: list[Uevent]) -> bool:
    return any(e.subsystem == "block" for e in events)


def wait_for_devices(
    kernel: Kernel, satisfied: Callable[[list[BlockDevice]], bool], timeout: float
) -> Waited:
    """Scan, then rescan on every block uevent, until `satisfied` or `timeout`.

    Once satisfied, the events already queued are drained once more, so a
    sibling disk that arrived in the same burst (a duplicate label, the
    second member of a btrfs) is seen too.
    """
    start = kernel.monotonic()
    deadline = start + timeout
    try:
        source: NetlinkSocket | None = kernel.netlink_socket(NETLINK_KOBJECT_UEVENT, KERNEL_GROUP)
    except OSError:
        source = None
    seen = 0
    try:
        devices = scan(kernel)
        while not satisfied(devices):
            left = deadline - kernel.monotonic()
            if left <= 0:
                return Waited(
                    tuple(devices), kernel.monotonic() - start, False, seen, source is None
                )
            if source is None:
                kernel.sleep(min(POLL_SECONDS, left))
                devices = scan(kernel)
                continue
            events = _events(source.receive(left))
            if _block(events):
                seen += sum(1 for e in events if e.subsystem == "block")
                devices = scan(kernel)
        if source is not None:
            late = _events(source.receive(0))
            if _block(late):
                seen += sum(1 for e in late if e.subsystem == "block")
                devices = scan(kernel)
        return Waited(tuple(devices), kernel.monotonic() - start, True, seen, source is None)
    finally:
        if source is not None:
            source.close()
