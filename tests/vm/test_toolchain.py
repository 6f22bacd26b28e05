"""The toolchain on the full image (issue 18, acceptance 1, 2 and 3). Three boots:

boot 1  buildos.toolchain_url names a stand-in toolchain in build2's shape
        (tests/unit/standin_toolchain.py, its `b` built from C++ with the
        image's c++), served by QEMU's user-net TFTP folder at 10.0.2.2.
        initpy-toolchain fetches, verifies, installs and builds the agent;
        bbot-agent.service runs it as build with the toolchain id and the
        trust fingerprint; the monitor runs as initpy-monitor; the C++
        program ran in the guest (its output is in the install's journal);
        the cache root belongs to initpy-toolchain. Then a poweroff.
boot 2  the same disks: the toolchain comes from the cache (the journal
        says so) and no install script runs; the agent runs again. Then
        the checksums file is replaced by a new toolchain's: the monitor
        mails the admin and reboots (acceptance 3).
boot 3  the new toolchain is built and its agent runs. Then a checksums
        file whose archive does not match its sum is published: the
        monitor fetches and verifies what it lists before rebooting, finds
        the mismatch, mails the admin once and does not reboot; nothing
        ran, and the agent runs on, the same process with the same
        toolchain id; the cache keeps both toolchains.

Each boot prints the seconds from the kernel's start to the agent's start
(systemd's ExecMainStartTimestampMonotonic): acceptance 2's figure.
Logs: artifacts/vm/toolchain-boot1.log ... toolchain-boot3.log.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import smtp_sink
from tests.harness.fullos import Host, boot_full, wait_for_mail
from tests.harness.images import InitrdFiles
from tests.harness.toolchain_boot import TRUST, URL, boot_args, serve, wait_for_agent
from tests.unit import standin_toolchain as standin

pytestmark = pytest.mark.vm

SHUTDOWN_TIMEOUT = 240
# The monitor's poll, short so that a new checksums file is seen at once.
POLL = 5


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The TFTP folder with the stand-in toolchain; the toolchain's key."""
    folder = tmp_path_factory.mktemp("toolchain-tftp")
    return folder, serve(folder)


def boot(image: InitrdFiles, workdir: Path, name: str, tftp: Path, disks: list[str] | None) -> Host:
    return boot_full(
        image,
        workdir,
        name,
        disks=disks,
        tftp=tftp,
        append=boot_args(POLL),
    )


def figure(boot: str, out: dict[str, str]) -> None:
    """Acceptance 2's figure: seconds from the kernel's start to the agent's."""
    began, ended = (int(v) / 1e6 for v in out["bootstrap_us"].split())
    print(
        f"{boot}: agent started {int(out['started_us']) / 1e6:.1f} s after boot; "
        f"initpy-toolchain ran {began:.1f}-{ended:.1f} s"
    )


def running_agent(host: Host) -> dict[str, str]:
    """Wait until bbot-agent.service runs; what the guest says about it."""
    wait_for_agent(host)
    agent_pid = "$(systemctl show -p MainPID --value bbot-agent)"
    return host.sections(
        {
            "agent_user": f"ps -o user= -p {agent_pid}",
            "agent_env": f"tr '\\0' '\\n' < /proc/{agent_pid}/environ | grep ^BUILDOS_ | sort",
            "agent_said": "journalctl -b --no-pager -o cat -u bbot-agent | grep stand-in | head -1",
            "started_us": "systemctl show -p ExecMainStartTimestampMonotonic --value bbot-agent",
            "bootstrap_us": "systemctl show --value -p ExecMainStartTimestampMonotonic "
            "-p ExecMainExitTimestampMonotonic initpy-toolchain",
            "target_after": "systemctl show -p After --value multi-user.target",
            "monitor_user": "ps -o user= -p $(systemctl show -p MainPID --value initpy-monitor)",
            "toolchain": "journalctl -b --no-pager -o cat -u initpy-toolchain",
            "cache": "stat -c '%U %a' /build/machines/.toolchain",
        }
    )


@pytest.fixture(scope="module")
def later() -> Iterator[dict[str, Host]]:
    """The hosts after the first, by boot; each test hands its host on here."""
    hosts: dict[str, Host] = {}
    yield hosts
    for host in hosts.values():
        host.close()


