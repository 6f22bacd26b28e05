"""The fleet loop through PXE (issue 12, acceptance 1 and 2), in one VM.

The operator's steps, as docs/fleet.md gives them: two builds of the full
image (A, then B: the same OS tree, each with its own stand-in build agent,
so their build ids differ), `scripts/pxe-layout A DIR --server 10.0.2.2
--mac ...`, and later `scripts/pxe-layout --build-only B DIR`. QEMU serves
DIR with its own DHCP and TFTP (`-netdev user,restrict=on,tftp=DIR,
bootfile=pxelinux.0`) and boots from the NIC's iPXE ROM (`-boot n`),
without -no-reboot, so that a reboot PXE-boots the host again.

test_1  boot 1: iPXE -> pxelinux.0 -> the host's pxelinux.cfg/01-<mac> (the
        only config in DIR) -> build A; `buildos: up` with nothing failed;
        SSH in with the key from the append line; the hostname, the relay,
        the admin, the build id URL and the interval in effect (report.json,
        buildos.env, postfix); the boot mail reaches the SMTP sink; the
        monitor polls and says build A is current. The agent runs in
        initpy-agent.service as `build` in /build with its quoted
        arguments, the monitor as `initpy-monitor` (issue 19); as `build`,
        `kill -STOP` of the monitor and a reboot request both fail; killed,
        the agent is started again by systemd.
test_2  rollout: B's files renamed into DIR (build id last). The monitor
        mails the admin (old id, new id, uptime) and reboots through
        systemd; the host PXE-boots again and comes up on build B: the
        manifest's build id, the monitor's own check, B's agent in its unit,
        B's boot mail.

The figures (TFTP transfer, boot times, poll to reboot) are printed and
kept in artifacts/vm/pxe-figures.txt. Logs: artifacts/vm/pxe-fleet.log.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path

import pytest

from tests.harness import qemu, smtp_sink
from tests.harness.disks import state_and_machines
from tests.harness.fullos import (
    ADMIN,
    READY,
    Ssh,
    build_image,
    free_port,
    make_key,
    pxe_layout,
    wait_for_mail,
)
from tests.harness.images import InitrdFiles, KernelFiles
from tests.harness.machine import loosely
from tests.harness.scenario import FULL_BOOT_MAC

from .conftest import _initrd_files

pytestmark = pytest.mark.vm

SERVER = "10.0.2.2"  # QEMU's user network: the host, its TFTP server
BUILDID_URL = f"tftp://{SERVER}/buildos/buildos-buildid"
HOSTNAME = "pxe-host"
INTERVAL = 10  # initpy.monitor.interval: the first poll within 10 s, then 7.5-12.5 s
AGENT = "/usr/local/bin/initpy-standin-agent"
AGENT_ARGS = "--fleet pxe-test"  # pxe-layout --agent quotes the program and its arguments
AGENT_SCRIPT = """#!/bin/sh
# A stand-in build agent (tests/vm/test_pxe.py): who, where, which build; then it waits.
echo "stand-in agent of build GENERATION ($*): user $(id -un), in $(pwd)"
exec sleep infinity
"""
# The agent's identity (initpy-agent.service: User=build, Group=build, and
# build's groups), for what it must not be able to do to the monitor.
AS_AGENT = "setpriv --reuid=build --regid=build --init-groups"
REBOOT_REQUEST = "/run/initpy-monitor/reboot"
MEMORY = 2048
# Under TCG a PXE boot of the full image reaches `buildos: up` after about
# 80 s; these bound a hang, not the speed.
BOOT_TIMEOUT = 900
ROLLOUT_TIMEOUT = 300
BOOT_FAILED = r"initpy: rescue: .*|Kernel panic"
FIGURES = qemu.ARTIFACTS / "pxe-figures.txt"


@dataclass
class FleetHost:
    """The one VM of this file, the TFTP folder it boots from, and what was measured."""

    vm: qemu.Vm
    ssh: Ssh
    tftp: Path
    mail: Path
    builds: dict[str, InitrdFiles]
    figures: list[str] = field(default_factory=list)

    def build_id(self, name: str) -> str:
        return self.builds[name].buildid.read_text().strip()

    def sections(self, commands: dict[str, str]) -> dict[str, str]:
        """Run each command in one SSH session; their outputs by name."""
        return self.ssh.sections(commands)

    def note(self, line: str) -> None:
        print(f"pxe: {line}")
        self.figures.append(line)
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        FIGURES.write_text("\n".join(self.figures) + "\n")

    def monitor_status(self, wanted: str, timeout: float = 4 * INTERVAL) -> str:
        """The monitor's STATUS= text, once it contains `wanted`."""
        return self.ssh.until("systemctl show -P StatusText initpy-monitor", wanted, timeout)

    def agent_apart_from_the_monitor(self, which: str) -> None:
        """Build `which`'s stand-in agent runs in initpy-agent.service, as build
        in /build with its quoted arguments; the monitor runs as initpy-monitor,
        and the agent's uid can neither stop it nor ask for a reboot."""
        line = f"stand-in agent of build {which} ({AGENT_ARGS}): user build, in /build"
        deadline = time.monotonic() + 4 * INTERVAL
        while True:
            journal = self.ssh.run("journalctl -b -t initpy-agent --no-pager -o cat").stdout
            if line in journal or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert line in journal, journal
        agent = "/proc/$(systemctl show -P MainPID initpy-agent)"
        monitor = "$(systemctl show -P MainPID initpy-monitor)"
        out = self.sections(
            {
                "active": "systemctl is-active initpy-agent initpy-monitor",
                "agent": f"stat -c %U {agent}; readlink {agent}/cwd; cat {agent}/cgroup",
                "monitor": f"p={monitor}; echo $p; stat -c %U /proc/$p",
            }
        )
        assert out["active"].split() == ["active", "active"], out
        assert out["agent"].splitlines() == [
            "build",
            "/build",
            "0::/system.slice/initpy-agent.service",
        ], out
        pid, user = out["monitor"].split()
        assert user == "initpy-monitor", out
        # What the agent could do on main, where the monitor ran as build.
        attack = self.sections(
            {
                "stop": f"{AS_AGENT} kill -STOP {pid}; echo exit=$?",
                "request": f"{AS_AGENT} touch {REBOOT_REQUEST}; echo exit=$?",
                "state": f"grep ^State: /proc/{pid}/status",
                "pid": "systemctl show -P MainPID initpy-monitor",
            }
        )
        assert "Operation not permitted" in attack["stop"], attack
        assert attack["stop"].endswith("exit=1"), attack
        assert "Permission denied" in attack["request"], attack
        assert attack["request"].endswith("exit=1"), attack
        assert "stopped" not in attack["state"] and attack["pid"] == pid, attack
        self.note(
            f"boot {which}: initpy-agent.service runs the agent as {out['agent'].splitlines()[0]} "
            f"in its cgroup, the monitor runs as {user}; as build: "
            + "; ".join(attack[k].splitlines()[0] for k in ("stop", "request"))
        )

    def agent_restarts(self, which: str) -> None:
        """systemd starts the agent again when it ends (Restart=always, RestartSec=10)."""
        line = f"stand-in agent of build {which} ({AGENT_ARGS})"
        first = self.ssh.run("systemctl show -P MainPID initpy-agent").stdout.strip()
        self.ssh.run(f"kill -KILL {first}")
        killed = time.monotonic()
        while True:
            again = self.sections(
                {
                    "pid": "systemctl show -P MainPID initpy-agent",
                    "journal": "journalctl -b -t initpy-agent --no-pager -o cat",
                }
            )
            if again["pid"] not in ("0", first) and again["journal"].count(line) >= 2:
                break
            assert time.monotonic() < killed + 90, again
            time.sleep(1)
        back = time.monotonic() - killed
        self.note(f"boot {which}: agent killed, running again {back:.0f} s later")

    def pxe_boot(self, which: str, since: float = 0.0, start: str = "QEMU starts") -> re.Match[str]:
        """Follow one PXE boot on the console to `buildos: up`; note its figures.

        Times are console arrival times, counted from `since` (QEMU time).
        """
        vm = self.vm
        marks = {
            "pxelinux.0 fetched (DHCP, TFTP)": loosely("PXELINUX "),
            "kernel transfer starts": loosely("Loading /buildos/buildos-image"),
            "initrd transfer starts": loosely("Loading /buildos/buildos-initrd"),
            "transfers done (the kernel starts)": loosely("Probing EDD"),
            "/init runs": r"Run /init as init process",
            "initpy hands off to systemd": r"initpy: handoff: exec ",
        }
        at = {}
        for what, pattern in marks.items():
            at[what] = vm.seconds_at(vm.expect(pattern, BOOT_TIMEOUT, fail_on=BOOT_FAILED).start())
        ready = vm.expect(READY, BOOT_TIMEOUT, fail_on=BOOT_FAILED)
        at["buildos: up"] = vm.seconds_at(ready.start())
        build = self.builds[which]
        kernel_mb = build.image.stat().st_size / 1e6
        initrd_mb = build.initrd.stat().st_size / 1e6
        kernel_s = at["initrd transfer starts"] - at["kernel transfer starts"]
        initrd_s = at["transfers done (the kernel starts)"] - at["initrd transfer starts"]
        self.note(
            f"boot of build {which}, from '{start}': "
            + ", ".join(f"{what} {seconds - since:.1f} s" for what, seconds in at.items())
        )
        self.note(
            f"boot of build {which}: TFTP kernel {kernel_mb:.1f} MB in {kernel_s:.1f} s, "
            f"initrd {initrd_mb:.1f} MB in {initrd_s:.1f} s: "
            f"{(kernel_mb + initrd_mb) / (kernel_s + initrd_s):.1f} MB/s; "
            f"multi-user.target at {int(ready.group(2)) / 1000:.1f} s of uptime"
        )
        return ready


