"""The agent's TFTP broker, as root, asked by an unprivileged user, served to a namespace.

What systemd does for `initpy-agent-tftp.socket` (Accept=yes) the test
does by hand: it accepts each connection on a unix socket and starts the
broker (initpy/host/tftp_broker.py) as root, with the connection as its
standard input, inside a "host" namespace that has br1. The agent is
`nobody` running the client (initpy/host/tftp_client.py) with the OS's
python3, as the image runs both. A "machine" namespace on br1 writes and
reads with busybox tftp, the client the VM tests use.

Shown against the real in.tftpd: a file the machine writes lands in the
folder, owned by the agent's user; one the agent put there is read back;
`..` does not leave the folder; closing the client stops the server. And
refused, with nothing listening: a symlinked folder, a port outside
AGENT_TFTP_PORTS, a folder the agent does not own, and a uid other than
the agent's.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from initpy.runtime import layout
from tests.harness.netns import Netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.getuid() != 0, reason="needs root (network namespaces, in.tftpd)"),
    pytest.mark.skipif(
        not all(shutil.which(p) for p in ("ip", "in.tftpd", "busybox", "runuser")),
        reason="needs ip, in.tftpd (tftpd-hpa), busybox and runuser",
    ),
]

REPO = str(Path(__file__).resolve().parents[2])
PYTHON3 = "/usr/bin/python3"  # the OS's, as the image runs initpy/host
BR1, MACHINE = "172.23.0.1", "172.23.0.50"
AGENT = "nobody"
FIRST, LAST = layout.AGENT_TFTP_PORTS


@dataclass
class Lab:
    host: Netns
    machine: Netns
    base: Path  # reachable by the agent: the socket and the TFTP root
    root: Path
    listener: socket.socket
    brokers: list[subprocess.Popen[bytes]]

    def ask(self, *words: str, user: str = AGENT) -> subprocess.Popen[str]:
        """The agent's client, connected, with a broker serving its connection."""
        argv = ["runuser", "-u", user, "--", "env", f"PYTHONPATH={REPO}", PYTHON3, "-s", "-B"]
        argv += ["-P", "-m", "initpy.host.tftp_client", *words]
        argv += ["--socket", str(self.base / "agent-tftp.sock")]
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn, _ = self.listener.accept()
        with conn:
            broker = ["ip", "netns", "exec", self.host.name, PYTHON3, "-s", "-B", "-P"]
            broker += ["-m", "initpy.host.tftp_broker", "--user", AGENT]
            broker += ["--root", str(self.root), "--interface", "br1"]
            env = {**os.environ, "PYTHONPATH": REPO}
            self.brokers.append(subprocess.Popen(broker, stdin=conn.fileno(), env=env))
        return client

    def listening(self, port: int) -> bool:
        return f"{BR1}:{port}" in self.host.run(["ss", "-Hlun"]).split()

    def tftp(self, *args: str) -> bool:
        argv = ["timeout", "20", "busybox", "tftp", *args]
        done = subprocess.run(
            ["ip", "netns", "exec", self.machine.name, *argv], capture_output=True, timeout=30
        )
        return done.returncode == 0


@pytest.fixture
def lab() -> Iterator[Lab]:
    agent = pwd.getpwnam(AGENT)
    base = Path(tempfile.mkdtemp(prefix="initpy-agent-tftp-", dir="/tmp"))
    base.chmod(0o755)
    root = base / "tftp"
    root.mkdir(mode=0o755)
    os.chown(root, agent.pw_uid, agent.pw_gid)  # as /build/tftp is build's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(base / "agent-tftp.sock"))
    os.chmod(base / "agent-tftp.sock", 0o666)  # the uid check is the broker's own
    listener.listen()
    listener.settimeout(30)
    brokers: list[subprocess.Popen[bytes]] = []
    try:
        with Netns("agtftp-host") as host, Netns("agtftp-vm") as machine:
            host.run(["ip", "link", "add", "br1", "type", "bridge"])
            host.run(["ip", "addr", "add", f"{BR1}/16", "dev", "br1"])
            host.run(["ip", "link", "set", "br1", "up"])
            host.veth("p1", machine, "eth0")
            host.run(["ip", "link", "set", "p1", "master", "br1"])
            machine.run(["ip", "addr", "add", f"{MACHINE}/16", "dev", "eth0"])
            machine.run(["ip", "link", "set", "eth0", "up"])
            yield Lab(host, machine, base, root, listener, brokers)
    finally:
        listener.close()
        for broker in brokers:
            if broker.poll() is None:
                broker.terminate()
            broker.wait(timeout=30)
        shutil.rmtree(base)


