"""initpy-monitor against real servers on 127.0.0.1: tftpy's TFTP server, http.server.

The monitor's clock, sleep and random draws are injected (a fake clock
that a sleep moves on), and so are the reboot and the mailer, which record
what they were asked. The fetches are real: a real TFTP or HTTP exchange,
a real refused connection, a real timeout (short), a real file. No assert
depends on how long anything took.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage

import pytest
import tftpy

from initpy.host import mail as mailer
from initpy.host import monitor, monitor_records, systemd
from initpy.host.fetch import ANSWER_LIMIT, FetchError, fetch, parse_build_id
from initpy.host.settings import Settings
from initpy.runtime import layout

OLD = "a" * 64
NEW = "b" * 64
INTERVAL = 600.0
BUILDID = "buildos/buildos-buildid"


# -- servers -----------------------------------------------------------------------


@dataclass
class Servers:
    """One folder served by TFTP and HTTP; tests write the files they need into it."""

    root: str
    tftp_port: int
    http_port: int

    def put(self, name: str, body: bytes) -> None:
        path = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(body)
        os.replace(path + ".tmp", path)

    def url(self, scheme: str, name: str) -> str:
        if scheme == "tftp":
            return f"tftp://127.0.0.1:{self.tftp_port}/{name}"
        if scheme == "http":
            return f"http://127.0.0.1:{self.http_port}/{name}"
        return f"file://{os.path.join(self.root, name)}"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = str(tmp_path_factory.mktemp("tftproot"))
    tftp = tftpy.TftpServer(root)
    tftp_thread = threading.Thread(
        target=tftp.listen, kwargs={"listenip": "127.0.0.1", "listenport": 0, "timeout": 0.2}
    )
    tftp_thread.daemon = True
    tftp_thread.start()
    assert tftp.is_running.wait(10)
    handler = functools.partial(QuietHandler, directory=root)
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    web_thread = threading.Thread(target=web.serve_forever, daemon=True)
    web_thread.start()
    yield Servers(root, tftp.listenport, web.server_address[1])
    web.shutdown()
    web.server_close()
    tftp.stop(now=True)
    tftp_thread.join(10)


def closed_port(kind: int) -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def silent_tcp() -> Iterator[int]:
    """A TCP port that accepts connections (the backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.fixture
def silent_udp() -> Iterator[int]:
    """A UDP port that swallows TFTP requests."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


# -- a monitor with its world injected -------------------------------------------------


@dataclass
class World:
    """What the monitor did, on a fake clock."""

    now: float = 1000.0
    reboots: list[str] = field(default_factory=list)
    mails: list[EmailMessage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    polled_at: list[float] = field(default_factory=list)
    mail_at: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds

    def mail(self, message: EmailMessage) -> None:
        self.mails.append(message)
        self.mail_at.append(self.now)

    def notify(self, state: str) -> bool:
        self.notes.append(state)
        return True


def make_monitor(
    world: World,
    url: str | None,
    *,
    seed: int = 1,
    interval: float = INTERVAL,
    timeout: float = 2.0,
) -> monitor.Monitor:
    def polled(url: str, timeout: float) -> bytes:
        world.polled_at.append(world.now)
        return fetch(url, timeout)

    return monitor.Monitor(
        Settings(url, "admin@example.org", interval),
        OLD,
        monitor_records.Dependencies(
            fetch=polled,
            reboot=world.reboots.append,
            mail=world.mail,
            flush_mail=lambda: True,
            clock=world.clock,
            sleep=world.sleep,
            rng=random.Random(seed),
            notify=world.notify,
            log=world.lines.append,
            uptime=lambda: 3 * 86400 + 4 * 3600 + 5 * 60 + 6,
            hostname="build-5400123456",
            fetch_timeout=timeout,
        ),
    )


def run_polls(m: monitor.Monitor, polls: int, also: Callable[[], bool] = lambda: False) -> None:
    m.run(stop=lambda: m.loop.polls >= polls or also())


SCHEMES = ("tftp", "http", "file")


# -- the three outcomes ----------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_unchanged_id_gives_no_reboot(servers: Servers, scheme: str) -> None:
    servers.put(f"same/{BUILDID}", (OLD + "\n").encode())
    world = World()
    m = make_monitor(world, servers.url(scheme, f"same/{BUILDID}"))
    run_polls(m, 3)
    assert world.reboots == [] and world.mails == []
    assert m.loop.failures == 0
    assert world.notes[0].startswith("READY=1\nSTATUS=running build " + OLD)
    assert "STATUS=build aaaaaaaaaaaa is current; next poll in" in world.notes[-1]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_changed_id_gives_one_reboot_and_one_mail(servers: Servers, scheme: str) -> None:
    servers.put(f"new/{BUILDID}", (NEW + "\n").encode())
    world = World()
    m = make_monitor(world, servers.url(scheme, f"new/{BUILDID}"))
    run_polls(m, 1)
    assert world.reboots == [f"initpy-monitor: build {OLD} -> {NEW}"]
    (mail,) = world.mails
    assert mail["To"] == "admin@example.org"
    assert mail["Subject"] == "build-5400123456: new build bbbbbbbbbbbb, rebooting"
    assert mail["Auto-Submitted"] == "auto-generated"
    body = mail.get_content()
    assert f"old build id: {OLD}" in body and f"new build id: {NEW}" in body
    assert "uptime:       3 d 4 h 5 min" in body
    assert world.mail_at[0] == world.polled_at[0]  # mailed before the reboot, same poll
    assert any("rebooting onto build bbbbbbbbbbbb" in n for n in world.notes)


def test_a_host_still_up_after_its_reboot_request_asks_again_without_mailing(
    servers: Servers,
) -> None:
    servers.put(f"new/{BUILDID}", (NEW + "\n").encode())
    world = World()
    m = make_monitor(world, servers.url("http", f"new/{BUILDID}"))
    run_polls(m, 3)
    assert len(world.reboots) == 3 and len(world.mails) == 1
    assert any("asking for the reboot again" in line for line in world.lines)


def test_rolling_back_is_a_change_too(servers: Servers) -> None:
    """The monitor follows "another build", not "a newer one": the old id back reboots."""
    older = "0" * 64
    servers.put(f"back/{BUILDID}", (older + "\n").encode())
    world = World()
    run_polls(make_monitor(world, servers.url("tftp", f"back/{BUILDID}")), 1)
    assert world.reboots == [f"initpy-monitor: build {OLD} -> {older}"]


# -- failures never reboot, and back off -------------------------------------------------


def failing_urls(servers: Servers, silent_tcp: int, silent_udp: int) -> dict[str, str]:
    servers.put("bad/empty", b"")
    servers.put("bad/garbage", b"<html>503 Service Unavailable</html>\n")
    servers.put("bad/short", OLD[:63].encode() + b"\n")
    servers.put("bad/long", (NEW + "\n").encode() * 100)
    servers.put("bad/binary", b"\xff\xfe" * 40)
    return {
        "tftp server down": f"tftp://127.0.0.1:{closed_port(socket.SOCK_DGRAM)}/{BUILDID}",
        "tftp timeout": f"tftp://127.0.0.1:{silent_udp}/{BUILDID}",
        "tftp no such file": servers.url("tftp", "bad/missing"),
        "tftp empty file": servers.url("tftp", "bad/empty"),
        "tftp garbage": servers.url("tftp", "bad/garbage"),
        "tftp too long": servers.url("tftp", "bad/long"),
        "http server down": f"http://127.0.0.1:{closed_port(socket.SOCK_STREAM)}/{BUILDID}",
        "http timeout": f"http://127.0.0.1:{silent_tcp}/{BUILDID}",
        "http 404": servers.url("http", "bad/missing"),
        "http empty file": servers.url("http", "bad/empty"),
        "http garbage": servers.url("http", "bad/garbage"),
        "http truncated id": servers.url("http", "bad/short"),
        "http too long": servers.url("http", "bad/long"),
        "file missing": servers.url("file", "bad/missing"),
        "file binary": servers.url("file", "bad/binary"),
        "unknown scheme": "ftp://127.0.0.1/buildos-buildid",
    }


CASES = (
    "tftp server down",
    "tftp timeout",
    "tftp no such file",
    "tftp empty file",
    "tftp garbage",
    "tftp too long",
    "http server down",
    "http timeout",
    "http 404",
    "http empty file",
    "http garbage",
    "http truncated id",
    "http too long",
    "file missing",
    "file binary",
    "unknown scheme",
)


@pytest.mark.parametrize("case", CASES)
def test_a_failure_never_reboots_and_backs_off(
    servers: Servers, silent_tcp: int, silent_udp: int, case: str
) -> None:
    url = failing_urls(servers, silent_tcp, silent_udp)[case]
    world = World()
    # A short interval: four polls stay within the hour that would bring a mail.
    m = make_monitor(world, url, timeout=0.3, interval=60)
    run_polls(m, 4)
    assert world.reboots == [] and world.mails == []
    assert m.loop.failures == 4
    gaps = [b - a for a, b in zip(world.polled_at, world.polled_at[1:], strict=False)]
    # After n failures the wait is min(2^n, 4) intervals, jittered by ±25%.
    for failures, gap in enumerate(gaps, start=1):
        base = min(2**failures, monitor.BACKOFF_CAP) * 60
        assert 0.75 * base <= gap <= 1.25 * base, (failures, gap)
    warnings = [line for line in world.lines if line.startswith("<4>poll failed")]
    assert len(warnings) == 4 and all(line.endswith("no reboot") for line in warnings)
    assert "STATUS=build id URL failing (4 in a row)" in world.notes[-1]


def test_the_failure_texts_say_what_failed(
    servers: Servers, silent_tcp: int, silent_udp: int
) -> None:
    urls = failing_urls(servers, silent_tcp, silent_udp)
    expected = {
        "tftp timeout": "no answer from 127.0.0.1",
        "tftp no such file": "File not found",
        "tftp too long": f"answer longer than {ANSWER_LIMIT} bytes",
        "http server down": "Connection refused",
        "http timeout": "timed out after 0.3 s",
        "http 404": "HTTP 404",
        "file missing": "No such file or directory",
        "unknown scheme": "unsupported URL scheme 'ftp'",
    }
    for case, words in expected.items():
        with pytest.raises(FetchError) as failed:
            fetch(urls[case], 0.3)
        assert words in str(failed.value), (case, str(failed.value))
    problems = {
        b"": "empty answer",
        b"<html>503</html>": "not 64 hex digits",
        OLD[:63].encode(): "not 64 hex digits",
        b"\xff\xfe": "not text",
    }
    for answer, words in problems.items():
        with pytest.raises(ValueError, match=words):
            parse_build_id(answer)
    assert parse_build_id(b"  " + NEW.upper().encode() + b"\r\n") == NEW


def test_failing_for_an_hour_mails_once_and_again_only_after_a_recovery(
    servers: Servers,
) -> None:
    name = f"flaky/{BUILDID}"
    path = os.path.join(servers.root, name)
    world = World()
    m = make_monitor(world, servers.url("file", name))
    start = world.now
    script = [  # (from this fake time on, the file is ...)
        (0.0, None),  # missing: failing
        (5 * 3600.0, OLD),  # back: recovered
        (6 * 3600.0, "garbage"),  # failing again
        (9 * 3600.0, OLD),
    ]

    def serve() -> bool:
        current = [body for since, body in script if world.now - start >= since][-1]
        if current is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            servers.put(name, current.encode())
        return world.now - start >= 10 * 3600

    m.run(stop=serve)
    subjects = [mail["Subject"] for mail in world.mails]
    assert subjects == [
        "build-5400123456: build id URL failing for 1 h 0 min",
        "build-5400123456: build id URL answers again",
        "build-5400123456: build id URL failing for 1 h 0 min",
        "build-5400123456: build id URL answers again",
    ]
    assert world.reboots == []
    # The first mail leaves when the hour is up, not a backoff later.
    first_failure = world.polled_at[0]
    assert world.mail_at[0] - first_failure == pytest.approx(3600.0)
    body = world.mails[0].get_content()
    assert "No such file or directory" in body and "keeps running the build it has" in body


def test_a_mail_that_cannot_be_sent_does_not_stop_the_reboot(servers: Servers) -> None:
    servers.put(f"new/{BUILDID}", (NEW + "\n").encode())
    world = World()
    m = make_monitor(world, servers.url("file", f"new/{BUILDID}"))

    def broken(message: EmailMessage) -> None:
        raise mailer.MailError("/usr/sbin/sendmail is missing")

    m.deps = dataclasses.replace(m.deps, mail=broken)
    run_polls(m, 1)
    assert len(world.reboots) == 1
    assert any("<3>mail to admin@example.org not sent" in line for line in world.lines)


def test_without_a_url_or_a_running_id_it_never_polls(servers: Servers) -> None:
    world = World()
    m = make_monitor(world, None)
    m.run(stop=lambda: world.now > 10 * INTERVAL)
    assert world.polled_at == [] and world.reboots == []
    assert world.notes[0] == (
        "READY=1\nSTATUS=not polling: no buildos.buildid_url on the command line"
    )
    m = make_monitor(World(), servers.url("file", "x"))
    m.running_id = None
    m.run(stop=lambda: m.deps.clock() > 10 * INTERVAL + 1000)
    assert m.loop.polls == 0


# -- https ---------------------------------------------------------------------------------


@pytest.fixture
def https_url(servers: Servers, tmp_path: os.PathLike[str]) -> Iterator[tuple[str, str]]:
    """An HTTPS server for the servers' folder, and the certificate to trust it by."""
    top = str(tmp_path)
    cert, key = os.path.join(top, "cert.pem"), os.path.join(top, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handler = functools.partial(QuietHandler, directory=servers.root)
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    web.socket = context.wrap_socket(web.socket, server_side=True)
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{web.server_address[1]}", cert
    web.shutdown()
    web.server_close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_is_read_only_from_a_server_the_host_trusts(
    servers: Servers, https_url: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, cert = https_url
    servers.put(f"tls/{BUILDID}", (NEW + "\n").encode())
    url = f"{base}/tls/{BUILDID}"
    # Not in the system's CAs: a server that cannot prove itself reboots nothing.
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")
    world = World()
    run_polls(make_monitor(world, url), 2)
    assert world.reboots == [] and "CERTIFICATE_VERIFY_FAILED" in world.lines[-1]
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    world = World()
    run_polls(make_monitor(world, url), 1)
    assert world.reboots == [f"initpy-monitor: build {OLD} -> {NEW}"]


# -- the jitter law ---------------------------------------------------------------------


def test_a_fleet_that_boots_together_does_not_poll_together() -> None:
    """1,000 hosts: first polls spread over one interval, later waits at ±25%."""
    hosts = [make_monitor(World(), "file:///x", seed=seed) for seed in range(1000)]
    first = sorted(m.first_wait() for m in hosts)
    assert 0 <= first[0] and first[-1] < INTERVAL
    per_minute = [sum(1 for w in first if i * 60 <= w < (i + 1) * 60) for i in range(10)]
    assert all(60 <= n <= 140 for n in per_minute), per_minute  # 100 expected in each
    waits = [m.next_wait() for m in hosts]
    assert 0.75 * INTERVAL <= min(waits) and max(waits) <= 1.25 * INTERVAL
    assert len({round(w, 3) for w in waits}) > 990  # no two hosts keep one phase


# -- the command ------------------------------------------------------------------------


def test_check_polls_once_and_says_what_it_would_do(
    tmp_path: os.PathLike[str], servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    top = str(tmp_path)
    manifest = os.path.join(top, "manifest.json")
    with open(manifest, "wb") as f:
        f.write(layout.Manifest(OLD, ()).to_json())
    env = os.path.join(top, "buildos.env")
    servers.put(f"check/{BUILDID}", (OLD + "\n").encode())
    for body, code, words in ((OLD, 0, "the same build"), (NEW, 2, "mail the admin and reboot")):
        servers.put(f"check/{BUILDID}", (body + "\n").encode())
        with open(env, "w") as f:
            f.write(f"BUILDOS_BUILDID_URL={servers.url('tftp', f'check/{BUILDID}')}\n")
        argv = ["--buildos-env", env, "--monitor-env", "/nonexistent", "--manifest", manifest]
        assert monitor.main([*argv, "--check"]) == code
        assert words in capsys.readouterr().out


# -- the monitor as a program -----------------------------------------------------------


def test_the_monitor_runs_as_a_program(tmp_path: os.PathLike[str], servers: Servers) -> None:
    """`python3 -m initpy.host.monitor` under a NOTIFY_SOCKET: READY, then SIGTERM stops it."""
    top = str(tmp_path)
    manifest = os.path.join(top, "manifest.json")
    with open(manifest, "wb") as f:
        f.write(layout.Manifest(OLD, ()).to_json())
    env_file = os.path.join(top, "buildos.env")
    servers.put(f"same/{BUILDID}", (OLD + "\n").encode())
    with open(env_file, "w") as f:
        f.write(f"BUILDOS_BUILDID_URL={servers.url('http', f'same/{BUILDID}')}\n")
    own = os.path.join(top, "monitor.env")
    with open(own, "w") as f:
        f.write("INITPY_MONITOR_INTERVAL=1\n")
    notify = os.path.join(top, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(notify)
        listener.settimeout(60)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "initpy.host.monitor",
                "--buildos-env",
                env_file,
                "--monitor-env",
                own,
                "--manifest",
                manifest,
            ],
            env={**os.environ, "NOTIFY_SOCKET": notify},
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert listener.recv(4096).startswith(b"READY=1\nSTATUS=running build " + OLD.encode())
            statuses = [listener.recv(4096)]
            while b"is current" not in statuses[-1]:
                statuses.append(listener.recv(4096))
        finally:
            process.terminate()
            _out, err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "polling http://127.0.0.1" in err and "stopping" in err
    # The build agent is not the monitor's to run or to mention.
    assert "agent" not in err and not any(b"agent" in status for status in statuses)


def test_an_error_escaping_the_monitor_is_one_journal_line_and_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """initpy-monitor goes through every command's edge (initpy.cli): an
    unexpected error is an `error:` line and a `hint:` line, the traceback
    only with --debug."""

    def broken(*_args: object) -> object:
        raise PermissionError(13, "Permission denied", "/etc/initpy/buildos.env")

    monkeypatch.setattr(monitor, "load_settings", broken)
    assert monitor.main(["--check"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "initpy-monitor: error: PermissionError: [Errno 13] Permission denied: "
        "'/etc/initpy/buildos.env'",
        "initpy-monitor: hint: this error was not expected here; "
        "run again with --debug for the traceback",
    ]
    assert monitor.main(["--check", "--debug"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


# -- the watchdog ------------------------------------------------------------------------


def test_the_loop_pings_the_watchdog_well_within_its_interval(servers: Servers) -> None:
    """Hours of polls and naps on the fake clock: no gap between two
    WATCHDOG=1 reaches the unit's WatchdogSec= (20 s here; at most a quarter
    of it since the last ping sent, and a nap of half), so systemd restarts
    only a monitor that hangs or is stopped."""
    servers.put(f"dog/{BUILDID}", (OLD + "\n").encode())
    world = World()
    pinged: list[float] = []

    def send(state: str) -> bool:
        assert state == "WATCHDOG=1"
        pinged.append(world.now)
        return True

    m = make_monitor(world, servers.url("file", f"dog/{BUILDID}"), interval=3600.0)
    m.deps = dataclasses.replace(m.deps, watchdog=systemd.Watchdog(20.0, send, world.clock))
    start = world.now
    run_polls(m, 3)
    assert world.now - start > 2 * 3600 * 0.75  # the polls' waits went by
    gaps = [b - a for a, b in zip([start, *pinged], [*pinged, world.now], strict=True)]
    assert max(gaps) <= 0.75 * 20.0
    assert len(pinged) > 2 * 3600 / 20  # a ping for every nap, not one per poll
