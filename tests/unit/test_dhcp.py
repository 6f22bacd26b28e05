"""hooks.network.dhcpclient: pyroute2's client configured against its pitfalls, leases, the race."""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from hooks.network import dhcpclient as dhcp
from hooks.network.dhcpclient import Lease, PyrouteDhcpClient, choose, lease_from_options, race
from initpy.devtools.fake_network import FakeNetlink, FakeNic


def test_the_client_sends_no_hostname_and_requests_one() -> None:
    from pyroute2.dhcp.enums.dhcp import Option

    config = PyrouteDhcpClient("eth0", "52:54:00:12:34:56")._config()
    assert config.host_name is None  # not gethostname()'s "(none)"
    assert Option.HOST_NAME in config.requested_parameters
    assert Option.ROUTER in config.requested_parameters


def test_the_client_leaves_pid1s_signals_and_the_lease_alone() -> None:
    config = PyrouteDhcpClient("eth0", "52:54:00:12:34:56")._config()
    assert config.handle_signals is False
    assert config.release is False  # decided per client when the race stops it
    assert tuple(config.hooks) == ()  # no client ever configures an address
    assert config.write_pidfile is False


def test_the_lease_type_writes_and_reads_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = PyrouteDhcpClient("eth0", "52:54:00:12:34:56")._config()
    (tmp_path / "eth0.lease.json").write_text("{}")  # a stale lease must not be loaded
    assert config.lease_type.load("eth0") is None
    lease = config.lease_type(
        ack={"options": {}, "yiaddr": "10.0.0.5"}, interface="eth0", server_mac="52:54:00:00:00:01"
    )
    lease.dump()
    assert sorted(os.listdir(tmp_path)) == ["eth0.lease.json"]


def test_retransmission_starts_at_one_second() -> None:
    assert list(itertools.islice(dhcp.fast_backoff(), 6)) == [1, 2, 4, 8, 8, 8]


def test_a_lease_without_router_dns_or_mask_is_read_without_error() -> None:
    lease = lease_from_options(
        "eth0", "52:54:00:12:34:56", "192.168.5.9", {"server_id": "192.168.5.1", "lease_time": 3600}
    )
    assert (lease.router, lease.dns, lease.hostname) == (None, (), None)
    assert lease.prefixlen == 24  # classful, as RFC 2131 clients do without option 1
    assert lease.cidr == "192.168.5.9/24"
    assert lease.broadcast_or_computed == "192.168.5.255"


def test_a_full_lease_is_read() -> None:
    lease = lease_from_options(
        "eth0",
        "52:54:00:12:34:56",
        "10.0.2.15",
        {
            "subnet_mask": "255.255.0.0",
            "router": ["10.0.2.2", "10.0.2.3"],
            "name_server": ["10.0.2.3"],
            "host_name": b"builder\x00",
            "domain_name": "lab.example",
            "lease_time": 86400,
        },
    )
    assert lease.prefixlen == 16
    assert lease.router == "10.0.2.2"
    assert lease.dns == ("10.0.2.3",)
    assert (lease.hostname, lease.domain) == ("builder", "lab.example")


def test_the_lowest_mac_wins_whatever_its_spelling() -> None:
    leases = [
        Lease("eth0", "52:54:00:00:00:0b", "10.0.0.2", 24),
        Lease("eth1", "52:54:00:00:00:0A", "10.0.0.3", 24),
        Lease("eth2", "52-54-00-00-01-00", "10.0.0.4", 24),
    ]
    assert choose(leases).nic == "eth1"


@dataclass
class StuckClient:
    """Leases at once, then never finishes stopping."""

    lease_now: Lease | None

    async def start(self) -> None:
        pass

    async def lease(self) -> Lease:
        if self.lease_now is None:
            await asyncio.Event().wait()
        assert self.lease_now is not None
        return self.lease_now

    def progress(self) -> str:
        return "stuck"

    async def stop(self, release: bool) -> None:
        await asyncio.Event().wait()


class StuckNetwork(FakeNetlink):
    def dhcp_client(self, name: str, mac: str) -> StuckClient:
        nic = self._nic(name)
        return StuckClient(nic.lease)


def test_a_client_that_will_not_stop_does_not_hold_the_boot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dhcp, "STOP_TIMEOUT", 0.05)
    won = Lease("eth0", "52:54:00:00:00:01", "10.0.0.2", 24)
    network = StuckNetwork(
        nics=[FakeNic("eth0", won.mac, lease=won), FakeNic("eth1", "52:54:00:00:00:02")]
    )
    result = race(
        network, [("eth0", won.mac), ("eth1", "52:54:00:00:00:02")], timeout=5, window=0.01
    )
    assert result.winner == won
    outcomes = {a.nic: a.outcome for a in result.attempts}
    assert outcomes["eth1"].startswith("failed: stopping failed: TimeoutError")


def test_a_nic_that_fails_does_not_stop_the_others() -> None:
    won = Lease("eth1", "52:54:00:00:00:02", "10.0.0.2", 24)
    network = FakeNetlink(
        nics=[
            FakeNic("eth0", "52:54:00:00:00:01", dhcp_error="ENETDOWN"),
            FakeNic("eth1", won.mac, lease=won, lease_delay=0.02),
        ]
    )
    result = race(network, [("eth0", "52:54:00:00:00:01"), ("eth1", won.mac)], timeout=5)
    assert result.winner == won
    assert result.attempts[0].outcome == "failed: OSError: ENETDOWN"


@pytest.mark.parametrize("count", [0, 1])
def test_no_nic_no_lease(count: int) -> None:
    nics = [FakeNic(f"eth{i}", f"52:54:00:00:00:0{i}") for i in range(count)]
    result = race(FakeNetlink(nics=nics), [(n.name, n.mac) for n in nics], timeout=0.05)
    assert result.winner is None
    assert all("no lease within 0.05 s" in a.outcome for a in result.attempts)
