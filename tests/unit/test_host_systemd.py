"""initpy.host.systemd: sd_notify to a real socket, and the reboot request file."""

from __future__ import annotations

import os
import socket

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


def test_the_reboot_request_is_written_whole(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(str(tmp_path), "reboot")
    systemd.request_reboot(f"initpy-monitor: build {OLD} -> {NEW}", path)
    with open(path) as f:
        assert f.read() == f"initpy-monitor: build {OLD} -> {NEW}\n"
    assert os.listdir(str(tmp_path)) == ["reboot"]
    with pytest.raises(OSError):
        systemd.request_reboot("x", os.path.join(str(tmp_path), "missing", "reboot"))
