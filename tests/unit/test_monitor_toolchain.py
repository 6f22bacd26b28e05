"""initpy-monitor's toolchain poll, against test_monitor's real servers on 127.0.0.1.

The checksums file is polled with the build id, under the same jitter,
backoff and rule: another file whose listed files all match mails the admin
and reboots; one that does not parse, or whose listed file is missing or
does not match, is refused (one mail, no reboot, not again for the same
file); a failure to fetch (no answer) never reboots and is no verdict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
from pathlib import Path

import pytest

from initpy.host import monitor, systemd, toolchain_check
from tests.unit import standin_toolchain as standin
from tests.unit.test_monitor import (  # noqa: F401
    BUILDID,
    NEW,
    OLD,
    SCHEMES,
    Servers,
    World,
    closed_port,
    make_monitor,
    run_polls,
    servers,
)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """The monitor's RuntimeDirectory=, where it verifies a new toolchain's files."""
    folder = tmp_path / "run"
    folder.mkdir()
    return folder


def with_toolchain(
    m: monitor.Monitor, url: str, running: str | None, run_dir: Path
) -> monitor.Monitor:
    m.settings = dataclasses.replace(m.settings, toolchain_url=url)
    m.deps = dataclasses.replace(m.deps, run_dir=str(run_dir))
    m.running_toolchain = running
    return m


def published(served: Servers, name: str, extra: bytes = b"") -> tuple[str, str]:
    """A stand-in toolchain in `name`/: the checksums file's sha256 and the build id URL."""
    files = standin.publish(os.path.join(served.root, name), extra=extra)
    served.put(f"{name}/{BUILDID}", (OLD + "\n").encode())
    return hashlib.sha256(files["toolchain.sha256"]).hexdigest(), f"{name}/{BUILDID}"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_unchanged_toolchain_gives_no_reboot(
    servers: Servers,  # noqa: F811
    scheme: str,
    run_dir: Path,
) -> None:
    key, buildid = published(servers, f"tcpoll-same-{scheme}")
    world = World()
    m = make_monitor(world, servers.url(scheme, buildid))
    with_toolchain(m, servers.url(scheme, f"tcpoll-same-{scheme}/toolchain.sha256"), key, run_dir)
    run_polls(m, 3)
    assert world.reboots == [] and world.mails == [] and m.loop.failures == 0
    assert f"build {OLD[:12]} and toolchain {key[:12]} are current" in world.notes[-1]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_changed_toolchain_mails_and_reboots(
    servers: Servers,  # noqa: F811
    scheme: str,
    run_dir: Path,
) -> None:
    old_key, buildid = published(servers, f"tcpoll-new-{scheme}")
    new_key, _ = published(servers, f"tcpoll-new-{scheme}", extra=b"/* 0.1.1 */")
    world = World()
    m = make_monitor(world, servers.url(scheme, buildid))
    with_toolchain(
        m, servers.url(scheme, f"tcpoll-new-{scheme}/toolchain.sha256"), old_key, run_dir
    )
    run_polls(m, 2)
    assert world.reboots == [f"initpy-monitor: toolchain {old_key} -> {new_key}"] * 2
    # The files were fetched and verified before the reboot, and are gone again.
    assert os.listdir(run_dir) == []
    (mail,) = world.mails  # one mail; the second poll asks for the reboot again
    assert mail["Subject"] == f"build-5400123456: new toolchain {new_key[:12]}, rebooting"
    assert f"new checksums sha256: {new_key}" in mail.get_content()
    assert world.mail_at[0] == world.polled_at[0]


def test_a_new_build_reboots_before_the_toolchain_is_read(servers: Servers, run_dir: Path) -> None:  # noqa: F811
    key, _ = published(servers, "tcpoll-build")
    servers.put(f"tcpoll-build/{BUILDID}", (NEW + "\n").encode())
    world = World()
    m = make_monitor(world, servers.url("http", f"tcpoll-build/{BUILDID}"))
    with_toolchain(m, servers.url("http", "tcpoll-build/missing.sha256"), key, run_dir)
    run_polls(m, 1)
    assert world.reboots == [f"initpy-monitor: build {OLD} -> {NEW}"]


