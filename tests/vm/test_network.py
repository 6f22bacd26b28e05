"""The network hook in QEMU (issue 5, acceptance 1-5), on the guest's own report.

Each boot is the whole boot of scenario.py (every hook: the network states
run after storage's) with the test's own NICs in place of the standard one.

1. user network with hostname=NAME: NAME, br0 with the NIC and the lease,
   br1, forwarding, the masquerade rule and br1's firewall,
   /etc/network/interfaces, and the renewer left running (the guest lists
   its process and status file);
2+3. three NICs, two switched off on the monitor before the guest looks:
   the one with carrier wins without waiting for the DHCP deadline, and
   with no hostname offered the name is build-<10 hex digits of its MAC>;
4. a NIC on a unix dgram socket with no peer (no DHCP server anywhere):
   rescue with the per-NIC reason, within the deadline;
5. a namespace of the test's own with dnsmasq (router, DNS, host name, NTP
   servers) over a tap: default route and resolv.conf on br0, and
   timesyncd's drop-in from option 42;
6. (issue 9) the same, with a hostile dnsmasq: a domain that carries a
   newline and `nameserver`/`options` lines, a host name with ESC and shell
   metacharacters, a router outside the subnet, a multicast DNS server. The
   guest's files stay clean, and the report warns about each value.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.harness import qemu
from tests.harness.guest_output import read_sections, report
from tests.harness.netns import Netns, entered
from tests.harness.qemu import BootArgs, Nic

from .conftest import BootVm

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 240


def with_nics(args: BootArgs, *nics: Nic, append: tuple[str, ...] = ()) -> BootArgs:
    """The whole boot with these NICs instead of scenario.py's one.

    A failure powers the VM off: the test reads the reason on the console
    instead of waiting on a rescue shell.
    """
    args.nics = list(nics)
    args.append += ["initpy.rescue=poweroff", *append]
    return args


def network(vm: qemu.Vm) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The guest's network section as {key: [values]}, and report.json."""
    sections = read_sections(vm, BOOT_TIMEOUT)
    facts: dict[str, list[str]] = {}
    for line in sections["network"].splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            facts.setdefault(key, []).append(value)
    return facts, report(sections, vm)