@pytest.fixture(scope="module")
def builds(
    vm_kernel: KernelFiles, vm_rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, InitrdFiles]:
    """Builds A and B of the full image: one tree, each with its own stand-in agent."""
    found = {}
    for name in ("A", "B"):
        folder = tmp_path_factory.mktemp(f"build-{name}")
        agent = folder / "agent"
        agent.write_text(AGENT_SCRIPT.replace("GENERATION", name))
        agent.chmod(0o755)
        outdir = folder / "out"
        build_image(
            vm_kernel.vmlinuz, vm_kernel.modules, vm_rootfs, outdir, includes=[f"{agent}:{AGENT}"]
        )
        found[name] = _initrd_files(outdir)
    assert found["A"].buildid.read_text() != found["B"].buildid.read_text()
    return found


@pytest.fixture(scope="module")
def host(
    builds: dict[str, InitrdFiles], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetHost]:
    work = tmp_path_factory.mktemp("pxe")
    tftp, mail = work / "tftp", work / "mail"
    mail.mkdir()
    key = make_key(work)
    words = f"console=ttyS0 panic=-1 initpy.monitor.interval={INTERVAL}"
    said = pxe_layout(
        str(builds["A"].outdir), str(tftp),
        "--server", SERVER, "--mac", FULL_BOOT_MAC, "--timeout", "0",
        "--smtp-relay", smtp_sink.SINK_ADDRESS, "--admin-email", ADMIN,
        "--ssh-key", f"@{key.with_suffix('.pub')}", "--agent", f"{AGENT} {AGENT_ARGS}",
        "--append", words,
    )  # fmt: skip
    assert f"buildos.buildid_url={BUILDID_URL}" in said, said
    port = free_port()
    options = f"hostname={HOSTNAME},tftp={tftp},bootfile=pxelinux.0,"
    options += f"hostfwd=tcp:127.0.0.1:{port}-:22,{smtp_sink.guestfwd(mail)}"
    nic = qemu.Nic.user("net0", mac=FULL_BOOT_MAC, options=options)
    with qemu.network_boot(
        nics=[nic],
        disks=state_and_machines(work),
        memory=MEMORY,
        name="pxe-fleet",
        reboot=True,
    ) as vm:
        fleet = FleetHost(vm, Ssh(port, key), tftp, mail, builds)
        fleet.pxe_boot("A")
        fleet.ssh.wait()
        yield fleet