@pytest.mark.parametrize("problem", ["missing", "server down"])
def test_a_toolchain_error_never_reboots_and_backs_off(
    servers: Servers,  # noqa: F811
    problem: str,
    run_dir: Path,
) -> None:
    key, buildid = published(servers, "tcpoll-error")
    url = {
        "missing": servers.url("tftp", "tcpoll-error/missing.sha256"),
        "server down": f"http://127.0.0.1:{closed_port(socket.SOCK_STREAM)}/toolchain.sha256",
    }[problem]
    world = World()
    m = make_monitor(world, servers.url("file", buildid), timeout=0.3, interval=60)
    with_toolchain(m, url, key, run_dir)
    run_polls(m, 3)
    assert world.reboots == [] and world.mails == [] and m.loop.failures == 3
    gaps = [b - a for a, b in zip(world.polled_at, world.polled_at[1:], strict=False)]
    for failures, gap in enumerate(gaps, start=1):
        base = min(2**failures, monitor.BACKOFF_CAP) * 60
        assert 0.75 * base <= gap <= 1.25 * base, (failures, gap)
    assert "STATUS=toolchain URL failing (3 in a row)" in world.notes[-1]
    assert all(line.endswith("no reboot") for line in world.lines if "poll failed" in line)


def test_without_a_recorded_toolchain_the_first_file_is_the_baseline(
    servers: Servers,  # noqa: F811
    run_dir: Path,
) -> None:
    key, buildid = published(servers, "tcpoll-base")
    world = World()
    m = make_monitor(world, servers.url("file", buildid))
    with_toolchain(m, servers.url("file", "tcpoll-base/toolchain.sha256"), None, run_dir)
    run_polls(m, 2)
    assert m.running_toolchain == key and world.reboots == []
    new_key, _ = published(servers, "tcpoll-base", extra=b"/* next */")
    run_polls(m, 3)
    assert world.reboots == [f"initpy-monitor: toolchain {key} -> {new_key}"]


def test_the_toolchain_is_polled_without_a_build_id_url(servers: Servers, run_dir: Path) -> None:  # noqa: F811
    key, _ = published(servers, "tcpoll-alone")
    world = World()
    m = with_toolchain(
        make_monitor(world, None),
        servers.url("file", "tcpoll-alone/toolchain.sha256"),
        key,
        run_dir,
    )
    run_polls(m, 2)
    assert m.loop.polls == 2 and world.reboots == []
    assert f"toolchain {key[:12]} is current" in world.notes[-1]


def test_a_toolchain_url_failing_for_an_hour_is_named_in_the_mails(
    servers: Servers,  # noqa: F811
    run_dir: Path,
) -> None:
    key, buildid = published(servers, "tcpoll-hour")
    path = os.path.join(servers.root, "tcpoll-hour", "toolchain.sha256")
    with open(path, "rb") as f:
        body = f.read()
    os.unlink(path)
    world = World()
    m = make_monitor(world, servers.url("file", buildid))
    with_toolchain(m, servers.url("file", "tcpoll-hour/toolchain.sha256"), key, run_dir)

    def serve() -> bool:
        if world.now - 1000.0 >= 2 * 3600 and not os.path.exists(path):
            servers.put("tcpoll-hour/toolchain.sha256", body)
        return world.now - 1000.0 >= 3 * 3600

    m.run(stop=serve)
    assert [mail["Subject"] for mail in world.mails] == [
        "build-5400123456: toolchain URL failing for 1 h 0 min",
        "build-5400123456: toolchain URL answers again",
    ]
    assert "tcpoll-hour/toolchain.sha256" in world.mails[0].get_content()
    assert world.reboots == []


