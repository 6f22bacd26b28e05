"""The build host's services: /build/tftp read from the LAN over TFTP, and
build machines that run (issue 18, acceptance 5 and 4). Two boots.

A LAN host is a namespace in the guest whose veth is a port of br0, the
bridge that holds the NIC, with an address of br0's subnet: to the host it
is one more machine on the public network, as the spec's "build host log
access" reader is.

boot 1  the default (initpy.tftp=lan): the LAN host reads a file of
        /build/tftp from br0's address on port 69; its write is refused
        and nothing appears; initpy-tftp-lan.service is active, and
        br0's address listens on UDP 69 only (that dnsmasq does TFTP, not
        DNS or DHCP). Then the build machines: as build (in group kvm),
        qemu-system-x86_64 -accel tcg boots the test's own kernel to its
        first console line; as build, initpy-agent-tftp asks root's
        broker (initpy-agent-tftp.socket) for an in.tftpd on port 23400
        of br1's address serving a subfolder of /build/tftp: it takes a
        file a namespace on br1 writes, the file is on the host, owned by
        build, and the server is gone once the command ends; a symlinked
        folder and a port outside AGENT_TFTP_PORTS are refused.
        systemd-timesyncd is active, on Debian's pool (QEMU's DHCP
        gives no option 42, so no drop-in).
boot 2  initpy.tftp=br1: the same read gets nothing, the unit did not
        start (its condition, the config the state writes, is unmet), br0's
        address listens on no UDP port, and a namespace on br1 still gets
        a lease and the file over TFTP.

Logs: artifacts/vm/tftp-lan.log, artifacts/vm/tftp-br1.log.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

from initpy.runtime import layout
from initpy.runtime.osimage import OS_PROGRAMS
from tests.harness import smtp_sink
from tests.harness.fullos import GUEST_BR1_SCRIPT, Host, boot_full
from tests.harness.images import InitrdFiles, KernelFiles

pytestmark = pytest.mark.vm

# The LAN host: 10.0.2.200 is in QEMU user-net's subnet (br0 leases
# 10.0.2.15) and outside its DHCP pool. busybox tftp gives up after its own
# retries; `timeout` bounds a server that never answers.
GUEST_BR0_SCRIPT = r"""
set -e
ip netns add lanhost
ip link add vbr0 type veth peer name eth0 netns lanhost
ip link set vbr0 master br0 up
ip -n lanhost link set lo up
ip -n lanhost addr add 10.0.2.200/24 dev eth0
ip -n lanhost link set eth0 up
echo TOKEN > /build/tftp/log.txt
server=$(ip -4 -o addr show br0 | awk '{print $4}' | cut -d/ -f1)
echo "server $server"
cd /run
if ip netns exec lanhost timeout 60 busybox tftp -g -r log.txt -l /run/lan-read.txt "$server"
then echo "read $(cat /run/lan-read.txt)"
else echo "read failed"
fi
echo written > /run/lan-write.txt
if ip netns exec lanhost timeout 60 busybox tftp -p -l /run/lan-write.txt -r new.txt "$server"
then echo "write done"
else echo "write failed"
fi
echo "files $(ls /build/tftp | tr '\n' ' ')"
echo "unit $(systemctl is-active initpy-tftp-lan.service || true)"
echo "ports $(ss -Hlun | awk '{print $4}' | grep "^$server:" | sort | tr '\n' ' ')"
"""


# A build machine under the agent's uid: nested TCG under TCG is slow; this
# bounds a hang. The first console line is the kernel's banner.
NESTED_TIMEOUT = 900
NESTED_SCRIPT = r"""
cd /build
id build
start=$(date +%s)
runuser -u build -- timeout NESTED_TIMEOUT qemu-system-x86_64 -accel tcg -m 128 -nodefaults \
  -display none -monitor none -serial stdio -no-reboot \
  -kernel /run/nested-vmlinuz -append "console=ttyS0 panic=-1" 2>&1 | grep -a -m1 "Linux version"
