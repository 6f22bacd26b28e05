"""The kernel's uevent wire format: the netlink protocol, its group, the datagram.

The kernel multicasts one datagram per device event on a
NETLINK_KOBJECT_UEVENT socket: "action@devpath\\0KEY=VALUE\\0...". The storage
hook waits for block devices with it, the modules hook loads the drivers
that late devices ask for (MODALIAS), and the fake kernel sends it; all
read and write it here. A leaf: it imports only the record decorators.
"""

from __future__ import annotations

from collections.abc import Mapping

from initpy.runtime.record import field, frozen

NETLINK_KOBJECT_UEVENT = 15
# Multicast group 1 carries the kernel's own events (udevd re-sends on group 2).
KERNEL_GROUP = 1


@frozen
class Uevent:
    """One kernel uevent, e.g. add@/devices/.../block/vda with SUBSYSTEM=block."""

    action: str
    devpath: str
    subsystem: str
    properties: Mapping[str, str] = field(default_factory=dict)


def parse_uevent(message: bytes) -> Uevent | None:
    """A kernel uevent datagram; None if not one (udevd's, or a lost burst b"")."""
    parts = message.split(b"\0")
    header = parts[0].decode("utf-8", errors="replace")
    if "@" not in header:
        return None  # udevd's "libudev" messages (group 2) have a binary header
    properties: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.decode("utf-8", errors="replace").partition("=")
        if sep:
            properties[key] = value
    action, _, devpath = header.partition("@")
    return Uevent(
        properties.get("ACTION", action),
        properties.get("DEVPATH", devpath),
        properties.get("SUBSYSTEM", ""),
        properties,
    )


def uevent_message(event: Uevent) -> bytes:
    """The datagram the kernel would send for `event` (for fakes and tests)."""
    fields = {
        "ACTION": event.action,
        "DEVPATH": event.devpath,
        "SUBSYSTEM": event.subsystem,
        **event.properties,
    }
    return (
        f"{event.action}@{event.devpath}\0" + "".join(f"{k}={v}\0" for k, v in fields.items())
    ).encode()
