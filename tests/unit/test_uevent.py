"""The uevent datagram (initpy.runtime.uevent): what the kernel sends, read and written."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from initpy.runtime.uevent import Uevent, parse_uevent, uevent_message


def test_a_kernel_uevent_is_parsed() -> None:
    message = (
        b"add@/devices/pci0000:00/0000:00:04.0/virtio1/block/vda\0ACTION=add\0"
        b"DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1/block/vda\0SUBSYSTEM=block\0"
        b"MAJOR=254\0MINOR=0\0DEVNAME=vda\0DEVTYPE=disk\0SEQNUM=812\0"
    )
    event = parse_uevent(message)
    assert event is not None
    assert (event.action, event.subsystem, event.properties["DEVNAME"]) == ("add", "block", "vda")
    assert event.devpath.endswith("/block/vda")


def test_udevs_own_messages_and_garbage_are_not_uevents() -> None:
    assert parse_uevent(b"libudev\0\xfe\xed\xca\xfe") is None
    assert parse_uevent(b"") is None  # a lost burst (ENOBUFS) is not an event
    event = parse_uevent(b"change@/x\0\xff\xfe=\x00NOEQUALS\0")
    assert event is not None and event.action == "change" and event.subsystem == ""


def test_a_modalias_uevent_carries_its_properties() -> None:
    """What the modules hook reads from a late device's `add`."""
    event = parse_uevent(b"add@/devices/usb1/1-1\0ACTION=add\0MODALIAS=usb:v0781p5567\0")
    assert event is not None
    assert dict(event.properties) == {"ACTION": "add", "MODALIAS": "usb:v0781p5567"}


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\0=@"))
_KEYS = _TEXT.filter(lambda k: k != "" and k not in ("ACTION", "DEVPATH", "SUBSYSTEM"))


@given(_TEXT, _TEXT, _TEXT, st.dictionaries(_KEYS, _TEXT))
def test_what_the_fake_sends_is_what_the_parser_reads(
    action: str, devpath: str, subsystem: str, properties: dict[str, str]
) -> None:
    read = parse_uevent(uevent_message(Uevent(action, devpath, subsystem, properties)))
    assert read is not None
    assert (read.action, read.devpath, read.subsystem) == (action, devpath, subsystem)
    assert {k: read.properties[k] for k in properties} == properties
