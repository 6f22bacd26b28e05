"""A plain Debian tree is a whole host (issue 17, acceptance 6). One boot.

The tree is `mmdebstrap --variant=minbase` with the packages of
os/packages.list and nothing else: no os/overlay, no os/customize
(tests/harness/plaintree.py, cached). Everything the host needs from initpy
comes with `mkinitrd --rootfs`: the kernel's module tree, the hooks' units,
scripts and config. On that one boot:

(1) systemd reaches multi-user.target with no failed unit;
(2) the boot mail reaches the SMTP sink, addressed to the admin;
(3) a veth joined to br1 gets a lease from dnsmasq (the veth module loads
    from the module tree mkinitrd added), reaches the sink through the NAT
    and fetches a file over TFTP;
(4) the DHCP renewer is adopted: initpy-dhcp.scope is active and holds it.

Log: artifacts/vm/plain-tree.log. The figures (tree build, image size,
multi-user.target) are printed with -s.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.harness import smtp_sink
from tests.harness.fullos import (
    ADMIN,
    GUEST_BR1_SCRIPT,
    HOSTNAME,
    Host,
    boot_full,
    build_image,
    wait_for_mail,
)
from tests.harness.images import InitrdFiles, KernelFiles
from tests.harness.plaintree import build_plain_tree

from .conftest import _initrd_files

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def plain_image(vm_kernel: KernelFiles, tmp_path_factory: pytest.TempPathFactory) -> InitrdFiles:
    started = time.monotonic()
    try:
        tree = build_plain_tree()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"building the plain tree (mmdebstrap): {exc}", pytrace=False)
    print(f"plain tree {tree}: {time.monotonic() - started:.1f} s (cached when fast)")
    outdir = tmp_path_factory.mktemp("plain-image")
    try:
        build_image(vm_kernel.vmlinuz, vm_kernel.modules, tree, outdir)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"packing the plain tree (mkinitrd --rootfs): {exc}", pytrace=False)
    files = _initrd_files(outdir)
    print(f"plain image: initrd {files.initrd.stat().st_size / 1e6:.1f} MB")
    return files


@pytest.fixture(scope="module")
def host(plain_image: InitrdFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    booted = boot_full(plain_image, tmp_path_factory.mktemp("plain"), "plain-tree")
    try:
        yield booted
    finally:
        booted.close()


def test_1_multi_user_target_with_no_failed_unit(host: Host) -> None:
    state, multi_user_ms, systemd_ms, failed, active = host.ready.groups()
    print(f"multi-user.target at {multi_user_ms} ms (systemd at {systemd_ms} ms)")
    out = host.sections(
        {
            "failed": "systemctl --failed --no-legend --plain",
            "target": "systemctl is-active multi-user.target",
            "tftp": "ls /etc/dnsmasq.d",
            "local": "ls -A /usr/local/sbin | wc -l",
        }
    )
    assert failed == "" and out["failed"] == "", out["failed"]
    assert state == "running", host.ready.group(0)
    assert out["target"] == "active"
    assert active == "ssh=active postfix=active dnsmasq=active"
    # What os/overlay used to bring came from the hooks, not from the tree.
    assert "buildos-tftp.conf" in out["tftp"].split()
    assert out["local"] == "0"


def test_2_the_boot_mail_reaches_the_sink(host: Host) -> None:
    boot = wait_for_mail(host.mail, f"buildos: {HOSTNAME} is up")
    assert boot["X-Sink-Rcpt-To"] == f"<{ADMIN}>", boot.as_string()[:2000]
    body = boot.get_content()
    assert f"build id:   {host.image.buildid.read_text().strip()}" in body, body
    assert re.search(r"^  outcome: handoff$", body, re.M), body


def test_3_a_veth_on_br1_gets_a_lease_nat_and_tftp(host: Host) -> None:
    token = f"tftp-{secrets.token_hex(6)}"
    script = GUEST_BR1_SCRIPT.replace("SINK", smtp_sink.SINK_ADDRESS).replace("TOKEN", token)
    out = host.ssh.run("sh -s", stdin=script, timeout=180).stdout
    lease, rest = out.split("==sink\n")
    sink, tftp = rest.split("==tftp\n")
    assert re.search(r"^lease 172\.23\.\d+\.\d+/16 router 172\.23\.0\.1$", lease, re.M), out
    assert sink.startswith("220 sink ESMTP"), out
    assert tftp.strip() == token


def test_4_the_renewer_is_adopted(host: Host) -> None:
    out = host.sections(
        {
            "scope": "systemctl is-active initpy-dhcp.scope initpy-dhcp.service",
            "cgroup": "cat /proc/$(pgrep -x initpy-dhcp)/cgroup",
        }
    )
    assert out["scope"].split() == ["active", "active"], out
    assert out["cgroup"].endswith("/initpy-dhcp.scope"), out