def tampered(served: Servers, name: str, problem: str) -> tuple[str, str, str]:
    """A toolchain in `name`/ and then another whose checksums file is bad in the way
    `problem` says: the first's key, the second's, the build id URL."""
    old_key, buildid = published(served, name)
    new_key, _ = published(served, name, extra=b"/* 0.1.1 */")
    archive = os.path.join(served.root, name, standin.ARCHIVE)
    if problem == "mismatch":
        served.put(f"{name}/{standin.ARCHIVE}", standin.archive(b"/* tampered */"))
    elif problem == "missing":
        os.unlink(archive)
    else:
        served.put(f"{name}/toolchain.sha256", b"<html>503 Service Unavailable</html>\n")
        new_key = hashlib.sha256(b"<html>503 Service Unavailable</html>\n").hexdigest()
    return old_key, new_key, buildid


VERDICTS = {
    "mismatch": f"{standin.ARCHIVE} at ",
    "missing": f"{standin.ARCHIVE} at ",
    "not a checksums file": "the checksums file does not parse",
}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("problem", VERDICTS)
def test_a_toolchain_whose_files_do_not_match_is_refused_once_and_never_reboots(
    servers: Servers,  # noqa: F811
    scheme: str,
    problem: str,
    run_dir: Path,
) -> None:
    name = f"tcpoll-bad-{problem.replace(' ', '-')}-{scheme}"
    old_key, bad_key, buildid = tampered(servers, name, problem)
    world = World()
    m = make_monitor(world, servers.url(scheme, buildid))
    with_toolchain(m, servers.url(scheme, f"{name}/toolchain.sha256"), old_key, run_dir)
    run_polls(m, 3)
    assert world.reboots == [] and m.loop.failures == 0 and m.running_toolchain == old_key
    # One mail and one error line for the file, not one per poll.
    (mail,) = world.mails
    assert mail["Subject"] == f"build-5400123456: toolchain {bad_key[:12]} refused, not rebooting"
    body = mail.get_content()
    assert VERDICTS[problem] in body and f"running checksums sha256: {old_key}" in body
    (line,) = [line for line in world.lines if line.startswith("<3>")]
    assert f"new toolchain {bad_key[:12]}" in line and "no reboot" in line
    assert {
        "mismatch": "has sha256",
        "missing": "File not found" if scheme == "tftp" else "",
        "not a checksums file": "not '<64 hex digits>  <name>'",
    }[problem] in line
    assert f"toolchain {bad_key[:12]} refused, running {old_key[:12]}" in world.notes[-1]
    assert os.listdir(run_dir) == []
    # A later, different checksums file whose files match is examined, and reboots.
    good_key, _ = published(servers, name, extra=b"/* 0.1.2 */")
    run_polls(m, 4)
    assert world.reboots == [f"initpy-monitor: toolchain {old_key} -> {good_key}"]
    assert len(world.mails) == 2


