"""The full image (issue 10): a Debian OS in RAM, systemd as PID 1, every
service proven from outside the guest. Two boots in all:

boot 1  (1) multi-user.target, systemd PID 1, no failed unit, sshd,
            postfix and dnsmasq active, the DHCP renewer a unit;
        (2) an SSH login with the test's key (buildos.ssh_key), passwords
            refused; hostname, mounts, br0, br1, the masquerade, `id build`;
        (3) the boot mail and a mail to root reach the SMTP sink, addressed
            to buildos.admin_email;
        (4) a namespace on br1 gets a lease, reaches the sink through the
            NAT and fetches a file from /build/tftp over TFTP;
        then `systemctl poweroff`: the renewer's scope stops in order;
boot 2  (5) the same state disk: sshd presents the same host keys.

The OS tree comes from scripts/mkrootfs (cached), packed by mkinitrd at
zstd:3. Logs: artifacts/vm/fullos-boot1.log, fullos-boot2.log.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterator
from email.utils import getaddresses

import pytest

from tests.harness import smtp_sink
from tests.harness.fullos import (
    ADMIN,
    GUEST_BR1_SCRIPT,
    HOSTNAME,
    Host,
    boot_full,
    wait_for_mail,
)
from tests.harness.images import InitrdFiles

pytestmark = pytest.mark.vm

SHUTDOWN_TIMEOUT = 240


@pytest.fixture(scope="module")
def host1(vm_full_image: InitrdFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    host = boot_full(vm_full_image, tmp_path_factory.mktemp("fullos"), "fullos-boot1")
    try:
        yield host
    finally:
        host.close()


def test_1_systemd_reaches_multi_user_with_no_failed_unit_and_the_services_up(
    host1: Host,
) -> None:
    state, multi_user_ms, _systemd_ms, failed, active = host1.ready.groups()
    assert state == "running", host1.ready.group(0)
    assert failed == ""
    assert active == "ssh=active postfix=active dnsmasq=active"
    out = host1.sections(
        {
            "pid1": "cat /proc/1/comm; readlink /proc/1/exe",
            "environ": "tr '\\0' '\\n' < /proc/1/environ",
            "failed": "systemctl --failed --no-legend --plain",
            "active": "systemctl is-active ssh postfix dnsmasq initpy-monitor",
            "renewer": "systemctl is-active initpy-dhcp.scope; "
            "cat /proc/$(pgrep -x initpy-dhcp)/cgroup",
            # What the renewer last said, and the journal's word on it: why, if it stopped.
            "renewer_why": "cat /run/initpy/dhcp-br0.json; "
            "journalctl -b --no-pager -o cat | grep -i -e initpy-dhcp -e renew | tail -n 20",
            "modules": "lsmod | awk 'NR > 1 {print $1}' | sort | tr '\\n' ' '",
        }
    )
    assert out["pid1"].splitlines() == ["systemd", "/usr/lib/systemd/systemd"]
    # systemd got a clean environment: none of the frozen init's variables.
    leaked = [
        v for v in out["environ"].split() if v.startswith(("LD_LIBRARY_PATH", "_PYI", "_MEI"))
    ]
    assert not leaked, out["environ"]
    assert out["failed"] == ""
    assert out["active"].split() == ["active"] * 4
    # The renewer initpy forked is a unit systemd knows, not a stray in init.scope.
    assert out["renewer"].splitlines()[0] == "active", out["renewer_why"]
    assert out["renewer"].endswith("/initpy-dhcp.scope"), out["renewer_why"]
    assert int(multi_user_ms) > 0


def test_2_ssh_login_with_the_test_key_and_passwords_refused(host1: Host) -> None:
    # Password login is refused by the server itself: it offers publickey only.
    refused = host1.ssh.run("true", check=False)
    denied = subprocess.run(
        ["ssh", *host1.ssh.options(), "-o", "PubkeyAuthentication=no",
         "-o", "PreferredAuthentications=password,keyboard-interactive", "root@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 0
    assert denied.returncode == 255
    assert "Permission denied (publickey)" in denied.stderr, denied.stderr
    out = host1.sections(
        {
            "hostname": "hostname",
            "mounts": "for m in /state /build/machines /build/tftp; do "
            "findmnt -rn -o TARGET,FSTYPE -M $m; done",
            "br0": "ip -4 -o addr show dev br0; ip -o link show master br0",
            "br1": "ip -4 -o addr show dev br1",
            "nft": "nft list ruleset",
            "id": "id build",
            "authorized": "cat /root/.ssh/authorized_keys",
        }
    )
    assert out["hostname"] == HOSTNAME
    assert out["mounts"].splitlines() == [
        "/state ext4",
        "/build/machines btrfs",
        "/build/tftp tmpfs",
    ]
    assert "inet 10.0.2.15/24" in out["br0"], out["br0"]
    assert re.search(r"^\d+: \w+: .* master br0", out["br0"], re.M), out["br0"]
    assert re.search(r"inet 172\.23\.0\.1/16", out["br1"]), out["br1"]
    assert re.search(r'oifname "br0" masquerade', out["nft"]), out["nft"]
    # kvm: the build machines' /dev/kvm (hooks/buildhost.py, issue 18)
    assert out["id"] == "uid=1100(build) gid=1100(build) groups=1100(build),106(kvm)"
    assert out["authorized"].split()[2] == "vm-test"


def test_3_boot_mail_and_mail_to_root_reach_the_admin(host1: Host) -> None:
    build_id = host1.image.buildid.read_text().strip()
    boot = wait_for_mail(host1.mail, f"buildos: {HOSTNAME} is up")
    token = f"to-root-{secrets.token_hex(4)}"
    host1.ssh.run(f"echo 'sent in the SSH session' | mail -s {token} root")
    sent = wait_for_mail(host1.mail, token)
    for message in (boot, sent):
        assert message["X-Sink-Rcpt-To"] == f"<{ADMIN}>", message.as_string()[:2000]
        assert [a for _n, a in getaddresses(message.get_all("To", []))] == [ADMIN]
    body = boot.get_content()
    assert f"build id:   {build_id}" in body, body
    assert f"Build host {HOSTNAME} is up." in body
    assert re.search(r"^  outcome: handoff$", body, re.M), body
    assert re.search(r"^  mail_relay +ok ", body, re.M), body
    # The host names itself fully qualified: the admin's domain, no .localdomain.
    sender = boot["X-Sink-Mail-From"].split()[0]  # then ESMTP parameters: BODY=8BITMIME
    assert sender == f"<root@{HOSTNAME}.example.org>", sender


def test_4_a_namespace_on_br1_gets_a_lease_nat_and_tftp(host1: Host) -> None:
    token = f"tftp-{secrets.token_hex(6)}"
    script = GUEST_BR1_SCRIPT.replace("SINK", smtp_sink.SINK_ADDRESS).replace("TOKEN", token)
    out = host1.ssh.run("sh -s", stdin=script, timeout=180).stdout
    lease, sink, tftp = out.split("==sink\n")[0], *out.split("==sink\n")[1].split("==tftp\n")
    match = re.search(r"^lease (172\.23\.\d+\.\d+)/16 router 172\.23\.0\.1$", lease, re.M)
    assert match, out
    # br0's network is reached from br1's subnet only through the masquerade.
    assert sink.startswith("220 sink ESMTP"), out
    assert "221 bye" in sink
    assert tftp.strip() == token


def test_5_shutdown_stops_the_renewer_and_a_second_boot_keeps_the_host_keys(
    host1: Host, tmp_path_factory: pytest.TempPathFactory
) -> None:
    keys = host1.host_keys
    assert {"ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"} <= set(keys), keys
    # The keys are the state disk's, not ones baked into the image.
    saved = host1.workdir / "state-tree" / "initpy" / "ssh" / "ssh_host_ed25519_key.pub"
    assert saved.read_text().split()[1] == keys["ssh-ed25519"]

    host1.ssh.run("systemctl poweroff", check=False, timeout=60)
    # systemd's status line, colour codes and all: "Stopped initpy-dhcp.scope…".
    stopped = host1.vm.expect(r"Stopped \S*initpy-dhcp\.scope", SHUTDOWN_TIMEOUT)
    host1.vm.wait_exit(SHUTDOWN_TIMEOUT)
    shutdown_log = host1.vm.console[stopped.start() - 5000 :]
    assert not re.search(r"initpy-dhcp.*SIGKILL|SIGKILL.*initpy-dhcp", shutdown_log)
    assert "power down" in host1.vm.console.lower() or "reboot: Power down" in host1.vm.console
    host1.close()

    host2 = boot_full(
        host1.image, tmp_path_factory.mktemp("fullos2"), "fullos-boot2", disks=host1.disks
    )
    try:
        assert host2.host_keys == keys
        host2.ssh.run("systemctl poweroff", check=False, timeout=60)
        host2.vm.wait_exit(SHUTDOWN_TIMEOUT)
    finally:
        host2.close()
