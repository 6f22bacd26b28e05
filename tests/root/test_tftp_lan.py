"""The buildhost hook's two dnsmasq TFTP configs, run by the real dnsmasq, as root.

In network namespaces of this process (tests/harness/netns.py): a "host"
with br0 and br1, a LAN machine on br0's side and a build machine on
br1's. The main dnsmasq runs br1's config (hooks/network/files.py) with
buildos-tftp.conf; the LAN's runs tftp-lan.conf (hooks/buildhost.py), as
initpy-tftp-lan.service does. Only `tftp-root` (a temporary folder) and
the user (root: the dnsmasq user may not exist here, and pytest's folders
are private) are changed.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hooks import buildhost
from hooks.network.files import dnsmasq_conf
from tests.harness.netns import Netns, local_conf

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.getuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(
        not all(shutil.which(p) for p in ("ip", "dnsmasq", "busybox")),
        reason="needs ip, dnsmasq and busybox",
    ),
]

BR0, BR1 = "10.9.0.1", "172.23.0.1"
READY = "TFTP root is"  # dnsmasq's log line once TFTP is served


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[Netns, Netns, Netns]]:
    with Netns("tftp-host") as host, Netns("tftp-lan") as lan, Netns("tftp-vm") as vm:
        for bridge, address in (("br0", f"{BR0}/24"), ("br1", f"{BR1}/16")):
            host.run(["ip", "link", "add", bridge, "type", "bridge"])
            host.run(["ip", "addr", "add", address, "dev", bridge])
            host.run(["ip", "link", "set", bridge, "up"])
        for port, peer, bridge, address in (
            ("p0", lan, "br0", "10.9.0.50/24"),
            ("p1", vm, "br1", "172.23.0.50/16"),
        ):
            host.veth(port, peer, "eth0")
            host.run(["ip", "link", "set", port, "master", bridge])
            peer.run(["ip", "addr", "add", address, "dev", "eth0"])
            peer.run(["ip", "link", "set", "eth0", "up"])
        yield host, lan, vm


def _get(peer: Netns, server: str, name: str, out: Path) -> str | None:
    out.unlink(missing_ok=True)
    argv = ["timeout", "10", "busybox", "tftp", "-g", "-r", name, "-l", str(out), server]
    peer.run(argv, check=False)
    return out.read_text() if out.exists() and out.stat().st_size else None


@pytest.mark.parametrize("lan_too", [True, False], ids=["lan", "br1"])
def test_tftp_on_br1_and_on_br0_only_with_the_lan_config(
    net: tuple[Netns, Netns, Netns], tmp_path: Path, lan_too: bool
) -> None:
    host, lan, vm = net
    root = tmp_path / "tftp"
    root.mkdir()
    (root / "log.txt").write_text("agent log\n")
    main = dnsmasq_conf(ipaddress.IPv4Interface(f"{BR1}/16")) + buildhost.TFTP_CONF
    host.dnsmasq_conf("main", local_conf(main, str(root)) + "user=root\n", READY)
    if lan_too:
        host.dnsmasq_conf("lan", local_conf(buildhost.TFTP_LAN_TEXT, str(root)), READY)
    assert _get(vm, BR1, "log.txt", tmp_path / "vm.txt") == "agent log\n"
    from_lan = _get(lan, BR0, "log.txt", tmp_path / "lan.txt")
    assert from_lan == ("agent log\n" if lan_too else None)
    # Never a write, and never DNS on br0: that dnsmasq does TFTP only.
    (tmp_path / "up.txt").write_text("x\n")
    put = ["busybox", "tftp", "-p", "-l", str(tmp_path / "up.txt"), "-r", "up.txt", BR0]
    lan.run(["timeout", "10", *put], check=False)
    assert sorted(p.name for p in root.iterdir()) == ["log.txt"]
    listening = host.run(["ss", "-Hlun"]).split()
    assert (f"{BR0}:69" in listening) == lan_too
    assert f"{BR0}:53" not in listening and f"{BR1}:53" in listening