echo "nested seconds $(( $(date +%s) - start ))"
"""
# The agent's TFTP server for one machine, asked for as build through root's
# broker (initpy-agent-tftp.socket): in.tftpd cannot run as build itself
# (its drop to --user needs CAP_SETGID: each request's child exits 71).
# Then what build may not ask: a symlinked folder, a port outside the range.
AGENT_TFTP = f"{OS_PROGRAMS}/initpy-agent-tftp"
FIRST, LAST = layout.AGENT_TFTP_PORTS
AGENT_TFTP_SCRIPT = rf"""
set -e
echo "socket $(systemctl is-active initpy-agent-tftp.socket)"
runuser -u build -- mkdir /build/tftp/machine1
runuser -u build -- ln -s /etc /build/tftp/evil
start=$(date +%s%N)
runuser -u build -- {AGENT_TFTP} {FIRST} machine1 > /run/agent-tftp.out 2>&1 &
client=$!
for i in $(seq 600); do
  grep -q -e '^ready ' -e 'error:' /run/agent-tftp.out && break; sleep 0.1
done
echo "waited-ms $(( ($(date +%s%N) - start) / 1000000 ))"
echo "client $(head -1 /run/agent-tftp.out)"
echo "instances $(systemctl list-units --no-legend 'initpy-agent-tftp@*' | wc -l)"
echo TOKEN > /run/upload.txt
ip netns exec lan busybox tftp -p -l /run/upload.txt -r upload.txt 172.23.0.1 {FIRST}
echo "owner $(stat -c %U /build/tftp/machine1/upload.txt)"
echo "content $(cat /build/tftp/machine1/upload.txt)"
echo "symlink $(runuser -u build -- {AGENT_TFTP} {FIRST + 1} evil 2>&1 | head -1)"
echo "port $(runuser -u build -- {AGENT_TFTP} {LAST + 1} machine1 2>&1 | head -1)"
kill $client
wait $client || true
sleep 1
echo "listening-after $(ss -Hlun | awk '{{print $4}}' | grep -c ':{FIRST}$' || true)"
echo "broker $(journalctl -t initpy-agent-tftp -o cat --no-pager | grep -m1 serving)"
"""


def boot(image: InitrdFiles, workdir_factory: pytest.TempPathFactory, where: str) -> Host:
    return boot_full(
        image,
        workdir_factory.mktemp(f"tftp-{where}"),
        f"tftp-{where}",
        append=[f"initpy.tftp={where}"],
    )


def from_lan(host: Host) -> tuple[str, dict[str, str]]:
    """Run the LAN host's script; its token and its lines by first word."""
    token = f"lan-{secrets.token_hex(6)}"
    out = host.ssh.run("sh -s", stdin=GUEST_BR0_SCRIPT.replace("TOKEN", token), timeout=300).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert re.fullmatch(r"10\.0\.2\.\d+", lines["server"]), out
    return token, lines


def tftp_line(host: Host) -> str:
    found = re.search(r"initpy: tftp: ok in \d+ ms: (.*)", host.vm.console)
    assert found, "no tftp state line on the console"
    return found.group(1).strip()