def test_a_listed_file_that_does_not_come_is_a_failed_poll_not_a_verdict(
    servers: Servers,  # noqa: F811
    run_dir: Path,
) -> None:
    """The checksums file comes, its files' server refuses connections: no reboot, no mail."""
    old_key, buildid = published(servers, "tcpoll-netdown")
    new_files = standin.publish(os.path.join(servers.root, "tcpoll-netdown"), extra=b"/* n */")
    url = f"http://127.0.0.1:{closed_port(socket.SOCK_STREAM)}/toolchain.sha256"
    world = World()
    m = make_monitor(world, servers.url("file", buildid), interval=60)
    with_toolchain(m, url, old_key, run_dir)
    m.deps = dataclasses.replace(
        m.deps, fetch_checksums=lambda url, timeout: new_files["toolchain.sha256"]
    )
    run_polls(m, 3)
    assert world.reboots == [] and world.mails == [] and m.loop.failures == 3
    assert m.loop.refused_toolchain is None and m.running_toolchain == old_key
    assert "STATUS=toolchain URL failing (3 in a row)" in world.notes[-1]
    assert f"{standin.SCRIPT} at http://127.0.0.1:" in m.loop.last_error
    assert os.listdir(run_dir) == []


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_new_toolchains_files_ping_the_watchdog_as_they_arrive(
    servers: Servers,  # noqa: F811
    scheme: str,
    run_dir: Path,
) -> None:
    """A new toolchain's files may take half an hour: the monitor's watchdog
    hears from the transfer itself while they arrive, not only from the loop."""
    old_key, buildid = published(servers, f"tcdog-{scheme}")
    published(servers, f"tcdog-{scheme}", extra=b"/* 0.1.1 */")
    world = World()
    checking = run_dir / toolchain_check.FOLDER_NAME
    during: list[bool] = []

    def send(state: str) -> bool:
        during.append(checking.is_dir())  # the files are being fetched and verified
        return True

    m = make_monitor(world, servers.url(scheme, buildid))
    with_toolchain(m, servers.url(scheme, f"tcdog-{scheme}/toolchain.sha256"), old_key, run_dir)
    ticks = iter(range(0, 10**9, 100))  # every ping is a quarter interval after the last
    m.deps = dataclasses.replace(
        m.deps, watchdog=systemd.Watchdog(20.0, send, lambda: float(next(ticks)))
    )
    run_polls(m, 1)
    assert len(world.reboots) == 1
    assert during.count(True) >= 2  # the install script's and the archive's chunks


def test_a_refused_toolchain_is_examined_again_after_a_growing_wait(
    servers: Servers,  # noqa: F811
    run_dir: Path,
) -> None:
    """The same refused file is looked at again after 1 h, then 2, 4, ... up to 24 h; a
    refusal again only logs, and a pass once its archive is fixed mails and reboots."""
    name = "tcpoll-recheck"
    old_key, bad_key, buildid = tampered(servers, name, "mismatch")
    world = World()
    m = make_monitor(world, servers.url("http", buildid))
    with_toolchain(m, servers.url("http", f"{name}/toolchain.sha256"), old_key, run_dir)
    run_polls(m, 1)
    assert m.loop.recheck_at == world.now + monitor.RECHECK_FIRST
    first = m.loop.recheck_at

    def rechecks() -> list[str]:
        return [line for line in world.lines if "examined again" in line]

    days = 86400.0  # a bound on the fake clock, so that a missing re-check fails, not hangs
    m.run(stop=lambda: len(rechecks()) >= 7 or world.now > first + 10 * days)
    assert world.reboots == [] and len(world.mails) == 1  # the one refusal mail
    waits = [line.rpartition("next look in ")[2] for line in rechecks()]
    assert waits == ["2 h", "4 h", "8 h", "16 h", "24 h", "24 h", "24 h"]
    assert all("still refused" in line and "has sha256" in line for line in rechecks())
    # Between re-checks the file is not examined: one look per wait, not per poll.
    assert m.loop.polls > 5 * len(rechecks())
    assert world.polled_at[1] < first  # polls came before the first re-check was due
    # The archive is put right under the same sums: the next re-check passes.
    servers.put(f"{name}/{standin.ARCHIVE}", standin.archive(b"/* 0.1.1 */"))
    due = m.loop.recheck_at
    m.run(stop=lambda: bool(world.reboots) or world.now > due + 2 * days)
    assert world.now >= due
    assert world.reboots == [f"initpy-monitor: toolchain {old_key} -> {bad_key}"]
    assert [mail["Subject"] for mail in world.mails] == [
        f"build-5400123456: toolchain {bad_key[:12]} refused, not rebooting",
        f"build-5400123456: new toolchain {bad_key[:12]}, rebooting",
    ]
    assert os.listdir(run_dir) == []
