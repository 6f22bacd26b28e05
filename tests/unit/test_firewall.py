"""br1's nft file as text (hooks/network/firewall.py): subnets, the LAN parameter, the edges.

What the rules do to packets is shown at the root tier, with the real nft
and kernel (tests/root/test_br1_filter.py); here, what the text holds for
each input, and the properties that keep it from touching other traffic.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hooks import network
from hooks.network.firewall import PRIVATE_RANGES, LanAccess, lan_ranges, nft_ruleset
from initpy.runtime import cmdline
from initpy.runtime.layout import AGENT_TFTP_PORTS

DEFAULT = ipaddress.IPv4Interface("172.23.0.1/16")
LAN = ipaddress.IPv4Network("10.9.0.0/24")


def chains(rules: str) -> dict[str, list[str]]:
    """Each chain's rules (its lines but the header and comments), by name."""
    found: dict[str, list[str]] = {}
    for name, body in re.findall(r"chain (\w+) \{\n(.*?)\n    \}", rules, re.S):
        lines = [line.strip() for line in body.splitlines()]
        found[name] = [line for line in lines if line and not line.startswith(("#", "type "))]
    return found


def test_the_default_subnet_deny_the_whole_file() -> None:
    rules = chains(nft_ruleset(DEFAULT, LAN, LanAccess.DENY))
    first, last = AGENT_TFTP_PORTS
    assert rules["input_from_br1"] == [
        "meta nfproto ipv6 drop",
        "ct state established,related accept",
        "udp dport 67 accept",
        "ip saddr != 172.23.0.0/16 drop",
        "ip daddr != 172.23.0.1 drop",
        f"udp dport {{ 53, 69, {first}-{last} }} accept",
        "tcp dport 53 accept",
        "icmp type echo-request accept",
        "drop",
    ]
    assert rules["forward_from_br1"] == [
        "meta nfproto ipv6 drop",
        "ip saddr != 172.23.0.0/16 drop",
        'oifname != "br0" drop',
        "ip daddr { 10.0.0.0/8, 100.64.0.0/10, 169.254.0.0/16, 172.16.0.0/12, "
        "192.168.0.0/16 } drop",
        "accept",
    ]
    assert rules["forward_to_br1"] == ["ct state established,related accept", "drop"]
    assert rules["postrouting"] == ['ip saddr 172.23.0.0/16 oifname "br0" masquerade']


def test_the_file_replaces_its_own_table_and_no_other() -> None:
    text = nft_ruleset(DEFAULT, LAN, LanAccess.DENY)
    assert text.splitlines()[1:4] == [
        "table inet initpy_br1",
        "delete table inet initpy_br1",
        "table inet initpy_br1 {",
    ]
    # Nothing else at the top level: no flush, no other table.
    top = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert top == [*text.splitlines()[1:4], "}"]


@pytest.mark.parametrize("access", list(LanAccess))
@pytest.mark.parametrize(
    "br1", ["172.23.0.1/16", "192.168.77.1/24", "10.23.0.1/16", "172.31.255.253/30"]
)
def test_the_base_chains_accept_all_but_br1s_traffic(br1: str, access: LanAccess) -> None:
    # Policy accept, and every rule of a base chain names br1 or its subnet:
    # traffic that is not br1's passes, and the OS's tables decide about it.
    iface = ipaddress.IPv4Interface(br1)
    text = nft_ruleset(iface, LAN, access)
    assert text.count("policy accept;") == 3 and "policy drop" not in text
    for chain in ("input", "forward", "postrouting"):
        for rule in chains(text)[chain]:
            assert '"br1"' in rule or str(iface.network) in rule, rule
    # The subnet and the host's address follow initpy.br1.
    assert f"ip saddr != {iface.network} drop" in text
    assert f"ip daddr != {iface.ip} drop" in text
    assert f'ip saddr {iface.network} oifname "br0" masquerade' in text


def test_allow_keeps_the_rest_and_drops_only_the_lan_rule() -> None:
    deny = chains(nft_ruleset(DEFAULT, LAN, LanAccess.DENY))
    allow = chains(nft_ruleset(DEFAULT, LAN, LanAccess.ALLOW))
    assert [r for r in deny["forward_from_br1"] if not r.startswith("ip daddr {")] == allow[
        "forward_from_br1"
    ]
    assert {k: v for k, v in deny.items() if k != "forward_from_br1"} == {
        k: v for k, v in allow.items() if k != "forward_from_br1"
    }


@pytest.mark.parametrize(
    ("lease", "expected"),
    [
        # A private LAN is inside a private range already: no second element.
        ("10.9.0.0/24", "10.0.0.0/8, 100.64.0.0/10, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16"),
        # A public LAN subnet is denied too: the relay may live there.
        (
            "198.51.100.0/24",
            "10.0.0.0/8, 100.64.0.0/10, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, "
            "198.51.100.0/24",
        ),
        # A LAN wider than a private range swallows it.
        ("172.0.0.0/8", "10.0.0.0/8, 100.64.0.0/10, 169.254.0.0/16, 172.0.0.0/8, 192.168.0.0/16"),
    ],
)
def test_the_lans_subnet_joins_the_denied_ranges(lease: str, expected: str) -> None:
    text = nft_ruleset(DEFAULT, ipaddress.IPv4Network(lease), LanAccess.DENY)
    assert f"ip daddr {{ {expected} }} drop" in text
    assert f"({lease})" in text  # the comment names the lease's subnet


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_lan_ranges_cover_the_lan_and_every_private_range_once(address: int, prefix: int) -> None:
    lan = ipaddress.IPv4Network((address, prefix), strict=False)
    ranges = lan_ranges(lan)
    for wanted in (lan, *PRIVATE_RANGES):
        assert any(wanted.subnet_of(r) for r in ranges), wanted
    # Disjoint (nft refuses overlapping elements in an anonymous interval set).
    for i, one in enumerate(ranges):
        assert not any(one.overlaps(other) for other in ranges[i + 1 :])


@pytest.mark.parametrize(
    ("raw", "value", "warned"),
    [
        (None, LanAccess.DENY, False),
        ("allow", LanAccess.ALLOW, False),
        ("deny", LanAccess.DENY, False),
        ("yes", LanAccess.DENY, True),
        ("", LanAccess.DENY, True),
    ],
)
def test_the_lan_parameter(raw: str | None, value: LanAccess, warned: bool) -> None:
    text = "" if raw is None else f"initpy.br1_lan={raw}"
    config = cmdline.parse(text, network.HOOK.parameters)
    assert config.value(network.BR1_LAN) is value
    problems = [p for p in config.problems if p.startswith("initpy.br1_lan:")]
    assert problems == (
        [f"initpy.br1_lan: expected one of deny|allow, got {raw!r}; using the default 'deny'"]
        if warned
        else []
    )