@pytest.fixture(scope="module")
def lan(vm_full_image: InitrdFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    host = boot(vm_full_image, tmp_path_factory, "lan")
    try:
        yield host
    finally:
        host.close()


def test_1_by_default_the_lan_reads_build_tftp_and_cannot_write(lan: Host) -> None:
    token, lines = from_lan(lan)
    assert lines["read"] == token, lines
    assert lines["write"] == "failed", lines
    assert lines["files"].split() == ["log.txt"], lines
    assert lines["unit"] == "active", lines
    assert lines["ports"].split() == [f"{lines['server']}:69"], lines
    assert tftp_line(lan).endswith("; TFTP on br1 and br0 (read-only)")


def test_2_build_machines_run_as_build(lan: Host, vm_kernel: KernelFiles) -> None:
    # The guest has no kernel image of its own: push the test's.
    with vm_kernel.vmlinuz.open("rb") as kernel:
        subprocess.run(
            ["ssh", *lan.ssh.options(), "root@127.0.0.1", "cat > /run/nested-vmlinuz"],
            stdin=kernel, check=True, timeout=300, capture_output=True,
        )  # fmt: skip
    started = time.monotonic()
    script = NESTED_SCRIPT.replace("NESTED_TIMEOUT", str(NESTED_TIMEOUT))
    out = lan.ssh.run("sh -s", stdin=script, timeout=NESTED_TIMEOUT + 60).stdout
    print(f"nested guest to its first console line: {time.monotonic() - started:.0f} s; {out}")
    assert re.search(r"^uid=1100\(build\) .*\bkvm\b", out, re.M), out
    assert re.search(r"^\[ *[\d.]+\] Linux version \S+", out, re.M), out
    # A machine on br1 (a lease from dnsmasq) writes through in.tftpd.
    token = f"up-{secrets.token_hex(6)}"
    br1 = GUEST_BR1_SCRIPT.replace("SINK", smtp_sink.SINK_ADDRESS).replace("TOKEN", "br1")
    lan.ssh.run("sh -s", stdin=br1, timeout=300)
    out = lan.ssh.run("sh -s", stdin=AGENT_TFTP_SCRIPT.replace("TOKEN", token), timeout=300).stdout
    print(out)
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert lines["socket"] == "active", out
    assert lines["client"].startswith(f"ready 172.23.0.1:{FIRST} /build/tftp/machine1 "), out
    assert lines["instances"] == "1", out
    assert (lines["owner"], lines["content"]) == ("build", token), out
    assert lines["symlink"] == "initpy-agent-tftp: error: /build/tftp/evil is a symbolic link"
    assert lines["port"].startswith(f"initpy-agent-tftp: error: port {LAST + 1} is outside"), out
    assert lines["listening-after"] == "0", out
    assert "for uid 1100" in lines["broker"], out


def test_2_time_sync_runs_with_debians_pool_when_the_lease_names_no_ntp_server(
    lan: Host,
) -> None:
    # QEMU's user network gives no option 42: no drop-in, timesyncd's defaults.
    # (tests/vm/test_network.py shows a lease with option 42 becoming the drop-in.)
    out = lan.sections(
        {
            "active": "systemctl is-active systemd-timesyncd",
            "dropin": "ls /etc/systemd/timesyncd.conf.d/ 2>/dev/null | tr '\\n' ' '",
            "servers": "timedatectl show-timesync -p SystemNTPServers -p FallbackNTPServers",
        }
    )
    assert out["active"] == "active", out
    assert "initpy.conf" not in out["dropin"], out
    servers = dict(line.split("=", 1) for line in out["servers"].splitlines())
    assert servers["SystemNTPServers"] == "", out
    assert "debian.pool.ntp.org" in servers["FallbackNTPServers"], out


def test_3_with_initpy_tftp_br1_the_lan_reads_nothing_and_br1_still_does(
    lan: Host, vm_full_image: InitrdFiles, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lan.close()  # done with the default boot: one QEMU at a time
    host = boot(vm_full_image, tmp_path_factory, "br1")
    try:
        _token, lines = from_lan(host)
        assert lines["read"] == "failed", lines
        assert lines["unit"] == "inactive", lines
        assert lines["ports"].split() == [], lines
        assert tftp_line(host).endswith("; TFTP on br1 only (initpy.tftp=br1)")
        br1_token = f"br1-{secrets.token_hex(6)}"
        script = GUEST_BR1_SCRIPT.replace("SINK", smtp_sink.SINK_ADDRESS)
        out = host.ssh.run("sh -s", stdin=script.replace("TOKEN", br1_token), timeout=300).stdout
        assert out.split("==tftp\n")[1].strip() == br1_token, out
    finally:
        host.close()
