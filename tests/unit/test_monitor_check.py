"""`initpy-monitor --check` on the toolchain, against test_monitor's real servers on 127.0.0.1.

The command reads the build id and the checksums file once each, judges a
new file as the monitor would (every listed file fetched and verified), and
says so with its exit status: 0 unchanged, 1 unreachable, 2 changed (the
monitor would reboot), 3 refused (it would mail and not reboot). It mails
and reboots nothing, and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from pathlib import Path

import pytest

from initpy.host import monitor
from initpy.host.monitor_check import Verdict
from initpy.runtime import layout
from tests.unit import standin_toolchain as standin
from tests.unit.test_monitor import OLD, SCHEMES, Servers, closed_port, servers  # noqa: F401
from tests.unit.test_monitor_toolchain import published, tampered


def check(
    tmp_path: Path, buildid_url: str | None, toolchain_url: str, running_key: str | None
) -> int:
    """monitor.main(--check) with these URLs and this boot's toolchain."""
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(layout.Manifest(OLD, ()).to_json())
    env = tmp_path / "buildos.env"
    lines = [f"BUILDOS_TOOLCHAIN_URL={toolchain_url}"]
    if buildid_url is not None:
        lines.append(f"BUILDOS_BUILDID_URL={buildid_url}")
    env.write_text("\n".join(lines) + "\n")
    result = tmp_path / "toolchain.env"
    result.write_text(f"BUILDOS_TOOLCHAIN_ID={running_key}\n" if running_key else "")
    argv = ["--buildos-env", str(env), "--monitor-env", "/nonexistent"]
    argv += ["--manifest", str(manifest), "--toolchain-result", str(result), "--check"]
    return monitor.main(argv)


def leftovers() -> list[str]:
    return [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("initpy-monitor-check-")]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_running_toolchain_is_unchanged(
    servers: Servers,  # noqa: F811
    scheme: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"tccheck-same-{scheme}"
    key, buildid = published(servers, name)
    url = servers.url(scheme, f"{name}/toolchain.sha256")
    assert check(tmp_path, servers.url(scheme, buildid), url, key) == 0  # unchanged
    out = capsys.readouterr().out
    assert "the same build" in out and "the same toolchain: nothing to do" in out
    assert f"checksums sha256 {key}" in out


@pytest.mark.parametrize("scheme", SCHEMES)
def test_another_toolchain_whose_files_match_is_changed(
    servers: Servers,  # noqa: F811
    scheme: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"tccheck-new-{scheme}"
    old_key, buildid = published(servers, name)
    new_key, _ = published(servers, name, extra=b"/* 0.1.1 */")
    url = servers.url(scheme, f"{name}/toolchain.sha256")
    before = leftovers()
    assert check(tmp_path, servers.url(scheme, buildid), url, old_key) == 2  # changed
    out = capsys.readouterr().out
    assert f"running toolchain: {old_key}" in out and f"checksums sha256 {new_key}" in out
    assert "every file matches: the monitor would mail the admin and reboot" in out
    assert leftovers() == before  # the files it verified are gone


@pytest.mark.parametrize("problem", ["mismatch", "missing", "not a checksums file"])
def test_a_toolchain_the_monitor_would_refuse_is_refused(
    servers: Servers,  # noqa: F811
    problem: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"tccheck-bad-{problem.replace(' ', '-')}"
    old_key, bad_key, buildid = tampered(servers, name, problem)
    url = servers.url("http", f"{name}/toolchain.sha256")
    assert check(tmp_path, servers.url("http", buildid), url, old_key) == 3  # refused
    out = capsys.readouterr().out
    assert f"checksums sha256 {bad_key}" in out
    expected = {
        "mismatch": "has sha256",
        "missing": f"{standin.ARCHIVE} at ",
        "not a checksums file": "the checksums file does not parse",
    }[problem]
    assert "refused: " in out and expected in out, out
    assert "would mail the admin once and not reboot" in out


def test_a_checksums_file_that_does_not_come_is_unreachable(
    servers: Servers,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old_key, buildid = published(servers, "tccheck-down")
    url = f"http://127.0.0.1:{closed_port(socket.SOCK_STREAM)}/toolchain.sha256"
    assert check(tmp_path, servers.url("file", buildid), url, old_key) == 1  # unreachable
    out = capsys.readouterr().out
    assert "the same build" in out  # the build id answered; the toolchain did not
    assert "unreachable; the monitor would log it and wait longer" in out


def test_a_build_id_that_does_not_come_is_unreachable_before_the_toolchain_is_read(
    servers: Servers,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key, _ = published(servers, "tccheck-nobuild")
    url = servers.url("file", "tccheck-nobuild/toolchain.sha256")
    down = f"http://127.0.0.1:{closed_port(socket.SOCK_STREAM)}/buildos-buildid"
    assert check(tmp_path, down, url, key) == Verdict.UNREACHABLE
    assert "running toolchain" not in capsys.readouterr().out


def test_without_a_recorded_toolchain_the_file_would_be_the_baseline(
    servers: Servers,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key, buildid = published(servers, "tccheck-base")
    url = servers.url("file", "tccheck-base/toolchain.sha256")
    assert check(tmp_path, servers.url("file", buildid), url, None) == Verdict.UNCHANGED
    out = capsys.readouterr().out
    assert "running toolchain: none recorded" in out and f"checksums sha256 {key}" in out
    assert "the monitor would take this file as its own" in out


def test_the_toolchain_is_checked_without_a_build_id_url(
    servers: Servers,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key, _ = published(servers, "tccheck-alone")
    url = servers.url("tftp", "tccheck-alone/toolchain.sha256")
    bad = hashlib.sha256(b"another").hexdigest()
    assert check(tmp_path, None, url, key) == Verdict.UNCHANGED
    assert check(tmp_path, None, url, bad) == Verdict.CHANGED
    assert "the same toolchain" in capsys.readouterr().out
