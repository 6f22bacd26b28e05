"""Event waits end at their deadline however many events keep arriving (issue 9, finding 8).

A device that flaps forever keeps its netlink socket readable. The seam's
BatchReader takes at most `limit` datagrams per receive; the waits built on
it (block devices in hooks/storage/blockdev.py, carrier in
hooks/network/netlink.py) re-check their deadline after each batch. Here the
fake kernel's FloodingSocket plays the endless stream under the real reader:
every datagram moves the fake clock on, and a receive() that takes 100000 of
them without returning fails the test, where a drain "until empty" would hang.
"""

from __future__ import annotations

import errno
import os

import pytest

from hooks.network.netlink import NETLINK_ROUTE, KernelNetlink, Link, wait_for_carrier
from hooks.storage.blockdev import wait_for_devices
from initpy.devtools.fake import FakeKernel
from initpy.devtools.fake_events import FLOOD_TRIPWIRE, FloodingSocket
from initpy.devtools.fake_network import FakeNetlink, FakeNic
from initpy.runtime import cmdline
from initpy.runtime.driver import CORE_PARAMETERS
from initpy.runtime.hook import BootContext, BootFailure
from initpy.runtime.report import Report
from initpy.runtime.sockets import BatchReader
from initpy.runtime.uevent import NETLINK_KOBJECT_UEVENT, Uevent, uevent_message
from tests.unit.conftest import hook_module
from tests.unit.test_labels import ext_image

EVERY = 0.001  # fake seconds between two events of the flood
BATCH = 256  # the seam's default bound per receive()
FLAPPING_DISK = Uevent("change", "/devices/virtual/block/vdz", "block", {"DEVNAME": "vdz"})


def flooded(
    tmp_path: os.PathLike[str], protocol: int, datagram: bytes, cmdline_text: str = ""
) -> FakeKernel:
    return FakeKernel(
        root=os.path.join(str(tmp_path), "root"),
        cmdline=cmdline_text,
        floods={protocol: datagram},
        flood_every=EVERY,
        flood_until=60.0,  # every wait here ends within seconds
    )


# -- the seam's reader ------------------------------------------------------------------


def test_a_receive_from_an_endless_stream_returns_one_bounded_batch(
    tmp_path: os.PathLike[str],
) -> None:
    k = flooded(tmp_path, NETLINK_KOBJECT_UEVENT, uevent_message(FLAPPING_DISK))
    source = k.netlink_socket(NETLINK_KOBJECT_UEVENT, 1)
    start = k.clock
    for batch in range(1, 4):
        assert len(source.receive(30.0)) == BATCH
        assert k.clock - start == pytest.approx(batch * BATCH * EVERY)
    assert len(source.receive(30.0, limit=10)) == 10
    source.close()


class LosingSocket:
    """A socket whose every read says the kernel dropped messages (ENOBUFS), forever."""

    def __init__(self) -> None:
        self.flood = FloodingSocket(b"", lambda _: None, 0.0)

    def fileno(self) -> int:
        return self.flood.fileno()

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        self.flood.recv(bufsize)  # the tripwire
        raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))

    def close(self) -> None:
        self.flood.close()


def test_endless_lost_messages_are_a_bounded_batch_too() -> None:
    reader = BatchReader(LosingSocket())
    assert reader.receive(1.0) == [b""] * BATCH
    reader.close()


def test_the_tripwire_fails_a_reader_that_drains_until_empty() -> None:
    flood = FloodingSocket(b"x", lambda _: None, 0.0)
    flood.fileno()
    with pytest.raises(AssertionError, match="the reader has no bound"):
        while flood.recv(65536):  # the drain loop the seam had before
            pass
    flood.close()
    assert flood.received == FLOOD_TRIPWIRE


# -- block devices ------------------------------------------------------------------------


def test_the_disk_wait_ends_at_its_deadline_under_endless_uevents(
    tmp_path: os.PathLike[str],
) -> None:
    k = flooded(tmp_path, NETLINK_KOBJECT_UEVENT, uevent_message(FLAPPING_DISK))
    k.add_block_device("vda", ext_image("not-ours"))
    timeout = 2.0
    start = k.clock
    waited = wait_for_devices(k, lambda devices: False, timeout)
    assert not waited.satisfied
    # At the deadline, overrun by at most the batch that was being read.
    assert timeout <= waited.seconds <= timeout + BATCH * EVERY
    assert k.clock - start == pytest.approx(waited.seconds)
    assert waited.uevents >= int(timeout / EVERY)  # it did see the flood
    assert [d.name for d in waited.devices] == ["vda"]
    (flood,) = k.flooding
    assert flood.received == waited.uevents  # and read nothing it did not count