def links(facts: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """link: NAME MAC master=X carrier=Y -> {NAME: {mac, master, carrier}}."""
    found = {}
    for value in facts.get("link", []):
        name, mac, *rest = value.split()
        found[name] = {"mac": mac, **dict(w.split("=", 1) for w in rest)}
    return found


def addresses(facts: dict[str, list[str]]) -> dict[str, list[str]]:
    """`ip -4 addr` lines -> {device: [CIDR, ...]}."""
    found: dict[str, list[str]] = {}
    for value in facts.get("addr", []):
        match = re.search(r"inet (\S+) .*?(\S+)$", value.strip())
        if match:
            found.setdefault(match.group(2), []).append(match.group(1))
    return found


def file_lines(facts: dict[str, list[str]], path: str) -> list[str]:
    return facts.get(f"file {path}", [])


def renewer_status(facts: dict[str, list[str]]) -> dict[str, Any]:
    text = "\n".join(facts.get("renewer-status", []))
    try:
        parsed: dict[str, Any] = json.loads(text)
    except ValueError:
        raise AssertionError(f"no renewer status on the guest: {text!r}") from None
    return parsed


def state(boot: dict[str, Any], name: str) -> dict[str, Any]:
    for record in boot["states"]:
        if record["name"] == name:
            found: dict[str, Any] = record
            return found
    raise AssertionError(f"no state {name} in the report: {boot['states']}")


MAC = "52:54:00:5e:00:01"
TIMESYNCD = "/etc/systemd/timesyncd.conf.d/initpy.conf"


def test_user_network_hostname_bridges_nat_files_and_renewer(
    boot_vm: BootVm, full_boot: BootArgs
) -> None:
    args = with_nics(full_boot, Nic.user("n0", mac=MAC, options="hostname=vmhost1"))
    with boot_vm(args) as vm:
        facts, boot = network(vm)
    assert boot["outcome"] == "handoff", boot["reason"]
    assert facts["hostname"] == ["vmhost1"]
    assert file_lines(facts, "/etc/hostname") == ["vmhost1"]
    assert "127.0.1.1\tvmhost1" in file_lines(facts, "/etc/hosts")
    nics = links(facts)
    nic = next(name for name, link in nics.items() if link["mac"] == MAC and name != "br0")
    assert nics[nic]["master"] == "br0"
    assert nics["br0"]["mac"] == MAC  # the lease stays valid on the bridge
    lease = boot["network"]["lease"]
    addrs = addresses(facts)
    assert addrs["br0"] == [lease["address"]] and lease["address"].startswith("10.0.2.")
    assert nic not in addrs  # nothing left on the NIC
    assert addrs["br1"] == ["172.23.0.1/16"]
    assert facts["forward"] == ["1"]
    ruleset = "\n".join(facts["nft"])
    assert re.search(r'ip saddr 172\.23\.0\.0/16 oifname "br0" masquerade', ruleset), ruleset
    # br1's firewall loaded on the image's kernel (what it does: tests/root/test_br1_filter.py).
    assert re.search(r"chain forward_to_br1 \{\s+ct state established,related accept", ruleset)
    interfaces = file_lines(facts, "/etc/network/interfaces")
    assert "iface br0 inet dhcp" in interfaces
    assert f"    bridge_ports {nic}" in interfaces
    assert "iface br1 inet static" in interfaces and "    address 172.23.0.1/16" in interfaces
    assert "interface=br1" in file_lines(facts, "/etc/dnsmasq.d/initpy-br1.conf")
    # Renewal after the hand-off: the renewer runs, and has re-confirmed the
    # lease from br0 with the server.
    assert len(facts.get("renewer", [])) == 1, facts.get("renewer")
    status = renewer_status(facts)
    assert status["interface"] == "br0" and status["trigger"] == "bound"
    assert f"{status['address']}/24" == lease["address"]
    assert status["renewal_in"] and status["renewal_in"] > 0


def test_only_the_nic_with_carrier_is_used_and_named_by_its_mac(
    boot_vm: BootVm, full_boot: BootArgs
) -> None:
    dhcp_deadline = 120
    macs = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"]
    args = with_nics(
        full_boot,
        *(Nic.user(f"n{i}", mac=mac) for i, mac in enumerate(macs)),
        append=("initpy.timeout.carrier=3", f"initpy.timeout.dhcp={dhcp_deadline}"),
    )
    with boot_vm(args) as vm:
        # Before the guest's kernel even finds the NICs.
        vm.monitor("set_link n0 off")
        vm.monitor("set_link n2 off")
        facts, boot = network(vm)
    assert boot["outcome"] == "handoff", boot["reason"]
    nics = links(facts)
    winner = next(name for name, link in nics.items() if link["mac"] == macs[1] and name != "br0")
    assert nics[winner]["master"] == "br0"
    assert [n for n, link in nics.items() if link.get("master") == "br0"] == [winner]
    assert facts["hostname"] == ["build-5400000002"]
    carrier = {n["mac"]: n["carrier"] for n in boot["network"]["nics"]}
    assert carrier == {macs[0]: False, macs[1]: True, macs[2]: False}
    dhcp_lines = boot["network"]["dhcp"]
    assert sum("no carrier): not tried" in line for line in dhcp_lines) == 2, dhcp_lines
    # The boot did not sit out the others' DHCP deadline: it never tried them.
    assert state(boot, "dhcp")["duration_ms"] < dhcp_deadline * 1000 / 2


def test_no_dhcp_server_anywhere_rescues_with_the_reason(
    boot_vm: BootVm, full_boot: BootArgs, tmp_path: Path
) -> None:
    deadline = 5
    # A point-to-point unix datagram link whose far end nobody opens: the
    # NIC has carrier, and every DISCOVER goes nowhere.
    nowhere = Nic(
        f"dgram,id=n0,local.type=unix,local.path={tmp_path}/guest.sock,"
        f"remote.type=unix,remote.path={tmp_path}/nobody.sock",
        f"virtio-net-pci,netdev=n0,mac={MAC}",
    )
    # loglevel=8: the console also shows the kernel log's copy of each
    # initpy line (kept at debug priority so it is not printed twice
    # normally), whose timestamps measure the wait below.
    args = with_nics(full_boot, nowhere, append=(f"initpy.timeout.dhcp={deadline}", "loglevel=8"))
    with boot_vm(args) as vm:
        vm.expect(r"initpy: find_nics: ok", BOOT_TIMEOUT)
        # Up to the line's end: a match on a half-received line would be cut.
        rescue = vm.expect(r"initpy: rescue: dhcp: (.+)\n", BOOT_TIMEOUT)
        vm.expect(r"initpy: rescue: fix: .*initpy\.timeout\.dhcp=SECONDS")
        vm.wait_exit(60)
    reason = rescue.group(1)
    assert reason.startswith(f"no DHCP lease on any NIC within {deadline} s: "), reason
    assert re.search(
        rf"eth0 \({MAC}, carrier\): no lease within {deadline} s: "
        r"no DHCP offer \(DISCOVER sent, no answer\)",
        reason,
    ), reason
    # Within the deadline: the kernel log's clock between the carrier and the
    # rescue lines (each initpy line is echoed from /dev/kmsg with its time).
    stamps = [
        re.search(rf"^\[\s*([\d.]+)\] initpy: {line}", vm.console, re.M)
        for line in ("find_nics: ok", "rescue: dhcp:")
    ]
    assert stamps[0] and stamps[1], "no kernel-log echo of the initpy lines on the console"
    waited = float(stamps[1].group(1)) - float(stamps[0].group(1))
    assert deadline <= waited <= deadline + 3, waited


def test_dnsmasq_in_a_namespace_gives_route_and_dns_on_br0(
    boot_vm: BootVm, full_boot: BootArgs
) -> None:
    with Netns("vmlan") as lan:
        lan.tap("tap0", "10.99.0.1/24")
        lan.dnsmasq(
            "tap0",
            "10.99.0.50",
            "10.99.0.150",
            router="10.99.0.1",
            dns="10.99.0.1",
            hostname_for=(MAC, "labhost"),
            options=("--dhcp-option=option:ntp-server,10.99.0.1,10.99.0.2",),
        )
        args = with_nics(full_boot, Nic.tap("n0", "tap0", mac=MAC))
        with contextlib.ExitStack() as stack:
            # QEMU opens the tap by name in its own namespace: start it inside
            # the lab's, then come home (the console and monitor are not
            # network sockets).
            with entered(lan):
                vm = stack.enter_context(boot_vm(args))
            facts, boot = network(vm)
        served = lan.dnsmasq_log("tap0")
    assert boot["outcome"] == "handoff", boot["reason"]
    lease = boot["network"]["lease"]
    assert lease["router"] == "10.99.0.1" and lease["dns"] == ["10.99.0.1"]
    assert addresses(facts)["br0"] == [lease["address"]]
    assert any(re.match(r"default via 10\.99\.0\.1 dev br0", r) for r in facts["route"]), facts[
        "route"
    ]
    assert "nameserver 10.99.0.1" in file_lines(facts, "/etc/resolv.conf")
    assert facts["hostname"] == ["labhost"]
    # Option 42 became systemd-timesyncd's drop-in.
    assert lease["ntp"] == ["10.99.0.1", "10.99.0.2"]
    assert file_lines(facts, TIMESYNCD)[1:] == ["[Time]", "NTP=10.99.0.1 10.99.0.2"]
    # The renewer re-confirmed the lease from br0 (the same MAC): dnsmasq
    # acknowledged the address twice, once for the boot, once for it.
    acks = re.findall(rf"DHCPACK\(tap0\) {re.escape(lease['address'].split('/')[0])} {MAC}", served)
    assert len(acks) >= 2, served[-2000:]


# What a rogue DHCP server offers (dnsmasq sends its argv's text as it is).
HOSTILE_DOMAIN = "lab.example\nnameserver 6.6.6.6\noptions ndots:15"
HOSTILE_HOSTNAME = "evil\x1b[2J;reboot$(id)"


def test_a_hostile_dhcp_server_leaves_the_guests_files_clean_and_the_report_warns(
    boot_vm: BootVm, full_boot: BootArgs
) -> None:
    with Netns("vmrogue") as lan:
        lan.tap("tap0", "10.99.0.1/24")
        lan.dnsmasq(
            "tap0",
            "10.99.0.50",
            "10.99.0.150",
            router="10.98.0.1",  # not on the guest's subnet
            dns="10.99.0.1,224.0.0.251",
            options=(
                f"--dhcp-option-force=15,{HOSTILE_DOMAIN}",
                f"--dhcp-option-force=12,{HOSTILE_HOSTNAME}",
                "--dhcp-option-force=42,224.0.1.1,10.99.0.1",
            ),
        )
        args = with_nics(full_boot, Nic.tap("n0", "tap0", mac=MAC))
        with contextlib.ExitStack() as stack:
            with entered(lan):
                vm = stack.enter_context(boot_vm(args))
            facts, boot = network(vm)
        served = lan.dnsmasq_log("tap0")
    # The server did send the raw values (its log shows the option's text).
    assert "option: 15 domain-name  lab.example" in served, served[-2000:]
    assert boot["outcome"] == "handoff", boot["reason"]
    resolv = file_lines(facts, "/etc/resolv.conf")
    assert [line for line in resolv if not line.startswith("#")] == ["nameserver 10.99.0.1"], resolv
    assert file_lines(facts, "/etc/hostname") == ["build-54005e0001"]
    assert facts["hostname"] == ["build-54005e0001"]
    hosts = file_lines(facts, "/etc/hosts")
    assert "127.0.1.1\tbuild-54005e0001" in hosts and not any("evil" in h for h in hosts), hosts
    assert not any(r.startswith("default") for r in facts.get("route", [])), facts.get("route")
    lease = boot["network"]["lease"]
    assert (lease["domain"], lease["hostname"], lease["router"]) == (None, None, None)
    assert lease["dns"] == ["10.99.0.1"] and lease["ntp"] == ["10.99.0.1"]
    assert file_lines(facts, TIMESYNCD)[1:] == ["[Time]", "NTP=10.99.0.1"]
    warnings = boot["warnings"]
    for expected in (
        f"dhcp: eth0: domain name {HOSTILE_DOMAIN!r} dropped: expected a domain name",
        f"dhcp: eth0: host name {HOSTILE_HOSTNAME!r} dropped: expected a host name",
        "dhcp: eth0: router '10.98.0.1' dropped: expected another host's address inside "
        "10.99.0.0/24",
        "dhcp: eth0: DNS server '224.0.0.251' dropped: expected a unicast IPv4 address",
        "dhcp: eth0: NTP server '224.0.1.1' dropped: expected a unicast IPv4 address",
    ):
        assert any(w.startswith(expected) for w in warnings), (expected, warnings)
    # On the console, the warning shows the host name escaped: no raw ESC from initpy.
    initpy_lines = [ln for ln in vm.console.splitlines() if "initpy: warning: dhcp:" in ln]
    assert any("'evil\\x1b[2J;reboot$(id)'" in ln for ln in initpy_lines), initpy_lines
    assert not any("\x1b" in ln for ln in initpy_lines), initpy_lines
