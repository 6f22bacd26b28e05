"""The monitor's fetches against hostile servers on loopback (issue 19).

Each server here is a real socket, scripted: a TFTP server that lets a
stranger's DATA packet arrive before its own, servers that trickle their
answer a few bytes at a time, servers whose words carry control
characters, and HTTPS servers whose certificates a test CA signed. The
monitor runs with the fake clock of test_monitor, and its fetches are real.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from initpy.host import tftp
from initpy.host.fetch import FetchError, fetch, fetch_to_file
from tests.unit.test_monitor import (
    BUILDID,
    NEW,
    OLD,
    QuietHandler,
    Servers,
    World,
    make_monitor,
    run_polls,
    servers,  # noqa: F401
)

FORGED = "c" * 64


# -- a scripted TFTP server ----------------------------------------------------------------


def data(block: int, payload: bytes) -> bytes:
    return struct.pack("!HH", tftp.DATA, block) + payload


def oack(**options: object) -> bytes:
    words = [str(w).encode() for pair in options.items() for w in pair]
    return struct.pack("!H", tftp.OACK) + b"\0".join(words) + b"\0"


def error(code: int, text: str) -> bytes:
    return struct.pack("!HH", tftp.ERROR, code) + text.encode("latin-1") + b"\0"


@dataclass
class Exchange:
    """What one scripted transfer saw: the request, and what each socket received."""

    request: bytes = b""
    acks: list[bytes] = field(default_factory=list)
    to_stranger: list[bytes] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


Script = Callable[[socket.socket, tuple[str, int], Exchange], None]


@pytest.fixture
def scripted_tftp() -> Iterator[Callable[[Script], tuple[str, Exchange]]]:
    """A TFTP server on 127.0.0.1 that answers one request with a script; its URL."""
    threads: list[threading.Thread] = []
    sockets: list[socket.socket] = []

    def start(script: Script) -> tuple[str, Exchange]:
        listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listen.bind(("127.0.0.1", 0))
        listen.settimeout(10)
        sockets.append(listen)
        seen = Exchange()

        def serve() -> None:
            try:
                seen.request, client = listen.recvfrom(2048)
                # The server's own transfer ID: a fresh port, as tftpd-hpa's and QEMU's.
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as own:
                    own.bind(("127.0.0.1", 0))
                    own.settimeout(5)
                    script(own, client, seen)
            finally:
                seen.done.set()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return f"tftp://127.0.0.1:{listen.getsockname()[1]}/{BUILDID}", seen

    yield start
    for thread in threads:
        thread.join(10)
    for s in sockets:
        s.close()


def stranger(address: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 0))
    s.settimeout(5)
    return s


def forge_first(address: str, after_oack: bool) -> Script:
    """The real answer is NEW; a stranger at `address` sends FORGED just before it,
    either before the server's first reply or once an OACK fixed its port."""

    def script(own: socket.socket, client: tuple[str, int], seen: Exchange) -> None:
        with stranger(address) as forger:
            if after_oack:
                own.sendto(oack(blksize=tftp.BLKSIZE, tsize=65), client)
                seen.acks.append(own.recv(100))
            forger.sendto(data(1, (FORGED + "\n").encode()), client)
            own.sendto(data(1, (NEW + "\n").encode()), client)
            seen.acks.append(own.recv(100))
            seen.to_stranger.append(forger.recv(100))

    return script


@pytest.mark.parametrize(
    ("address", "after_oack"),
    [("127.0.0.2", False), ("127.0.0.2", True), ("127.0.0.1", True)],
    ids=["another address first", "another address later", "another port later"],
)
def test_a_forged_tftp_answer_is_ignored_and_the_server_s_is_used(
    scripted_tftp: Callable[[Script], tuple[str, Exchange]], address: str, after_oack: bool
) -> None:
    url, seen = scripted_tftp(forge_first(address, after_oack))
    world = World()
    run_polls(make_monitor(world, url), 1)
    assert seen.done.wait(10)
    assert world.reboots == [f"initpy-monitor: build {OLD} -> {NEW}"]
    # The request asked for the options; the server's port got every ACK.
    assert seen.request[2:].split(b"\0") == [
        BUILDID.encode()
    ] + b"octet blksize 1428 tsize 0 ".split(b" ")
    assert seen.acks[-1] == struct.pack("!HH", tftp.ACK, 1)
    # The stranger was told, as RFC 1350 says.
    assert seen.to_stranger == [error(tftp.UNKNOWN_TID, "unknown transfer ID")]