def test_1_the_full_image_pxe_boots_to_multi_user_with_the_append_line_in_effect(
    host: FleetHost,
) -> None:
    console = host.vm.console
    # iPXE fetched pxelinux.0 from QEMU's TFTP server, and pxelinux took the
    # host's own file: it is the only config in the folder.
    assert re.search(loosely(f"tftp://{SERVER}/pxelinux.0... ok"), console)
    assert sorted(p.name for p in (host.tftp / "pxelinux.cfg").iterdir()) == [
        "01-" + FULL_BOOT_MAC.replace(":", "-")
    ]
    assert host.vm.console.count("buildos: up: running;") == 1
    up = re.search(READY, console)
    assert up and up.group(1) == "running" and up.group(4) == "", up and up.group(0)

    build_a = host.build_id("A")
    out = host.sections(
        {
            "cmdline": "cat /proc/cmdline",
            "report": "cat /run/initpy/report.json",
            "hostname": "hostname",
            "relay": "postconf -h relayhost",
            "buildos_env": "cat /etc/initpy/buildos.env",
            "monitor_env": "cat /etc/initpy/monitor.env",
            "manifest": "cat /usr/lib/initpy/manifest.json",
            "authorized": "cat /root/.ssh/authorized_keys",
            "active": "systemctl is-active initpy-monitor initpy-reboot.path",
        }
    )
    # pxelinux's line: its own words around the config's append line.
    assert out["cmdline"].startswith("BOOT_IMAGE=/buildos/buildos-image ")
    assert out["cmdline"].endswith(" initrd=/buildos/buildos-initrd")
    parameters = json.loads(out["report"])["command_line"]["parameters"]
    public_key = host.ssh.key.with_suffix(".pub").read_text().strip()
    assert parameters["buildos.smtp_relay"] == smtp_sink.SINK_ADDRESS
    assert parameters["buildos.admin_email"] == ADMIN
    assert parameters["buildos.buildid_url"] == BUILDID_URL
    assert parameters["buildos.ssh_key"] == public_key  # the quotes grouped it
    assert parameters["initpy.monitor.agent"] == f"{AGENT} {AGENT_ARGS}"  # and these
    assert json.loads(out["report"])["command_line"]["warnings"] == []
    assert out["hostname"] == HOSTNAME
    assert smtp_sink.SINK_ADDRESS in out["relay"], out["relay"]
    assert f"BUILDOS_BUILDID_URL={BUILDID_URL}" in out["buildos_env"].splitlines()
    assert f"INITPY_MONITOR_INTERVAL={INTERVAL}" in out["monitor_env"].splitlines()
    assert json.loads(out["manifest"])["build_id"] == build_a
    assert out["authorized"] == public_key
    assert out["active"].split() == ["active", "active"]

    # The relay and the admin in effect: the boot mail reaches the sink.
    boot = wait_for_mail(host.mail, f"buildos: {HOSTNAME} is up")
    assert boot["X-Sink-Rcpt-To"] == f"<{ADMIN}>"
    assert [a for _n, a in getaddresses(boot.get_all("To", []))] == [ADMIN]
    assert f"build id:   {build_a}" in boot.get_content()

    # The monitor polls the TFTP URL and finds the build it runs.
    status = host.monitor_status("is current")
    assert f"build {build_a[:12]} is current" in status, status
    journal = host.ssh.run("journalctl -b -u initpy-monitor --no-pager -o cat").stdout
    assert f"polling {BUILDID_URL} every {INTERVAL:g} s" in journal, journal
    host.note(f"monitor status after boot A: {status}")
    # The agent in its own unit, as the build user, apart from the monitor.
    host.agent_apart_from_the_monitor("A")
    host.agent_restarts("A")