@pytest.fixture(scope="module")
def host1(
    vm_full_image: InitrdFiles,
    served: tuple[Path, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Host]:
    host = boot(
        vm_full_image, tmp_path_factory.mktemp("toolchain"), "toolchain-boot1", served[0], None
    )
    try:
        yield host
    finally:
        host.close()


def test_1_the_toolchain_is_built_and_its_agent_runs_as_build(
    host1: Host, served: tuple[Path, str]
) -> None:
    _folder, key = served
    out = running_agent(host1)
    figure("boot 1 (fresh build)", out)
    # multi-user.target (the console's `buildos: up`) never waits for a build.
    assert "initpy-toolchain" not in out["target_after"]
    assert "bbot-agent" not in out["target_after"]
    assert out["agent_user"] == "build"
    assert out["monitor_user"] == "initpy-monitor"
    env = dict(line.split("=", 1) for line in out["agent_env"].splitlines())
    assert env["BUILDOS_TOOLCHAIN_ID"] == key
    assert env["BUILDOS_TOOLCHAIN_TRUST"] == TRUST
    assert out["agent_said"] == f"bbot-agent stand-in, toolchain {key}, trust {TRUST}"
    # The C++ program, compiled by the install script with the image's c++, ran.
    assert f"install| build2 stand-in (C++) {standin.VERSION}" in out["toolchain"]
    assert "taken from the cache" not in out["toolchain"]
    assert out["cache"] == "initpy-toolchain 755"


def test_2_a_second_boot_takes_the_toolchain_from_the_cache(
    host1: Host,
    served: tuple[Path, str],
    later: dict[str, Host],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder, key = served
    host1.ssh.run("systemctl poweroff", check=False, timeout=60)
    host1.vm.wait_exit(SHUTDOWN_TIMEOUT)
    host1.close()
    host2 = later["2"] = boot(
        host1.image, tmp_path_factory.mktemp("toolchain2"), "toolchain-boot2", folder, host1.disks
    )
    out = running_agent(host2)
    figure("boot 2 (cache)", out)
    assert f"toolchain {key[:12]} taken from the cache" in out["toolchain"], out["toolchain"]
    assert "no install script runs" in out["toolchain"]
    assert "install|" not in out["toolchain"]
    assert out["agent_user"] == "build"
    assert out["agent_said"] == f"bbot-agent stand-in, toolchain {key}, trust {TRUST}"


def rebooted_onto(host: Host, key: str) -> None:
    """The monitor mails the admin about `key` and reboots (QEMU's -no-reboot: it exits)."""
    wait_for_mail(host.mail, f"new toolchain {key[:12]}, rebooting", timeout=300)
    host.vm.wait_exit(SHUTDOWN_TIMEOUT)
    host.close()


def test_3_a_new_toolchain_reboots_and_a_mismatching_one_runs_nothing(
    host1: Host,
    served: tuple[Path, str],
    later: dict[str, Host],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder, key1 = served
    assert "2" in later, "test_2 left no running host"
    files = standin.publish(
        str(folder / "toolchain"), install=standin.CXX_INSTALL_SH, extra=b"/* 0.1.1 */\n"
    )
    key2 = hashlib.sha256(files["toolchain.sha256"]).hexdigest()
    rebooted_onto(later["2"], key2)
    host3 = later["3"] = boot(
        host1.image, tmp_path_factory.mktemp("toolchain3"), "toolchain-boot3", folder, host1.disks
    )
    out = running_agent(host3)
    env = dict(line.split("=", 1) for line in out["agent_env"].splitlines())
    assert env["BUILDOS_TOOLCHAIN_ID"] == key2
    assert f"install| build2 stand-in (C++) {standin.VERSION}" in out["toolchain"]
    assert "taken from the cache" not in out["toolchain"]

    # The archive no longer matches the sum its checksums file gives.
    agent_pid = host3.ssh.run("systemctl show -p MainPID --value bbot-agent").stdout.strip()
    files = standin.publish(
        str(folder / "toolchain"), install=standin.CXX_INSTALL_SH, extra=b"/* 0.1.2 */\n"
    )
    (folder / "toolchain" / standin.ARCHIVE).write_bytes(standin.archive(b"/* tampered */\n"))
    key3 = hashlib.sha256(files["toolchain.sha256"]).hexdigest()
    refused = f"toolchain {key3[:12]} refused, not rebooting"
    mail = wait_for_mail(host3.mail, refused, timeout=300)
    body = mail.get_content()
    assert standin.ARCHIVE in body and "has sha256" in body and key2 in body, body
    # A few more of the monitor's polls of the same file: no second mail, no reboot.
    time.sleep(6 * POLL)
    out = host3.sections(
        {
            "units": "systemctl is-active initpy-toolchain bbot-agent",
            "agent_pid": "systemctl show -p MainPID --value bbot-agent",
            "agent_env": f"tr '\\0' '\\n' < /proc/{agent_pid}/environ | grep ^BUILDOS_ | sort",
            "monitor": "journalctl -b --no-pager -o cat -u initpy-monitor",
            "status": "systemctl show -P StatusText initpy-monitor",
            "scratch": "ls -A /run/initpy-monitor",
            "cache": f"ls /build/machines/.toolchain/{key1} /build/machines/.toolchain/{key2}",
        }
    )
    assert host3.vm.proc.poll() is None, "the host rebooted"
    assert out["units"].split() == ["active", "active"], out
    assert out["agent_pid"] == agent_pid, "the agent was restarted"
    env = dict(line.split("=", 1) for line in out["agent_env"].splitlines())
    assert env["BUILDOS_TOOLCHAIN_ID"] == key2
    assert f"new toolchain {key3[:12]} at {URL} refused" in out["monitor"], out["monitor"]
    assert out["monitor"].count("refused:") == 1, out["monitor"]
    assert not [line for line in out["monitor"].splitlines() if key3 in line and "reboot" in line]
    assert f"toolchain {key3[:12]} refused, running {key2[:12]}" in out["status"], out["status"]
    assert "toolchain-check" not in out["scratch"]  # the fetched files are gone
    assert out["cache"].count("MANIFEST") == 2, out["cache"]
    subjects = [str(m.get("Subject")) for m in smtp_sink.read_mail(host3.mail)]
    assert len([s for s in subjects if refused in s]) == 1, subjects
    assert not [s for s in subjects if f"new toolchain {key3[:12]}" in s], subjects
