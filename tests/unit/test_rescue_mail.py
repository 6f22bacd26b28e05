"""A rescue after the network is up mails its report to the admin (issue 12).

The services hook registers `mail_rescue` (Hook.on_rescue); the init speaks
SMTP through the fake kernel's `connect_tcp`, which the test routes to a
real SMTP sink on 127.0.0.1 (tests/harness/smtp_sink.py).
"""

from __future__ import annotations

import errno
import json
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from initpy.devtools.fake import FakeKernel, Rebooted
from initpy.runtime import mail
from initpy.runtime.driver import Boot
from initpy.runtime.hook import BootContext, BootFailure, Hook, Milestone, State, build_registry
from initpy.runtime.kernel import Halted
from initpy.runtime.report import Report
from tests.harness.smtp_sink import SmtpSink
from tests.unit.conftest import hook_module

RELAY = "relay.example.org:2525"
ADMIN = "admin@example.org"
MAIL_CMDLINE = f"buildos.smtp_relay={RELAY} buildos.admin_email={ADMIN} initpy.rescue=reboot"


def network_up(ctx: BootContext) -> str:
    ctx.kernel.sethostname("build-0123456789")
    return "up"


def boot(kernel: FakeKernel, network: bool = True) -> Halted:
    """network (provides `network`), then a state that fails, with the real services hook."""

    def breaks(ctx: BootContext) -> str:
        raise BootFailure("the image is broken\nsecond line", "build a good image")

    states = [State("net", network_up, "n", provides=(Milestone.NETWORK,))] if network else []
    hooks = [
        Hook("net", "stands for network", tuple(states)),
        Hook("broken", "fails", (State("breaks", breaks, "fails", wants=(Milestone.NETWORK,)),)),
        hook_module("services").HOOK,
    ]
    with pytest.raises(Halted) as ended:
        Boot(kernel, build_registry(hooks)).run()
    return ended.value


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def console(kernel: FakeKernel) -> str:
    return "\n".join(kernel.console_lines)


def test_a_rescue_after_the_network_mails_its_report_to_the_admin(
    tmp_path: object, sink: SmtpSink
) -> None:
    kernel = FakeKernel(
        root=str(tmp_path), cmdline=MAIL_CMDLINE, tcp_routes={RELAY: ("127.0.0.1", sink.port)}
    )
    ended = boot(kernel)
    assert isinstance(ended, Rebooted) and ended.how == "reboot"  # the policy goes on
    (received,) = sink.messages
    assert received.recipients == [ADMIN]
    assert received.sender == "root@build-0123456789"
    message = received.message
    assert message["To"] == ADMIN
    assert message["Subject"].strip() == (
        "build-0123456789: initpy rescue: breaks: the image is broken\\nsecond line"
    )
    assert message["Auto-Submitted"] == "auto-generated"
    parts = list(message.walk())
    body = next(p for p in parts if p.get_content_type() == "text/plain").get_payload(decode=True)
    assert b"Reason: breaks: the image is broken" in body
    assert b"Fix: build a good image" in body
    attached = next(p for p in parts if p.get_filename() == "report.json")
    report = json.loads(attached.get_payload(decode=True))  # type: ignore[arg-type]
    assert report["outcome"] == "rescue"
    assert report["reason"] == "breaks: the image is broken\nsecond line"
    text = console(kernel)
    assert f"initpy: rescue: mailing the report to {ADMIN} through {RELAY}" in text
    assert f"initpy: rescue: report mailed to {ADMIN}" in text
    assert ("connect", RELAY, mail.SEND_TIMEOUT) in kernel.calls


def test_no_mail_before_the_network_is_up(tmp_path: object, sink: SmtpSink) -> None:
    kernel = FakeKernel(
        root=str(tmp_path), cmdline=MAIL_CMDLINE, tcp_routes={RELAY: ("127.0.0.1", sink.port)}
    )
    boot(kernel, network=False)
    assert sink.messages == [] and kernel.syscalls("connect") == []
    assert "rescue: mail" not in console(kernel) and "report mailed" not in console(kernel)


def test_without_relay_or_admin_the_rescue_says_it_does_not_mail(tmp_path: object) -> None:
    kernel = FakeKernel(root=str(tmp_path), cmdline=f"buildos.admin_email={ADMIN}")
    boot(kernel)
    assert kernel.syscalls("connect") == []
    assert (
        "initpy: rescue: the report is not mailed: set buildos.smtp_relay and "
        "buildos.admin_email" in console(kernel)
    )


@pytest.mark.parametrize("error", [errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH])
def test_a_relay_that_cannot_be_reached_is_a_console_line(tmp_path: object, error: int) -> None:
    kernel = FakeKernel(
        root=str(tmp_path), cmdline=MAIL_CMDLINE, failures={"connect": {RELAY: error}}
    )
    ended = boot(kernel)
    assert isinstance(ended, Rebooted) and ended.how == "reboot"
    assert f"initpy: rescue: cannot mail the report through {RELAY}: " in console(kernel)


@pytest.fixture
def silent_relay() -> Iterator[int]:
    """A relay that accepts the connection and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_relay_that_never_answers_costs_the_bound_and_no_more(
    tmp_path: object, silent_relay: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mail, "SEND_TIMEOUT", 0.5)
    kernel = FakeKernel(
        root=str(tmp_path), cmdline=MAIL_CMDLINE, tcp_routes={RELAY: ("127.0.0.1", silent_relay)}
    )
    start = time.monotonic()
    ended = boot(kernel)
    assert time.monotonic() - start < 5
    assert isinstance(ended, Rebooted)
    assert "cannot mail the report" in console(kernel) and "timed out" in console(kernel)


class SlowKernel(FakeKernel):
    """A fake whose monotonic clock is the real one: the deadline really passes."""

    def monotonic(self) -> float:
        return time.monotonic()


def test_one_deadline_bounds_the_whole_conversation(tmp_path: object) -> None:
    """A relay that answers each command just inside the step timeout still ends at the deadline."""
    server = socket.create_server(("127.0.0.1", 0))

    def dribble() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"220 slow\r\n")
            reader = conn.makefile("rb")
            while reader.readline():
                time.sleep(0.3)
                try:
                    conn.sendall(b"250 OK\r\n")
                except OSError:
                    return

    threading.Thread(target=dribble, daemon=True).start()
    kernel = SlowKernel(
        root=str(tmp_path), tcp_routes={"relay:25": ("127.0.0.1", server.getsockname()[1])}
    )
    message = EmailMessage()
    message["To"] = ADMIN
    message["From"] = "root@host"
    message.set_content("x")
    start = time.monotonic()
    with pytest.raises((OSError, smtplib.SMTPException)):
        mail.send(kernel, "relay", 25, message, "host", timeout=0.8)
    assert time.monotonic() - start < 1.5
    server.close()


def test_the_message_keeps_hostile_reasons_out_of_the_headers(tmp_path: object) -> None:
    report = Report(FakeKernel(root=str(tmp_path)))
    report.reason = "disk label \x1b[2J\r\nBcc: victim@example.org"
    message = mail.rescue_message(report, "build-1", ADMIN)
    assert message["Bcc"] is None
    assert "\n" not in message["Subject"] and "\x1b" not in message["Subject"]
