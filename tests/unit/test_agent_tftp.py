"""The agent's TFTP broker: what a request may ask, on real folders, and a real in.tftpd.

The request's words (tftp_request.parse_request), the folder walk
(open_folder) on temporary folders with real links, and the broker
(tftp_broker.serve) over a socket pair, with the real in.tftpd on
loopback when the machine has it. Transfers through it, as root and
from a network namespace: tests/root/test_agent_tftp.py.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hooks import buildhost
from initpy.cli import CommandError
from initpy.host import tftp_broker, tftp_client, tftp_request
from initpy.runtime import layout
from tests.unit.conftest import needs_systemd_analyze, systemd_verify

FIRST, LAST = layout.AGENT_TFTP_PORTS
ROOT = "/build/tftp"
ME = os.getuid()


def refused(call: object, *args: object) -> CommandError:
    with pytest.raises(CommandError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


# -- the request's words ---------------------------------------------------------


def test_a_request_names_a_port_a_folder_and_maybe_an_address() -> None:
    assert tftp_request.parse_request(f"{FIRST} machine1\n", ROOT) == tftp_request.Request(
        FIRST, "machine1", None
    )
    assert tftp_request.parse_request(f"{LAST} task7/m-1.x 172.23.0.1", ROOT) == (
        tftp_request.Request(LAST, "task7/m-1.x", "172.23.0.1")
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("tftp machine1", "port 'tftp' is not a number"),
        ("-1 machine1", "port '-1' is not a number"),
        (f"{FIRST - 1} machine1", f"port {FIRST - 1} is outside the agent's TFTP ports"),
        (f"{LAST + 1} machine1", f"port {LAST + 1} is outside"),
        ("69 machine1", "port 69 is outside"),
        (f"{FIRST} ..", "component '..' that is not a plain name"),
        (f"{FIRST} m1/../../etc", "component '..'"),
        (f"{FIRST} .hidden", "component '.hidden'"),
        (f"{FIRST} m1//m2", "component ''"),
        (f"{FIRST} /etc", "folder '/etc' is an absolute path"),
        (f"{FIRST} m1 0.0.0.0.1", "address '0.0.0.0.1' is not an IPv4 address"),
        (f"{FIRST}", "expected PORT SUBDIR [ADDRESS]"),
        (f"{FIRST} m1 172.23.0.1 extra", "expected PORT SUBDIR [ADDRESS]"),
    ],
)
def test_a_bad_word_is_named_with_its_fix(line: str, message: str) -> None:
    error = refused(tftp_request.parse_request, line, ROOT)
    assert message in error.message
    assert error.hint


# -- the folder ---------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    tftp = tmp_path / "tftp"
    (tftp / "m1" / "sub").mkdir(parents=True)
    for folder in (tftp, tftp / "m1", tftp / "m1" / "sub"):
        folder.chmod(0o755)
    return tftp


def test_the_folder_is_opened_and_is_the_one_named(root: Path) -> None:
    for subdir in ("m1", "m1/sub"):
        fd = tftp_request.open_folder(str(root), subdir, ME)
        try:
            assert os.path.samestat(os.fstat(fd), os.stat(root / subdir))
        finally:
            os.close(fd)


def test_a_symlinked_folder_is_refused_anywhere_on_the_way(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "inner").mkdir(parents=True)
    (root / "link").symlink_to(elsewhere)
    error = refused(tftp_request.open_folder, str(root), "link", ME)
    assert error.message == f"{root}/link is a symbolic link"
    error = refused(tftp_request.open_folder, str(root), "link/inner", ME)
    assert error.message == f"{root}/link is a symbolic link"


def test_a_missing_folder_a_file_and_a_stranger_s_folder_are_refused(root: Path) -> None:
    error = refused(tftp_request.open_folder, str(root), "m2", ME)
    assert error.message == f"{root}/m2 does not exist"
    assert error.hint == f"create it first, as its owner: mkdir -p {root}/m2"
    (root / "m1" / "file").write_text("x")
    error = refused(tftp_request.open_folder, str(root), "m1/file", ME)
    assert error.message == f"{root}/m1/file is not a folder"
    error = refused(tftp_request.open_folder, str(root), "m1", ME + 1)
    assert error.message == (
        f"{root}/m1 is owned by uid {ME}, not by the agent's user (uid {ME + 1})"
    )


def test_a_folder_the_broker_cannot_enter_is_refused_with_the_chmod(root: Path) -> None:
    (root / "m1").chmod(0o750)
    error = refused(tftp_request.open_folder, str(root), "m1/sub", ME)
    assert error.message.startswith(f"{root}/m1 has mode 0750: the broker cannot enter it")
    assert error.hint == f"chmod o+x {root}/m1"


def test_the_address_is_one_the_interface_holds() -> None:
    held = ["172.23.0.1", "172.23.0.2"]
    assert tftp_request.choose_address(None, "br1", held) == "172.23.0.1"
    assert tftp_request.choose_address("172.23.0.2", "br1", held) == "172.23.0.2"
    error = refused(tftp_request.choose_address, "10.0.2.15", "br1", held)
    assert error.message == "10.0.2.15 is not an address of br1 (it has 172.23.0.1, 172.23.0.2)"
    assert refused(tftp_request.choose_address, None, "br1", []).message == (
        "br1 has no IPv4 address"
    )


def test_loopback_s_address_is_read_from_the_kernel() -> None:
    assert "127.0.0.1" in tftp_request.interface_addresses("lo")
    error = refused(tftp_request.interface_addresses, "initpy-no-such0")
    assert error.message.startswith("cannot list initpy-no-such0's addresses")


def test_a_refusal_travels_as_two_lines_and_comes_back_whole() -> None:
    text = tftp_request.refusal_lines(CommandError("port 69 is outside", "ask for 23400"))
    assert text == "error: port 69 is outside\nhint: ask for 23400\n"
    error = refused(tftp_request.read_reply, text.splitlines(keepends=True))
    assert (error.message, error.hint) == ("port 69 is outside", "ask for 23400")
    assert tftp_request.read_reply(["ok 127.0.0.1:23400 /x (ready in 3 ms)\n"]) == (
        "127.0.0.1:23400 /x (ready in 3 ms)"
    )
    assert "not ok or error" in refused(tftp_request.read_reply, ["hello\n"]).message


# -- the broker -----------------------------------------------------------------


def test_a_udp_socket_is_found_in_proc_and_among_its_holder_s_descriptors() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        inode = tftp_broker.udp_inode("127.0.0.1", port)
        assert inode is not None and inode == str(os.fstat(held.fileno()).st_ino)
        assert tftp_broker.holds_socket(os.getpid(), inode)
        error = refused(tftp_broker.check_port_free, "127.0.0.1", port)
        assert (
            error.message
            == f"UDP port {port} on 127.0.0.1 is taken (another of the agent's servers?)"
        )
    assert tftp_broker.udp_inode("127.0.0.1", port) is None


def broker_args(root: Path) -> argparse.Namespace:
    user = pwd.getpwuid(ME).pw_name
    return argparse.Namespace(
        user=user, root=str(root), interface="lo", in_tftpd=shutil.which("in.tftpd") or ""
    )


@pytest.fixture
def broker(root: Path) -> Iterator[tuple[socket.socket, threading.Thread, list[int]]]:
    """The broker serving one connection in a thread, as systemd would start it."""
    agent, conn = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    status: list[int] = []
    cwd = os.getcwd()

    def run() -> None:
        with conn:  # as the instance's exit closes it
            status.append(tftp_broker.serve(conn, broker_args(root)))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield agent, thread, status
    finally:
        agent.close()
        thread.join(30)
        os.chdir(cwd)  # the broker enters the folder: a process of its own in the OS


def test_the_broker_refuses_a_port_out_of_range_and_says_why(
    broker: tuple[socket.socket, threading.Thread, list[int]],
) -> None:
    agent, thread, status = broker
    agent.sendall(b"24000 m1\n")
    reply = agent.makefile("r").read()
    assert reply.startswith("error: port 24000 is outside the agent's TFTP ports 23400-23999\n")
    thread.join(30)
    assert status == [1]


@pytest.mark.skipif(not shutil.which("in.tftpd"), reason="needs tftpd-hpa's in.tftpd")
def test_the_broker_runs_in_tftpd_until_the_agent_hangs_up(
    broker: tuple[socket.socket, threading.Thread, list[int]], root: Path
) -> None:
    agent, thread, status = broker
    port = LAST - 7
    agent.sendall(f"{port} m1/sub 127.0.0.1\n".encode())
    line = agent.makefile("r").readline()
    assert line.startswith(f"ok 127.0.0.1:{port} {root}/m1/sub (ready in ")
    holder = tftp_broker.udp_inode("127.0.0.1", port)
    assert holder is not None
    pids = [
        p for p in os.listdir("/proc") if p.isdigit() and tftp_broker.holds_socket(int(p), holder)
    ]
    assert [os.readlink(f"/proc/{p}/cwd") for p in pids] == [str(root / "m1" / "sub")]
    agent.close()
    thread.join(30)
    assert status == [0]
    assert tftp_broker.udp_inode("127.0.0.1", port) is None
    assert not os.path.exists(f"/proc/{pids[0]}")


# -- the units and the command --------------------------------------------------

UNITS = {
    f.path.rsplit("/", 1)[1]: f.text
    for f in buildhost.HOOK.os_files
    if f.path.startswith("/etc/systemd/system/initpy-agent-tftp")
}


@needs_systemd_analyze
def test_systemd_reads_the_broker_s_units_without_a_complaint(tmp_path: Path) -> None:
    assert sorted(UNITS) == ["initpy-agent-tftp.socket", "initpy-agent-tftp@.service"]
    assert systemd_verify(str(tmp_path), UNITS) == (0, "")


def test_the_units_and_the_command_name_what_the_host_programs_use(tmp_path: Path) -> None:
    assert f"ListenStream={layout.AGENT_TFTP_SOCKET}\n" in UNITS["initpy-agent-tftp.socket"]
    command = next(f for f in buildhost.HOOK.os_files if f.path == buildhost.AGENT_TFTP_COMMAND)
    assert command.mode == 0o755
    # The shim runs the client: its --help comes back through the real shell.
    script = tmp_path / "initpy-agent-tftp"
    repo = str(Path(tftp_client.__file__).parents[2])
    script.write_text(command.text.replace(layout.HOST_PYTHONPATH, repo))
    script.chmod(0o755)
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "usage: initpy-agent-tftp [-h]" in done.stdout
