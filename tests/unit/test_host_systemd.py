"""initpy.host.systemd: sd_notify to a real socket, and the reboot request file."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from initpy.host import systemd

OLD = "a" * 64
NEW = "b" * 64


def test_notify_reaches_a_notify_socket(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(str(tmp_path), "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(5)
        assert systemd.notify("READY=1\n" + systemd.status("a\nb  c"), {"NOTIFY_SOCKET": path})
        assert listener.recv(4096) == b"READY=1\nSTATUS=a b c"
    abstract = f"@initpy-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + abstract[1:])
        listener.settimeout(5)
        assert systemd.notify("STATUS=x", {"NOTIFY_SOCKET": abstract})
        assert listener.recv(4096) == b"STATUS=x"
    assert not systemd.notify("STATUS=x", {})


def test_the_reboot_request_carries_nothing_and_its_reason_goes_to_the_journal(
    tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = os.path.join(str(tmp_path), "reboot")
    systemd.request_reboot(f"initpy-monitor: build {OLD} -> {NEW}", path)
    assert os.stat(path).st_size == 0  # root's side has nothing to read
    assert os.listdir(str(tmp_path)) == ["reboot"]
    assert capsys.readouterr().err == (
        f"asking initpy-reboot.path for a reboot: initpy-monitor: build {OLD} -> {NEW}\n"
    )
    with pytest.raises(OSError):
        systemd.request_reboot("x", os.path.join(str(tmp_path), "missing", "reboot"))


def test_a_request_replaces_a_planted_symlink_or_fifo_without_following_or_blocking(
    tmp_path: os.PathLike[str],
) -> None:
    """What another process of the monitor's uid left at either name is replaced,
    never opened: the target stays untouched and a FIFO does not hang the monitor."""
    folder = str(tmp_path)
    target = os.path.join(folder, "target")
    with open(target, "w") as f:
        f.write("secret\n")
    path = os.path.join(folder, "reboot")
    tmp = os.path.join(folder, f".reboot.{os.getpid()}")
    os.symlink(target, path)
    os.symlink(target, tmp)
    systemd.request_reboot("x", path)
    assert not os.path.islink(path) and os.stat(path).st_size == 0
    os.unlink(path)
    os.mkfifo(path)
    os.mkfifo(tmp)
    systemd.request_reboot("x", path)
    assert stat.S_ISREG(os.lstat(path).st_mode)
    with open(target) as f:
        assert f.read() == "secret\n"
    assert sorted(os.listdir(folder)) == ["reboot", "target"]


def test_the_watchdog_interval_is_the_units_and_only_for_its_main_process() -> None:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "300000000"}) == 300.0
    mine = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
    assert systemd.watchdog_interval(mine) == 20.0
    # A child that inherited the variables is not the one systemd watches.
    assert systemd.watchdog_interval({**mine, "WATCHDOG_PID": "1"}) is None
    for bad in ({}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "x"}):
        assert systemd.watchdog_interval(bad) is None


def test_the_watchdog_pings_at_most_every_quarter_interval_and_bounds_the_nap() -> None:
    now = [0.0]
    sent: list[str] = []

    def send(state: str) -> bool:
        sent.append(state)
        return True

    dog = systemd.Watchdog(20.0, send, lambda: now[0])
    assert dog.nap == 10.0
    for step in range(100):  # a transfer's chunks, every 0.1 s for 10 s
        now[0] = step * 0.1
        dog.ping()
    assert sent == ["WATCHDOG=1"] * 2  # at 0 s and at 5 s
    off = systemd.Watchdog(None, send)
    off.ping()
    assert len(sent) == 2 and off.nap == float("inf")
