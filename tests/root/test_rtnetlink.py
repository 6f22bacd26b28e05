"""The network states' plain rtnetlink messages, against the real kernel, as root.

Runs in a child process in a network namespace of its own (unshare -n), so
nothing of the host's network is read or changed: a veth pair stands for
the NIC, and the child does what `bridges` does (br0 with the NIC's MAC as
its port, the lease's address and default route, br1), then prints what
`ip` reads back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.getuid() != 0, reason="needs root (a network namespace)"),
    pytest.mark.skipif(not shutil.which("ip") or not shutil.which("unshare"), reason="needs ip"),
]

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, subprocess
from hooks.network.netlink import KernelNetlink
from initpy.runtime.kernel import Kernel

def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout

subprocess.run(["ip", "link", "add", "nic0", "type", "veth", "peer", "name", "peer0"], check=True)
subprocess.run(["ip", "address", "add", "10.9.8.77/24", "dev", "nic0"], check=True)
nl = KernelNetlink(Kernel())
links = {link.name: link for link in nl.links()}
nic = links["nic0"]
nl.set_up("nic0")
nl.set_up("peer0")
nl.add_bridge("br0", "52:54:00:aa:bb:cc")
nl.flush_ipv4("nic0")
nl.set_master("nic0", "br0")
nl.add_address("br0", "10.9.8.7", 24, "10.9.8.255")
nl.add_address("br0", "10.9.8.7", 24, "10.9.8.255")  # replace: twice is fine
nl.add_default_route("10.9.8.1", "br0")
nl.add_bridge("br1", "")
nl.add_address("br1", "172.23.0.1", 16, "172.23.255.255")
try:
    nl.set_up("nosuch0")
    missing = ""
except OSError as exc:
    missing = str(exc)
after = {link.name: link for link in nl.links()}
print(json.dumps({
    "nic_mac": nic.mac,
    "nic_up_before": nic.up,
    "lo": [links["lo"].index, links["lo"].up],
    "br0": [after["br0"].mac, after["br0"].up],
    "nic_master": after["nic0"].master == after["br0"].index,
    "nic_carrier": after["nic0"].carrier,
    "nic_addresses": nl.ipv4_addresses("nic0"),
    "br0_addresses": nl.ipv4_addresses("br0"),
    "br1_addresses": nl.ipv4_addresses("br1"),
    "missing": missing,
    "ip_mac": ip("-j", "link", "show", "nic0"),
    "route": ip("route", "show", "default"),
    "bridge": ip("-d", "-j", "link", "show", "br0"),
}))
nl.close()
"""


def test_bridges_addresses_and_routes_through_plain_rtnetlink() -> None:
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", CHILD],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    ip_link = json.loads(seen["ip_mac"])[0]
    assert seen["nic_mac"] == ip_link["address"]
    assert seen["nic_up_before"] is False
    assert seen["lo"][0] == 1
    assert seen["br0"] == ["52:54:00:aa:bb:cc", True]
    assert seen["nic_master"] is True
    assert seen["nic_carrier"] is True  # the veth's peer is up
    assert seen["nic_addresses"] == []  # flushed: the port carries no address
    assert seen["br0_addresses"] == ["10.9.8.7/24"]
    assert seen["br1_addresses"] == ["172.23.0.1/16"]
    assert "no network interface named nosuch0" in seen["missing"]
    assert seen["route"].startswith("default via 10.9.8.1 dev br0")
    info = json.loads(seen["bridge"])[0]["linkinfo"]
    assert info["info_kind"] == "bridge"
    assert (info["info_data"]["stp_state"], info["info_data"]["forward_delay"]) == (0, 0)