def test_tftp_without_options_and_a_lost_ack_still_gets_the_file(
    scripted_tftp: Callable[[Script], tuple[str, Exchange]],
) -> None:
    """A server that ignores the options sends 512-byte blocks; one it sends again
    (its ACK lost) is acknowledged again and written once."""
    body = bytes(range(256)) * 3  # 768 bytes: a full block and a short one

    def script(own: socket.socket, client: tuple[str, int], seen: Exchange) -> None:
        own.sendto(data(1, body[:512]), client)
        seen.acks.append(own.recv(100))
        own.sendto(data(1, body[:512]), client)
        seen.acks.append(own.recv(100))
        own.sendto(data(2, body[512:]), client)
        seen.acks.append(own.recv(100))

    url, seen = scripted_tftp(script)
    assert fetch(url, 5.0) == body
    assert seen.done.wait(10)
    assert [struct.unpack("!HH", a)[1] for a in seen.acks] == [1, 1, 2]


# -- one deadline over each fetch ----------------------------------------------------------


@pytest.fixture
def trickling_http() -> Iterator[Callable[[bytes], str]]:
    """An HTTP server that sends `answer` a byte every 0.05 s, each within any read timeout."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    listen.listen(4)

    def start(answer: bytes) -> str:
        def serve() -> None:
            conn, _ = listen.accept()
            with conn:
                conn.recv(4096)  # the request
                for i in range(len(answer)):
                    if stop.is_set():
                        return
                    try:
                        conn.sendall(answer[i : i + 1])
                    except OSError:  # the client hung up: the deadline worked
                        return
                    time.sleep(0.05)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return f"http://127.0.0.1:{listen.getsockname()[1]}/{BUILDID}"

    yield start
    stop.set()
    for thread in threads:
        thread.join(10)
    listen.close()


HEADERS = b"HTTP/1.0 200 OK\r\nContent-Length: 4096\r\n\r\n"


@pytest.mark.parametrize("where", ["status line and headers", "body"])
def test_a_trickling_http_server_is_cut_off_at_the_deadline(
    trickling_http: Callable[[bytes], str], where: str
) -> None:
    answer = b"HTTP/1.0 200 OK\r\n" + b"X-Slow: y\r\n" * 400 + b"\r\n" + b"a" * 4096
    if where == "body":
        answer = HEADERS + b"a" * 4096
    url = trickling_http(answer)
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"timed out after 1 s in all \(\d+ bytes so far\)"):
        fetch(url, 1.0)
    took = time.monotonic() - started
    assert 1.0 <= took < 1.5, took  # the whole answer would take 205 s or more


def test_a_trickling_download_is_cut_off_at_its_deadline_not_its_timeout(
    trickling_http: Callable[[bytes], str], tmp_path: os.PathLike[str]
) -> None:
    url = trickling_http(HEADERS + b"a" * 4096)
    target = os.path.join(str(tmp_path), "archive")
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out after 1 s in all"):
        fetch_to_file(url, target, 100_000, timeout=5.0, deadline=1.0)
    assert 1.0 <= time.monotonic() - started < 1.5
    assert not os.path.exists(target)


def test_a_trickling_tftp_server_is_cut_off_at_the_deadline(
    scripted_tftp: Callable[[Script], tuple[str, Exchange]],
) -> None:
    """8-byte blocks, each well within the per-packet wait, forever."""

    def script(own: socket.socket, client: tuple[str, int], seen: Exchange) -> None:
        own.settimeout(0.5)  # the client's gone once no ACK comes
        own.sendto(oack(blksize=8), client)
        for block in range(1, 200):
            try:
                seen.acks.append(own.recv(100))
            except TimeoutError:  # the client gave up: the deadline worked
                return
            time.sleep(0.05)
            own.sendto(data(block, b"aaaaaaaa"), client)
            if len(seen.acks) > 40:
                return

    url, seen = scripted_tftp(script)
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"timed out after 1 s in all \(\d+ bytes so far\)"):
        fetch(url, 1.0)
    assert 1.0 <= time.monotonic() - started < 1.5
    assert seen.done.wait(10)


# -- a server's words reach the journal escaped -------------------------------------------

EVIL = "gone\r\n<0>initpy-monitor: forged line\x1b[2J"
ESCAPED = "gone\\r\\n<0>initpy-monitor: forged line\\x1b[2J"


def logged_failure(url: str) -> str:
    world = World()
    run_polls(make_monitor(world, url), 1)
    assert world.reboots == []
    (line,) = [line for line in world.lines if line.startswith("<4>poll failed")]
    return line


def test_a_tftp_error_text_is_logged_escaped(
    scripted_tftp: Callable[[Script], tuple[str, Exchange]],
) -> None:
    def script(own: socket.socket, client: tuple[str, int], seen: Exchange) -> None:
        own.sendto(error(2, EVIL), client)

    url, _ = scripted_tftp(script)
    line = logged_failure(url)
    assert line.isprintable() and f"TFTP error from 127.0.0.1: error 2: {ESCAPED}" in line


def test_an_http_reason_is_logged_escaped(trickling_http: Callable[[bytes], str]) -> None:
    # A status line ends at its LF: the reason brings a CR and an ESC.
    url = trickling_http(b"HTTP/1.0 503 gone\r<0>forged\x1b[2J\r\n\r\n")
    line = logged_failure(url)
    assert line.isprintable() and "HTTP 503 gone\\r<0>forged\\x1b[2J" in line


def test_a_bad_build_id_is_logged_escaped(servers: Servers) -> None:  # noqa: F811
    servers.put(f"evil/{BUILDID}", EVIL.encode())
    line = logged_failure(servers.url("file", f"evil/{BUILDID}"))
    assert (
        line.isprintable() and f"not 64 hex digits: '{ESCAPED.lower()}'" in line
    )  # read as lower case


# -- https: only a server the host's CA store trusts --------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass
class MadeCa:
    """A CA made for the test; `sign` gives a server certificate and key for a name."""

    top: str
    cert: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        self.cert, self.key = (os.path.join(self.top, f"ca.{e}") for e in ("pem", "key"))
        openssl(
            "req",
            "-x509",
            *EC,
            "-keyout",
            self.key,
            "-out",
            self.cert,
            "-days",
            "2",
            "-subj",
            "/CN=initpy test CA",
        )
        openssl("x509", "-in", self.cert, "-noout")  # a readable certificate

    def sign(self, alt_name: str) -> tuple[str, str]:
        name = alt_name.replace(":", "_")
        cert, key, csr, ext = (
            os.path.join(self.top, f"{name}.{e}") for e in "pem key csr ext".split()
        )
        openssl("req", "-new", *EC, "-keyout", key, "-out", csr, "-subj", "/CN=initpy test")
        with open(ext, "w") as f:
            f.write(f"subjectAltName={alt_name}\n")
        openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key)
        openssl(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            self.cert,
            "-CAkey",
            self.key,
            "-CAcreateserial",
            "-extfile",
            ext,
            "-out",
            cert,
            "-days",
            "2",
        )
        return cert, key


@pytest.fixture
def https_servers(servers: Servers) -> Iterator[Callable[[str, str], int]]:  # noqa: F811
    """HTTPS servers for the servers' folder, each with a certificate and key; their ports."""
    running: list[http.server.ThreadingHTTPServer] = []

    def start(cert: str, key: str) -> int:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        handler = functools.partial(QuietHandler, directory=servers.root)
        web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        web.socket = context.wrap_socket(web.socket, server_side=True)
        threading.Thread(target=web.serve_forever, daemon=True).start()
        running.append(web)
        return int(web.server_address[1])

    yield start
    for web in running:
        web.shutdown()
        web.server_close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_is_believed_only_with_a_trusted_ca_and_its_own_name(
    servers: Servers,  # noqa: F811
    https_servers: Callable[[str, str], int],
    tmp_path: os.PathLike[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = MadeCa(str(tmp_path))
    servers.put(f"tls/{BUILDID}", (NEW + "\n").encode())
    right = f"https://127.0.0.1:{https_servers(*ca.sign('IP:127.0.0.1'))}/tls/{BUILDID}"
    wrong = (
        f"https://127.0.0.1:{https_servers(*ca.sign('DNS:elsewhere.example.org'))}/tls/{BUILDID}"
    )
    # The OS's CA store, as the monitor reads it by default, does not hold the test CA.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch(right, 5.0)
    world = World()
    run_polls(make_monitor(world, right), 1)
    assert world.reboots == []
    # Trusted (here through OpenSSL's SSL_CERT_FILE, as a drop-in may set it),
    # the server's answer reboots the host...
    monkeypatch.setenv("SSL_CERT_FILE", ca.cert)
    world = World()
    run_polls(make_monitor(world, right), 1)
    assert world.reboots == [f"initpy-monitor: build {OLD} -> {NEW}"]
    # ...but a certificate from the same CA for another name is refused.
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED.*mismatch"):
        fetch(wrong, 5.0)
