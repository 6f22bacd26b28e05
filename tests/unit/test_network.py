"""The network hook on the fake kernel: NICs, the DHCP race, hostname, bridges, files.

The scripted network (initpy.devtools.fake_network.FakeNetlink) plays the NICs, their
carrier and what a DHCP server on each would answer; tests assert on what
the boot leaves behind: the fake network's bridges, addresses and routes,
the files in the fake root, the console and report.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from hooks.network.lease import Lease
from initpy.devtools.fake import FakeKernel, HandedOff
from initpy.devtools.fake_network import FakeNetlink, FakeNic
from initpy.runtime import cmdline
from initpy.runtime.driver import CORE_PARAMETERS
from initpy.runtime.hook import BootContext, BootFailure, Hook
from initpy.runtime.report import Report
from tests.unit.conftest import REPO, hook_module, read_report, run_boot


@pytest.fixture(scope="module")
def net() -> types.ModuleType:
    return hook_module("network")


def lease(nic: str, mac: str, address: str = "10.0.0.50", **options: object) -> Lease:
    return Lease(nic=nic, mac=mac, address=address, prefixlen=24, **options)  # type: ignore[arg-type]


def machine(tmp_path: os.PathLike[str], *nics: FakeNic, cmdline_text: str = "") -> FakeKernel:
    k = FakeKernel(
        root=os.path.join(str(tmp_path), "root"),
        cmdline=cmdline_text,
        network=FakeNetlink(nics=list(nics)),
    )
    return k


def context(k: FakeKernel, net: types.ModuleType) -> BootContext:
    ctx = BootContext(kernel=k, report=Report(k))
    ctx.config = cmdline.parse(k.cmdline, [*CORE_PARAMETERS, *net.HOOK.parameters])
    return ctx


def read(k: FakeKernel, path: str) -> str:
    with open(k.path(path)) as f:
        return f.read()


# -- the hook starts nothing on import --------------------------------------------------


def test_importing_the_hook_starts_no_thread_even_as_pid_1() -> None:
    """PID 1 imports every hook before the first state; the network hook's
    DHCP imports begin when the boot runs its on_start, not then."""
    code = (
        "import os, threading; os.getpid = lambda: 1; import hooks.network; "
        "print(threading.active_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1"]


def test_the_hook_starts_the_dhcp_imports_through_the_seam(
    tmp_path: Path, net: types.ModuleType
) -> None:
    k = machine(tmp_path, FakeNic("eth0", "52:54:00:00:00:0A"))
    ctx = context(k, net)
    for start in net.HOOK.on_start:
        start(ctx)
    assert list(k.threads) == ["prefetch pyroute2"]  # recorded by the fake, not run


# -- find_nics ---------------------------------------------------------------------


def test_find_nics_takes_ethernet_only_and_records_mac_and_carrier(
    tmp_path: Path, net: types.ModuleType
) -> None:
    k = machine(
        tmp_path,
        FakeNic("eth0", "52:54:00:00:00:0A"),
        FakeNic("wlan0", "52:54:00:00:00:0B", kind="wireless"),
        FakeNic("dummy0", "52:54:00:00:00:0C", kind="virtual"),
        FakeNic("virbr0", "52:54:00:00:00:0D", kind="bridge"),
        FakeNic("eth1", "52:54:00:00:00:0E", carrier_at=None),
    )
    ctx = context(k, net)
    detail = net.find_nics(ctx)
    nics = ctx.get(net.NICS, ())
    assert [(n.name, n.mac, n.carrier) for n in nics] == [
        ("eth0", "52:54:00:00:00:0a", True),
        ("eth1", "52:54:00:00:00:0e", False),
    ]
    assert "wlan0: wireless" in detail and "dummy0: virtual" in detail
    assert "virbr0: bridge" in detail and "lo: loopback" in detail
    # Only the Ethernet NICs were brought up.
    assert k.network.up == {"eth0", "eth1"}


def test_carrier_wait_ends_when_every_nic_has_carrier(
    tmp_path: Path, net: types.ModuleType
) -> None:
    k = machine(
        tmp_path,
        FakeNic("eth0", "52:54:00:00:00:01", carrier_at=2.0),
        FakeNic("eth1", "52:54:00:00:00:02", carrier_at=2.5),
        cmdline_text="initpy.timeout.carrier=30",
    )
    ctx = context(k, net)
    start = k.clock
    detail = net.find_nics(ctx)
    assert all(n.carrier for n in ctx.get(net.NICS, ()))
    # The fake clock only moves when the boot waits: it stopped at the last
    # carrier event, not at the 30 s deadline.
    assert k.clock - start == pytest.approx(1.5)
    assert "after 1.50 s" in detail


def test_carrier_wait_stops_at_the_deadline(tmp_path: Path, net: types.ModuleType) -> None:
    k = machine(
        tmp_path,
        FakeNic("eth0", "52:54:00:00:00:01"),
        FakeNic("eth1", "52:54:00:00:00:02", carrier_at=None),
        cmdline_text="initpy.timeout.carrier=3",
    )
    ctx = context(k, net)
    start = k.clock
    net.find_nics(ctx)
    assert k.clock - start == pytest.approx(3.0)
    assert [n.carrier for n in ctx.get(net.NICS, ())] == [True, False]


def test_no_carrier_anywhere_is_a_failure_naming_each_nic(
    tmp_path: Path, net: types.ModuleType
) -> None:
    k = machine(
        tmp_path,
        FakeNic("eth0", "52:54:00:00:00:01", carrier_at=None),
        cmdline_text="initpy.timeout.carrier=1",
    )
    with pytest.raises(BootFailure) as failed:
        net.find_nics(context(k, net))
    assert "eth0 (52:54:00:00:00:01, no carrier): not tried" in failed.value.reason
    assert "initpy.timeout.carrier" in failed.value.fix


def test_a_nic_registered_late_is_awaited(tmp_path: Path, net: types.ModuleType) -> None:
    k = machine(
        tmp_path,
        FakeNic("eth0", "52:54:00:00:00:01", appear_at=3.0, carrier_at=3.5),
        cmdline_text="initpy.timeout.carrier=10",
    )
    ctx = context(k, net)
    start = k.clock
    net.find_nics(ctx)
    assert [(n.name, n.carrier) for n in ctx.get(net.NICS, ())] == [("eth0", True)]
    assert k.clock - start == pytest.approx(2.5)  # up to the carrier, not the deadline


def test_no_ethernet_nic_is_a_failure_with_the_fix(tmp_path: Path, net: types.ModuleType) -> None:
    k = machine(tmp_path, FakeNic("wlan0", "52:54:00:00:00:01", kind="wireless"))
    with pytest.raises(BootFailure) as failed:
        net.find_nics(context(k, net))
    assert "no Ethernet interface found" in failed.value.reason
    assert "wlan0: wireless" in failed.value.reason
    assert "driver" in failed.value.fix


# -- dhcp: the race and the selection rule --------------------------------------------


def found(ctx: BootContext, net: types.ModuleType) -> None:
    net.find_nics(ctx)


def test_lowest_mac_wins_among_leases_within_the_window(
    tmp_path: Path, net: types.ModuleType
) -> None:
    high = FakeNic("eth0", "52:54:00:00:00:02", lease_delay=0.01)
    low = FakeNic("eth1", "52:54:00:00:00:01", lease_delay=0.06)
    high.lease = lease("eth0", high.mac, "10.0.0.2")
    low.lease = lease("eth1", low.mac, "10.0.1.1")
    k = machine(tmp_path, high, low)
    ctx = context(k, net)
    found(ctx, net)
    net.dhcp(ctx)
    winner = ctx.require(net.LEASE, "dhcp")
    assert winner is not None and winner.nic == "eth1"  # answered later, lower MAC
    # The loser's lease is released; the winner's is kept for br0.
    assert k.network.clients["eth0"].released is True
    assert k.network.clients["eth1"].released is False
    assert all(c.stopped for c in k.network.clients.values())
    assert any(
        "eth1" in line and "chosen (lowest MAC among 2 leases" in line for line in k.console_lines
    )


def test_first_lease_wins_when_the_other_comes_after_the_window(
    tmp_path: Path, net: types.ModuleType
) -> None:
    first = FakeNic("eth0", "52:54:00:00:00:02", lease_delay=0.01)
    late = FakeNic("eth1", "52:54:00:00:00:01", lease_delay=5.0)
    first.lease = lease("eth0", first.mac)
    late.lease = lease("eth1", late.mac)
    k = machine(tmp_path, first, late)
    ctx = context(k, net)
    found(ctx, net)
    net.dhcp(ctx)
    assert ctx.require(net.LEASE, "dhcp").nic == "eth0"
    # The slow NIC's client was stopped without waiting for its answer.
    assert k.network.clients["eth1"].stopped
    network = ctx.report.extra["network"]
    assert isinstance(network, dict)
    report = network["dhcp"]
    assert any(
        line.startswith("eth1") and "stopped after" in line and "eth0 won" in line
        for line in report
    )


def test_nics_without_carrier_are_not_tried(tmp_path: Path, net: types.ModuleType) -> None:
    up = FakeNic("eth0", "52:54:00:00:00:02")
    up.lease = lease("eth0", up.mac)
    k = machine(
        tmp_path,
        up,
        FakeNic("eth1", "52:54:00:00:00:01", carrier_at=None),
        cmdline_text="initpy.timeout.carrier=1",
    )
    ctx = context(k, net)
    found(ctx, net)
    net.dhcp(ctx)
    assert set(k.network.clients) == {"eth0"}
    assert ctx.require(net.LEASE, "dhcp").nic == "eth0"


def test_no_lease_anywhere_rescues_with_each_nics_story(
    tmp_path: Path, net: types.ModuleType
) -> None:
    broken = FakeNic("eth2", "52:54:00:00:00:03", dhcp_error="[Errno 100] Network is down")
    k = machine(
        tmp_path,
        FakeNic("eth0", "52:54:00:00:00:01"),
        FakeNic("eth1", "52:54:00:00:00:02", carrier_at=None),
        broken,
        cmdline_text="initpy.timeout.carrier=1 initpy.timeout.dhcp=1",
    )
    ctx = context(k, net)
    found(ctx, net)
    with pytest.raises(BootFailure) as failed:
        net.dhcp(ctx)
    reason = failed.value.reason
    assert reason.startswith("no DHCP lease on any NIC within 1 s: ")
    assert "eth0 (52:54:00:00:00:01, carrier): no lease within 1 s: no DHCP offer" in reason
    assert "eth1 (52:54:00:00:00:02, no carrier): not tried" in reason
    assert (
        "eth2 (52:54:00:00:00:03, carrier): failed: OSError: [Errno 100] Network is down" in reason
    )
    assert "initpy.timeout.dhcp" in failed.value.fix


# -- hostname ------------------------------------------------------------------------


def named(tmp_path: Path, net: types.ModuleType, winner: Lease) -> FakeKernel:
    k = machine(tmp_path)
    ctx = context(k, net)
    ctx.put(net.LEASE, winner)
    net.hostname(ctx)
    return k


def test_hostname_from_dhcp_everywhere(tmp_path: Path, net: types.ModuleType) -> None:
    k = named(
        tmp_path, net, lease("eth0", "52:54:00:12:34:56", hostname="builder7", domain="example.org")
    )
    assert k.syscalls("sethostname") == [("sethostname", "builder7")]
    assert read(k, "/etc/hostname") == "builder7\n"
    assert "127.0.1.1\tbuilder7.example.org builder7\n" in read(k, "/etc/hosts")
    assert "127.0.0.1\tlocalhost\n" in read(k, "/etc/hosts")


def test_hostname_falls_back_to_the_mac(tmp_path: Path, net: types.ModuleType) -> None:
    k = named(tmp_path, net, lease("eth0", "de:ad:be:ef:b8:da"))
    assert k.syscalls("sethostname") == [("sethostname", "build-adbeefb8da")]
    assert read(k, "/etc/hostname") == "build-adbeefb8da\n"
    assert "127.0.1.1\tbuild-adbeefb8da\n" in read(k, "/etc/hosts")


def test_an_invalid_dhcp_hostname_falls_back_to_the_mac(
    tmp_path: Path, net: types.ModuleType
) -> None:
    k = named(tmp_path, net, lease("eth0", "52:54:00:12:34:56", hostname="bad name;rm"))
    assert read(k, "/etc/hostname") == "build-5400123456\n"


def test_a_fully_qualified_dhcp_hostname_is_split(tmp_path: Path, net: types.ModuleType) -> None:
    k = named(tmp_path, net, lease("eth0", "52:54:00:12:34:56", hostname="b1.lab.example"))
    assert read(k, "/etc/hostname") == "b1\n"
    assert "127.0.1.1\tb1.lab.example b1\n" in read(k, "/etc/hosts")


# -- bridges and files ---------------------------------------------------------------


def bridged(
    tmp_path: Path, net: types.ModuleType, winner: Lease, cmdline_text: str = ""
) -> FakeKernel:
    k = machine(tmp_path, FakeNic(winner.nic, winner.mac), cmdline_text=cmdline_text)
    ctx = context(k, net)
    k.network.attach(k)
    ctx.put(net.LEASE, winner)
    net.bridges(ctx)
    return k


def test_br0_holds_the_nic_with_its_mac_and_the_lease(
    tmp_path: Path, net: types.ModuleType
) -> None:
    winner = lease(
        "eth0",
        "52:54:00:12:34:56",
        "10.0.2.15",
        server="10.0.2.2",
        router="10.0.2.2",
        dns=("10.0.2.3", "10.0.2.4"),
        domain="example.org",
    )
    k = bridged(tmp_path, net, winner)
    fake = k.network
    assert fake.bridges["br0"] == "52:54:00:12:34:56"
    assert fake.masters == {"eth0": "br0"}
    assert fake.addresses["br0"] == ["10.0.2.15/24"]
    assert fake.ipv4_addresses("eth0") == []  # nothing left on the NIC
    assert fake.routes == [("default", "10.0.2.2", "br0")]
    assert read(k, "/etc/resolv.conf").splitlines()[1:] == [
        "search example.org",
        "nameserver 10.0.2.3",
        "nameserver 10.0.2.4",
    ]


def test_a_lease_without_options_is_valid(tmp_path: Path, net: types.ModuleType) -> None:
    k = bridged(tmp_path, net, lease("eth0", "52:54:00:12:34:56", "10.0.2.15"))
    assert k.network.addresses["br0"] == ["10.0.2.15/24"]
    assert k.network.routes == []  # no router: no default route
    resolv = read(k, "/etc/resolv.conf")
    assert "nameserver" not in resolv and "search" not in resolv
    assert "no DNS servers" in resolv


def test_the_leases_ntp_servers_become_timesyncds_drop_in(
    tmp_path: Path, net: types.ModuleType
) -> None:
    winner = lease(
        "eth0", "52:54:00:12:34:56", "10.0.2.15", server="10.0.2.2", ntp=("10.0.2.5", "10.0.2.6")
    )
    k = bridged(tmp_path, net, winner)
    text = read(k, "/etc/systemd/timesyncd.conf.d/initpy.conf").splitlines()
    assert text[1:] == ["[Time]", "NTP=10.0.2.5 10.0.2.6"]
    assert "option 42" in text[0] and "server 10.0.2.2" in text[0]


def test_a_lease_without_ntp_servers_leaves_timesyncd_its_default(
    tmp_path: Path, net: types.ModuleType
) -> None:
    k = bridged(tmp_path, net, lease("eth0", "52:54:00:12:34:56", "10.0.2.15", dns=("10.0.2.3",)))
    assert not os.path.lexists(k.path("/etc/systemd/timesyncd.conf.d/initpy.conf"))
    assert not os.path.lexists(k.path("/etc/systemd/timesyncd.conf.d"))


def test_br1_nat_forwarding_dnsmasq_and_interfaces(tmp_path: Path, net: types.ModuleType) -> None:
    k = bridged(tmp_path, net, lease("eth0", "52:54:00:12:34:56", "10.0.2.15"))
    assert k.network.addresses["br1"] == ["172.23.0.1/16"]
    assert read(k, "/proc/sys/net/ipv4/ip_forward") == "1\n"
    assert "net.ipv4.ip_forward = 1" in read(k, "/etc/sysctl.d/60-initpy-forward.conf")
    rules = read(k, "/etc/initpy/br1.nft")
    assert 'ip saddr 172.23.0.0/16 oifname "br0" masquerade' in rules
    assert "type nat hook postrouting" in rules
    # The firewall, with the LAN's subnet from the lease and the default deny
    # (the rules themselves: tests/unit/test_firewall.py, tests/root/test_br1_filter.py).
    assert "ip daddr { 10.0.0.0/8, " in rules
    assert ("run", ("nft", "-f", "/etc/initpy/br1.nft")) in k.calls
    dnsmasq = read(k, "/etc/dnsmasq.d/initpy-br1.conf").splitlines()
    assert "interface=br1" in dnsmasq and "no-dhcp-interface=br0" in dnsmasq
    assert "dhcp-range=172.23.0.11,172.23.255.254,255.255.0.0,12h" in dnsmasq
    interfaces = read(k, "/etc/network/interfaces")
    assert (
        "iface br0 inet dhcp\n    bridge_ports eth0\n    bridge_hw 52:54:00:12:34:56\n"
        in interfaces
    )
    assert "iface br1 inet static\n    address 172.23.0.1/16\n    bridge_ports none\n" in interfaces
    # The renewer that keeps br0's lease after the hand-off was started.
    assert "initpy-dhcp" in k.daemons


def test_the_files_an_operator_reads_name_the_module_that_wrote_them(
    tmp_path: Path, net: types.ModuleType
) -> None:
    from hooks.network import files, firewall

    k = bridged(tmp_path, net, lease("eth0", "52:54:00:12:34:56", "10.0.2.15", ntp=("10.0.2.5",)))
    for path, source in (
        ("/etc/network/interfaces", files.SOURCE),
        ("/etc/systemd/timesyncd.conf.d/initpy.conf", files.SOURCE),
        ("/etc/initpy/br1.nft", firewall.SOURCE),
        ("/etc/dnsmasq.d/initpy-br1.conf", files.SOURCE),
    ):
        assert os.path.isfile(os.path.join(REPO, source))
        assert f"({source})" in read(k, path).splitlines()[0], path


def test_br1_subnet_from_the_command_line(tmp_path: Path, net: types.ModuleType) -> None:
    k = bridged(
        tmp_path, net, lease("eth0", "52:54:00:12:34:56"), cmdline_text="initpy.br1=192.168.77.1/24"
    )
    assert k.network.addresses["br1"] == ["192.168.77.1/24"]
    assert "dhcp-range=192.168.77.11,192.168.77.254,255.255.255.0,12h" in read(
        k, "/etc/dnsmasq.d/initpy-br1.conf"
    )
    assert "ip saddr 192.168.77.0/24" in read(k, "/etc/initpy/br1.nft")


@pytest.mark.parametrize(
    ("cmdline_text", "denied"),
    [("", True), ("initpy.br1_lan=deny", True), ("initpy.br1_lan=allow", False)],
)
def test_br1s_firewall_follows_the_lease_and_initpy_br1_lan(
    tmp_path: Path, net: types.ModuleType, cmdline_text: str, denied: bool
) -> None:
    # A public LAN: its subnet joins the denied ranges (the relay may live there).
    k = bridged(tmp_path, net, lease("eth0", "52:54:00:12:34:56", "198.51.100.7"), cmdline_text)
    rules = read(k, "/etc/initpy/br1.nft")
    assert ("192.168.0.0/16, 198.51.100.0/24 } drop" in rules) is denied
    assert f"# initpy.br1_lan={'deny' if denied else 'allow'}:" in rules


@pytest.mark.parametrize("raw", ["8.8.8.0/24", "172.23.0.0/16", "10.1.1.1/31", "x"])
def test_a_bad_br1_value_is_a_warning_and_the_default_stays(
    net: types.ModuleType, raw: str
) -> None:
    config = cmdline.parse(f"initpy.br1={raw}", net.HOOK.parameters)
    assert str(config.value(net.BR1_ADDRESS)) == "172.23.0.1/16"
    assert any(p.startswith("initpy.br1: expected") for p in config.problems)


def test_a_failing_nft_is_a_rescue_with_the_fix(tmp_path: Path, net: types.ModuleType) -> None:
    from initpy.runtime.kernel import Completed

    k = machine(tmp_path, FakeNic("eth0", "52:54:00:12:34:56"))
    k.commands["nft"] = Completed(
        ("nft",), 1, "", "Error: Could not process rule: No such file or directory"
    )
    ctx = context(k, net)
    k.network.attach(k)
    ctx.put(net.LEASE, lease("eth0", "52:54:00:12:34:56"))
    with pytest.raises(BootFailure) as failed:
        net.bridges(ctx)
    assert "nft -f /etc/initpy/br1.nft: exit 1" in failed.value.reason
    assert "nft_masq" in failed.value.fix


# -- the whole boot --------------------------------------------------------------------


def stub_hooks() -> list[Hook]:
    """The real modules hook: it provides the milestone find_nics needs."""
    from hooks import modules

    return [modules.HOOK]


def test_whole_boot_hands_off_with_the_network_in_the_report(
    kernel: FakeKernel, net: types.ModuleType
) -> None:
    kernel.network.nics[0].lease = lease(
        "eth0", "52:54:00:12:34:56", "10.0.2.15", hostname="qemu-host", server="10.0.2.2"
    )
    ended = run_boot(kernel, [*stub_hooks(), net.HOOK])
    assert isinstance(ended, HandedOff)
    report = read_report(kernel)
    states = report["states"]
    assert isinstance(states, list)
    assert [s["name"] for s in states][-4:] == [
        "find_nics",
        "dhcp",
        "hostname",
        "bridges",
    ]
    network = report["network"]
    assert isinstance(network, dict)
    assert network["lease"]["address"] == "10.0.2.15/24"
    assert network["hostname"] == "qemu-host"
    assert read(kernel, "/etc/hostname") == "qemu-host\n"


def test_the_renewer_status_exists_before_the_renewer_has_run(
    tmp_path: Path, net: types.ModuleType
) -> None:
    # The OS adopts the renewer on this file's condition (initpy-dhcp.service),
    # and systemd may check it before the renewer at nice 10 has said anything.
    k = bridged(tmp_path, net, lease("eth0", "52:54:00:12:34:56", "10.0.2.15"))
    assert "initpy-dhcp" in k.daemons  # forked, not yet run by the fake
    status = json.loads(read(k, "/run/initpy/dhcp-br0.json"))
    assert status == {"interface": "br0", "trigger": "starting"}


def test_the_renewer_says_why_it_stopped(
    tmp_path: Path, net: types.ModuleType, mocker: MockerFixture
) -> None:
    mocker.patch("hooks.network.renewer.renew_forever", side_effect=OSError("br0 is gone"))
    k = bridged(tmp_path, net, lease("eth0", "52:54:00:12:34:56", "10.0.2.15"))
    with pytest.raises(OSError):
        k.daemons["initpy-dhcp"]()  # what the forked process runs
    status = json.loads(read(k, "/run/initpy/dhcp-br0.json"))
    assert status["trigger"] == "stopped" and status["error"] == "OSError: br0 is gone"
    assert "initpy: initpy-dhcp: stopped: OSError: br0 is gone" in k.kmsg_lines


# -- a hostile DHCP server --------------------------------------------------------------


def test_a_hostile_lease_leaves_files_and_routes_clean_and_warns(
    tmp_path: Path, net: types.ModuleType
) -> None:
    mac = "52:54:00:12:34:56"
    hostile = Lease(
        nic="eth0",
        mac=mac,
        address="10.0.2.15",
        prefixlen=24,
        server="10.0.2.2",
        router="10.0.2.15",  # the host's own address
        dns=("10.0.2.3", "0.0.0.0"),
        hostname="evil\x1b[2J;reboot",
        domain="lab.example\nnameserver 6.6.6.6\noptions ndots:15",
        lease_time=0,
    )
    k = machine(tmp_path, FakeNic("eth0", mac, lease=hostile))
    ctx = context(k, net)
    for state in (net.find_nics, net.dhcp, net.hostname, net.bridges):
        state(ctx)
    assert read(k, "/etc/resolv.conf").splitlines()[1:] == ["nameserver 10.0.2.3"]
    assert read(k, "/etc/hostname") == "build-5400123456\n"
    assert "127.0.1.1\tbuild-5400123456\n" in read(k, "/etc/hosts")
    assert k.network.routes == []  # no default route through ourselves
    assert "6.6.6.6" not in read(k, "/etc/network/interfaces")
    lease_report = ctx.report.extra["network"]["lease"]  # type: ignore[index]
    assert lease_report["domain"] is None and lease_report["hostname"] is None
    warnings = "\n".join(ctx.report.warnings)
    assert (
        "dhcp: eth0: domain name 'lab.example\\nnameserver 6.6.6.6\\noptions ndots:15' "
        "dropped: expected a domain name"
    ) in warnings
    assert "dhcp: eth0: host name 'evil\\x1b[2J;reboot' dropped" in warnings
    assert "dhcp: eth0: router '10.0.2.15' dropped" in warnings
    assert "dhcp: eth0: DNS server '0.0.0.0' dropped" in warnings
    assert all(line.isprintable() for line in k.console_lines)


# -- a lease inside br1's subnet -----------------------------------------------------------


def test_a_lease_inside_the_default_br1_subnet_moves_br1_and_says_so(
    tmp_path: Path, net: types.ModuleType
) -> None:
    winner = Lease(
        "eth0", "52:54:00:12:34:56", "172.23.5.9", 16, router="172.23.0.1", dns=("172.23.0.1",)
    )
    k = machine(tmp_path, FakeNic(winner.nic, winner.mac))
    ctx = context(k, net)
    k.network.attach(k)
    ctx.put(net.LEASE, winner)
    detail = net.bridges(ctx)
    # The default route leads to the site's router on br0, not to br1's own address.
    assert k.network.routes == [("default", "172.23.0.1", "br0")]
    assert k.network.addresses["br1"] == ["172.24.0.1/16"]
    assert "br1 = 172.24.0.1/16 with NAT" in detail
    assert 'ip saddr 172.24.0.0/16 oifname "br0" masquerade' in read(k, "/etc/initpy/br1.nft")
    assert "dhcp-option=option:router,172.24.0.1" in read(k, "/etc/dnsmasq.d/initpy-br1.conf")
    assert "    address 172.24.0.1/16" in read(k, "/etc/network/interfaces")
    assert ctx.report.extra["network"]["br1"] == "172.24.0.1/16"  # type: ignore[index]
    assert any(
        w.startswith(
            "bridges: br1's subnet 172.23.0.0/16 overlaps the DHCP lease on eth0 "
            "(172.23.5.9/16): the lease's subnet 172.23.0.0/16, its router 172.23.0.1"
        )
        and "br1 moved to 172.24.0.1/16" in w
        and "initpy.br1=ADDRESS/PREFIX" in w
        for w in ctx.report.warnings
    ), ctx.report.warnings


def test_a_dns_server_inside_br1_is_an_overlap_too(tmp_path: Path, net: types.ModuleType) -> None:
    k = bridged(tmp_path, net, lease("eth0", "52:54:00:12:34:56", dns=("172.23.9.9",)))
    assert k.network.addresses["br1"] == ["172.24.0.1/16"]


def test_a_lease_over_all_of_172_16_moves_br1_to_ten(tmp_path: Path, net: types.ModuleType) -> None:
    winner = Lease("eth0", "52:54:00:12:34:56", "172.20.0.9", 12)
    k = bridged(tmp_path, net, winner)
    assert k.network.addresses["br1"] == ["10.23.0.1/16"]


def test_an_overlapping_br1_the_operator_chose_is_a_rescue_with_a_free_subnet(
    tmp_path: Path, net: types.ModuleType
) -> None:
    winner = lease("eth0", "52:54:00:12:34:56", "192.168.77.50", router="192.168.77.254")
    k = machine(
        tmp_path, FakeNic(winner.nic, winner.mac), cmdline_text="initpy.br1=192.168.77.1/24"
    )
    ctx = context(k, net)
    k.network.attach(k)
    ctx.put(net.LEASE, winner)
    with pytest.raises(BootFailure) as failed:
        net.bridges(ctx)
    assert failed.value.reason == (
        "br1's subnet 192.168.77.0/24 overlaps the DHCP lease on eth0 (192.168.77.50/24): "
        "the lease's subnet 192.168.77.0/24, its router 192.168.77.254 (from initpy.br1)"
    )
    assert failed.value.fix.startswith("boot with initpy.br1=172.23.0.1/16 ")
    assert k.network.bridges == {} and k.network.routes == []  # nothing half-built
