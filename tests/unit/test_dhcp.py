"""The renewer's pyroute2 client against its pitfalls, leases read and checked, the race."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hooks.network import race as race_module
from hooks.network.lease import BadLease, Lease, checked, lease_from_options
from hooks.network.race import choose, race
from hooks.network.renewer import client_config
from initpy.devtools.fake_network import FakeNetlink, FakeNic


def test_the_renewer_sends_no_hostname_and_asks_what_the_boot_asks() -> None:
    from pyroute2.dhcp.enums.dhcp import Option

    from hooks.network.dhcppacket import VENDOR_ID, backoff

    config = client_config("br0", None, ())
    assert config.host_name is None  # not gethostname()'s "(none)"
    assert Option.HOST_NAME in config.requested_parameters
    assert Option.ROUTER in config.requested_parameters
    assert (config.vendor_id, config.retransmission) == (VENDOR_ID, backoff)


def test_the_renewer_keeps_the_lease_when_it_stops_and_takes_its_own_signals() -> None:
    config = client_config("br0", None, ())
    assert config.release is False  # a stopped renewer leaves br0's address in place
    assert config.handle_signals is True  # not PID 1: USR1 renews, USR2 rebinds, HUP restarts
    assert config.write_pidfile is False


def test_the_renewers_lease_type_writes_and_reads_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = client_config("br0", None, ())
    (tmp_path / "br0.lease.json").write_text("{}")  # a stale lease must not be loaded
    assert config.lease_type.load("br0") is None
    lease = config.lease_type(
        ack={"options": {}, "yiaddr": "10.0.0.5"}, interface="br0", server_mac="52:54:00:00:00:01"
    )
    lease.dump()
    assert sorted(os.listdir(tmp_path)) == ["br0.lease.json"]


def test_the_renewer_starts_from_the_boots_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hooks.network.dhcppacket import BoundLease

    monkeypatch.chdir(tmp_path)
    ack = {"options": {"lease_time": 3600}, "yiaddr": "10.0.0.5"}
    config = client_config("br0", BoundLease(ack, "52:54:00:00:00:01", 1000.0, "10.0.0.5"), ())
    carried = config.lease_type.load("br0")
    assert (carried.ip, carried.server_mac, carried.obtained) == (
        "10.0.0.5",
        "52:54:00:00:00:01",
        1000.0,
    )
    assert os.listdir(tmp_path) == []


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
    monkeypatch.setattr(race_module, "STOP_TIMEOUT", 0.05)
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


# -- every value a lease carries is checked before it is used ------------------------------

HOSTILE_OPTIONS: dict[str, object] = {
    "subnet_mask": "255.255.255.0",
    "server_id": "10.0.2.2",
    "router": ["10.0.3.1"],  # not in the lease's subnet
    "name_server": ["10.0.2.3", "0.0.0.0", "224.0.0.251", "127.0.0.53", "6.6.6.6"],
    "host_name": "x;reboot\x1b[2J",
    "domain_name": "lab.example\nnameserver 6.6.6.6\noptions ndots:15",
    "broadcast_address": "10.0.2.7",
    "lease_time": 0,
}


def test_hostile_values_are_dropped_each_with_a_problem_naming_it_escaped() -> None:
    lease = lease_from_options("eth0", "52:54:00:12:34:56", "10.0.2.15", HOSTILE_OPTIONS)
    assert (lease.address, lease.prefixlen, lease.server) == ("10.0.2.15", 24, "10.0.2.2")
    assert lease.router is None and lease.hostname is None and lease.domain is None
    assert lease.broadcast is None and lease.lease_time is None
    # 6.6.6.6 is a unicast address: a DHCP server may name any DNS server it likes.
    assert lease.dns == ("10.0.2.3", "6.6.6.6")
    problems = "\n".join(lease.problems)
    for expected in (
        "eth0: router '10.0.3.1' dropped: expected another host's address inside 10.0.2.0/24",
        "eth0: DNS server '0.0.0.0' dropped: expected a unicast IPv4 address",
        "eth0: DNS server '224.0.0.251' dropped",
        "eth0: DNS server '127.0.0.53' dropped",
        "eth0: host name 'x;reboot\\x1b[2J' dropped: expected a host name",
        "eth0: domain name 'lab.example\\nnameserver 6.6.6.6\\noptions ndots:15' dropped: "
        "expected a domain name",
        "eth0: broadcast address '10.0.2.7' dropped: expected 10.0.2.255",
        "eth0: lease time 0 dropped: expected 1 to 4294967295 seconds",
    ):
        assert expected in problems
    assert all(p.isprintable() for p in lease.problems)  # repr() escaped the values


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"subnet_mask": "255.0.255.0"}, "subnet mask '255.0.255.0' dropped"),
        ({"subnet_mask": "128.0.0.0"}, "prefix 1 dropped: expected a subnet of /8 to /32"),
        ({"router": ["10.0.2.15"]}, "router '10.0.2.15' dropped"),  # the host's own
        ({"router": ["10.0.2.255"]}, "router '10.0.2.255' dropped"),  # the broadcast
        ({"router": [1, 2]}, "router [1, 2] dropped: expected a list of IPv4 addresses"),
        ({"ntp_servers": ["127.0.0.1"]}, "NTP server '127.0.0.1' dropped: expected a unicast"),
        ({"ntp_servers": b"\n\0\0\1\7"}, "NTP servers b'\\n\\x00\\x00\\x01\\x07' dropped"),
        ({"host_name": [0xFF, 0xFE]}, "host name [255, 254] dropped: expected text"),
        ({"host_name": "-leading.dash"}, "host name '-leading.dash' dropped"),
        ({"host_name": "a" * 64}, "dropped: expected a host name"),
        ({"server_id": "255.255.255.255"}, "server identifier '255.255.255.255' dropped"),
        ({"lease_time": "forever"}, "lease time 'forever' dropped"),
        ({"lease_time": -7}, "lease time -7 dropped"),
    ],
)
def test_each_bad_value_is_dropped(options: dict[str, object], problem: str) -> None:
    full: dict[str, object] = {"subnet_mask": "255.255.255.0", **options}
    lease = lease_from_options("eth0", "52:54:00:12:34:56", "10.0.2.15", full)
    assert any(problem in p for p in lease.problems), lease.problems


def test_an_infinite_lease_is_kept() -> None:
    # pyroute2 reads option 51 as signed: 0xffffffff arrives as -1.
    lease = lease_from_options("eth0", "52:54:00:12:34:56", "10.0.2.15", {"lease_time": -1})
    assert lease.lease_time == 0xFFFFFFFF and lease.problems == ()


@pytest.mark.parametrize(
    "address", ["0.0.0.0", "127.0.0.1", "169.254.7.7", "224.0.0.5", "250.1.1.1", "10.0.2.0"]
)
def test_an_address_the_host_cannot_take_refuses_the_lease(address: str) -> None:
    with pytest.raises(BadLease, match=re.escape(repr(address))):
        lease_from_options("eth0", "52:54:00:12:34:56", address, {"subnet_mask": "255.255.255.0"})


def test_a_checked_lease_passes_again_unchanged() -> None:
    lease = lease_from_options("eth0", "52:54:00:12:34:56", "10.0.2.15", HOSTILE_OPTIONS)
    again = checked(lease)
    assert again == lease and again.problems == lease.problems


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.lists(st.text(max_size=20), max_size=4))
def test_no_checked_name_or_server_can_carry_a_space_or_a_control(
    hostname: str, domain: str, servers: list[str]
) -> None:
    raw = Lease(
        "eth0",
        "52:54:00:12:34:56",
        "10.0.2.15",
        24,
        router=servers[0] if servers else None,
        dns=tuple(servers),
        hostname=hostname,
        domain=domain,
    )
    lease = checked(raw)
    for value in (lease.hostname, lease.domain, lease.router, *lease.dns):
        assert value is None or (value.isprintable() and " " not in value and value)
    # Dropped or kept, never both, and every problem is one printable line.
    assert len(lease.problems) == (lease.hostname is None) + (lease.domain is None) + (
        (len(raw.dns) - len(lease.dns)) + (raw.router is not None and lease.router is None)
    )
    assert all(p.isprintable() for p in lease.problems)


def test_a_nic_whose_lease_is_refused_loses_the_race_to_one_that_is_not() -> None:
    bad = Lease("eth0", "52:54:00:00:00:01", "0.0.0.0", 24)
    good = Lease("eth1", "52:54:00:00:00:02", "10.0.0.2", 24)
    network = FakeNetlink(
        nics=[
            FakeNic("eth0", bad.mac, lease=bad, lease_delay=0.0),
            FakeNic("eth1", good.mac, lease=good, lease_delay=0.05),
        ]
    )
    result = race(network, [("eth0", bad.mac), ("eth1", good.mac)], timeout=5)
    assert result.winner == good
    assert result.attempts[0].outcome.startswith("failed: BadLease: eth0: the offered address")