def agent_folder(lab: Lab, name: str) -> Path:
    agent = pwd.getpwnam(AGENT)
    folder = lab.root / name
    folder.mkdir(mode=0o755)
    os.chown(folder, agent.pw_uid, agent.pw_gid)
    return folder


def refusal(client: subprocess.Popen[str]) -> str:
    _out, err = client.communicate(timeout=60)
    assert client.returncode == 1, err
    return err


def test_the_agent_gets_a_writable_folder_served_to_br1_until_it_lets_go(lab: Lab) -> None:
    folder = agent_folder(lab, "machine1")
    agent = pwd.getpwnam(AGENT)
    given = folder / "boot.txt"
    given.write_text("from the agent\n")
    os.chown(given, agent.pw_uid, agent.pw_gid)
    started = time.monotonic()
    client = lab.ask(str(FIRST), "machine1")
    assert client.stdout is not None
    ready = client.stdout.readline()
    print(f"request to a ready server: {(time.monotonic() - started) * 1000:.0f} ms; {ready}")
    assert ready.startswith(f"ready {BR1}:{FIRST} {folder} (ready in "), client.stderr
    try:
        assert lab.listening(FIRST)
        upload = lab.base / "upload.txt"
        upload.write_text("from the machine\n")
        assert lab.tftp("-p", "-l", str(upload), "-r", "result.txt", BR1, str(FIRST))
        written = folder / "result.txt"
        assert written.read_text() == "from the machine\n"
        assert (written.stat().st_uid, written.stat().st_mode & 0o777) == (agent.pw_uid, 0o644)
        # A retried upload overwrites the agent's own file (--permissive).
        upload.write_text("again\n")
        assert lab.tftp("-p", "-l", str(upload), "-r", "result.txt", BR1, str(FIRST))
        assert written.read_text() == "again\n"
        got = lab.base / "got.txt"
        assert lab.tftp("-g", "-l", str(got), "-r", "boot.txt", BR1, str(FIRST))
        assert got.read_text() == "from the agent\n"
        # The chroot: nothing above the folder is reachable.
        (lab.root / "secret.txt").write_text("not for machines\n")
        escaped = lab.base / "escaped.txt"
        assert not lab.tftp("-g", "-l", str(escaped), "-r", "../secret.txt", BR1, str(FIRST))
        assert not escaped.exists() or escaped.read_text() != "not for machines\n"
    finally:
        client.terminate()
        client.wait(timeout=30)
    lab.brokers[-1].wait(timeout=30)
    assert not lab.listening(FIRST)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ((str(FIRST), "evil"), "evil is a symbolic link"),
        ((str(LAST + 1), "machine1"), f"port {LAST + 1} is outside the agent's TFTP ports"),
        (("69", "machine1"), "port 69 is outside"),
        ((str(FIRST), "roots"), "roots is owned by uid 0, not by the agent's user"),
        ((str(FIRST), "machine1", "--address", "10.9.9.9"), "10.9.9.9 is not an address of br1"),
    ],
    ids=["symlink", "port-above", "port-69", "root-s-folder", "other-address"],
)
def test_a_request_beyond_the_agent_s_own_is_refused_and_nothing_listens(
    lab: Lab, words: tuple[str, ...], message: str
) -> None:
    agent_folder(lab, "machine1")
    (lab.root / "evil").symlink_to("/etc")
    (lab.root / "roots").mkdir(mode=0o755)
    err = refusal(lab.ask(*words))
    assert message in err, err
    assert "initpy-agent-tftp: hint: " in err, err
    assert lab.host.run(["ss", "-Hlun"]).strip() == ""


def test_a_uid_other_than_the_agent_s_is_refused(lab: Lab) -> None:
    agent_folder(lab, "machine1")
    err = refusal(lab.ask(str(FIRST), "machine1", user="daemon"))
    assert f"uid {pwd.getpwnam('daemon').pw_uid} may not ask for a TFTP server" in err, err
    assert lab.host.run(["ss", "-Hlun"]).strip() == ""