def test_2_a_new_build_id_mails_the_admin_reboots_and_comes_up_on_the_new_build(
    host: FleetHost,
) -> None:
    build_a, build_b = host.build_id("A"), host.build_id("B")
    # test_1's checks ran first: the monitor has polled, and found build A.
    assert f"build {build_a[:12]} is current" in host.monitor_status("is current")
    rolled_at = time.time()
    console_at = len(host.vm.console)
    said = pxe_layout("--build-only", str(host.builds["B"].outdir), str(host.tftp))
    assert build_b in said, said
    rolled_qemu = host.vm.seconds

    mail = wait_for_mail(host.mail, f"{HOSTNAME}: new build {build_b[:12]}, rebooting", 180)
    mailed = int(mail["X-Sink-Received-Ns"]) / 1e9
    assert mail["X-Sink-Rcpt-To"] == f"<{ADMIN}>"
    body = mail.get_content()
    assert f"old build id: {build_a}" in body, body
    assert f"new build id: {build_b}" in body, body
    assert re.search(r"^uptime: +\S", body, re.M), body

    restart = host.vm.expect(r"reboot: Restarting system", ROLLOUT_TIMEOUT, fail_on=BOOT_FAILED)
    assert restart.start() > console_at
    restarted = host.vm.seconds_at(restart.start())
    # systemd took the host down in order, asked by the monitor's path unit
    # (initpy-reboot.service runs `systemctl reboot` as root).
    shutdown = host.vm.console[console_at : restart.start()]
    for stopped in (r"Stopped \S*initpy-reboot\.serv", r"Stopped \S*initpy-monitor\.se"):
        assert re.search(stopped, shutdown), shutdown[-3000:]
    assert re.search(r"Reached target \S*reboot\.target", shutdown), shutdown[-3000:]
    # The monitor dates its mail when it finds the change (the guest's clock
    # is the host's, to the second): the poll, then postfix's relay.
    written = parsedate_to_datetime(str(mail["Date"])).timestamp()
    host.note(
        f"rollout: build id replaced -> mail written (its Date:) {written - rolled_at:.0f} s, "
        f"at the sink {mailed - rolled_at:.1f} s -> 'reboot: Restarting system' "
        f"{restarted - rolled_qemu:.1f} s after the rollout"
    )

    host.pxe_boot("B", since=restarted, start="reboot: Restarting system")
    host.ssh.wait()
    out = host.sections(
        {
            "manifest": "cat /usr/lib/initpy/manifest.json",
            "check": "PYTHONPATH=/usr/lib/initpy/python python3 -m initpy.host.monitor "
            "--check; echo exit=$?",
        }
    )
    assert json.loads(out["manifest"])["build_id"] == build_b
    assert out["check"].endswith("exit=0"), out["check"]
    host.agent_apart_from_the_monitor("B")
    status = host.monitor_status("is current")
    assert f"build {build_b[:12]} is current" in status, status
    second = wait_for_mail(host.mail, f"buildos: {HOSTNAME} is up", 180, index=1)
    assert f"build id:   {build_b}" in second.get_content()
    # One reboot, not a loop: the console shows two boots of the host.
    assert host.vm.console.count("buildos: up: running;") == 2
    host.note(f"monitor status after boot B: {status}")