def test_find_disks_goes_to_rescue_at_its_deadline_under_endless_uevents(
    tmp_path: os.PathLike[str],
) -> None:
    storage = hook_module("storage")
    k = flooded(
        tmp_path, NETLINK_KOBJECT_UEVENT, uevent_message(FLAPPING_DISK), "initpy.timeout.disks=3"
    )
    k.add_block_device("vda", ext_image("buildos.state"))
    ctx = BootContext(kernel=k, report=Report(k))
    ctx.config = cmdline.parse(k.cmdline, [*CORE_PARAMETERS, *storage.HOOK.parameters])
    start = k.clock
    with pytest.raises(BootFailure) as failed:
        storage.find_disks(ctx)
    assert 3.0 <= k.clock - start <= 3.0 + BATCH * EVERY
    assert "no disk labelled buildos.machines" in failed.value.reason
    assert "Disks found (after waiting 3." in failed.value.reason


# -- carrier --------------------------------------------------------------------------------


class FlappingNetlink(FakeNetlink):
    """eth0's link goes up and down forever, a change every `EVERY` s; eth1 never gets carrier."""

    def __init__(self) -> None:
        super().__init__(
            nics=[
                FakeNic("eth0", "52:54:00:00:00:01"),
                FakeNic("eth1", "52:54:00:00:00:02", carrier_at=None),
            ]
        )
        self.changes = 0

    def wait_link_change(self, timeout: float) -> bool:
        assert self.kernel is not None
        self.changes += 1
        self.kernel.clock += min(EVERY, timeout)
        self.nics[0].carrier_at = 0.0 if self.changes % 2 else None
        return True


def test_the_carrier_wait_ends_at_its_deadline_while_a_link_flaps_forever(
    tmp_path: os.PathLike[str],
) -> None:
    network = hook_module("network")
    flapping = FlappingNetlink()
    k = FakeKernel(
        root=os.path.join(str(tmp_path), "root"),
        cmdline="initpy.timeout.carrier=2",
        network=flapping,
    )
    ctx = BootContext(kernel=k, report=Report(k))
    ctx.config = cmdline.parse(k.cmdline, [*CORE_PARAMETERS, *network.HOOK.parameters])
    start = k.clock
    detail = network.find_nics(ctx)
    assert k.clock - start == pytest.approx(2.0)
    assert flapping.changes >= int(2.0 / EVERY)
    nics = ctx.get(network.NICS, ())
    assert [n.name for n in nics] == ["eth0", "eth1"] and not nics[1].carrier
    assert "after 2.00 s" in detail


class ScriptedLinks(KernelNetlink):
    """The real link-event wait (the seam's socket, KernelNetlink.wait_link_change);
    the links themselves scripted, so nothing of the host is read or changed."""

    def __init__(self, kernel: FakeKernel) -> None:
        self._kernel = kernel
        self._events = None
        self.waits = 0

    def links(self) -> list[Link]:
        return [Link(2, "eth0", "52:54:00:00:00:01", up=True, carrier=False)]

    def set_up(self, name: str) -> None:
        pass

    def wait_link_change(self, timeout: float) -> bool:
        self.waits += 1
        return super().wait_link_change(timeout)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None


def test_the_real_link_event_wait_ends_at_its_deadline_under_endless_link_events(
    tmp_path: os.PathLike[str],
) -> None:
    # Any RTM_NEWLINK will do: the wait only asks whether something changed.
    k = flooded(tmp_path, NETLINK_ROUTE, bytes(32))
    nl = ScriptedLinks(k)
    links, waited = wait_for_carrier(nl, ["eth0"], 1.5, k.monotonic)
    nl.close()
    assert not links["eth0"].carrier
    assert 1.5 <= waited <= 1.5 + BATCH * EVERY
    (flood,) = k.flooding
    assert nl.waits == -(-flood.received // BATCH)  # every wait returned one batch
