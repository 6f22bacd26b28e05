"""initpy.host.mail: the message handed to a stand-in sendmail, the bounded queue wait."""

from __future__ import annotations

import os

import pytest

from initpy.host import mail as mailer


class FakeClock:
    """A clock that only a sleep moves on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_sendmail_gets_a_whole_message_on_stdin(tmp_path: os.PathLike[str]) -> None:
    top = str(tmp_path)
    stand_in = os.path.join(top, "sendmail")
    with open(stand_in, "w") as f:
        f.write(f'#!/bin/sh\necho "$@" > {top}/argv\ncat > {top}/message\n')
    os.chmod(stand_in, 0o755)
    message = mailer.message("build", "admin@example.org", "subject", "old id: x\n")
    mailer.sendmail(message, stand_in)
    with open(os.path.join(top, "argv")) as f:
        assert f.read() == "-t -i\n"
    with open(os.path.join(top, "message")) as f:
        text = f.read()
    for header in (
        "From: initpy-monitor <build>",
        "To: admin@example.org",
        "Subject: subject",
        "Auto-Submitted: auto-generated",
        "Date: ",
    ):
        assert header in text
    assert text.endswith("\n\nold id: x\n")
    with open(stand_in, "w") as f:
        f.write("#!/bin/sh\necho 'fatal: no relay' >&2\nexit 75\n")
    with pytest.raises(mailer.MailError, match="exit 75: fatal: no relay"):
        mailer.sendmail(message, stand_in)
    with pytest.raises(mailer.MailError, match="needs an MTA"):
        mailer.sendmail(message, os.path.join(top, "missing"))


def test_the_queue_is_waited_for_with_a_bound() -> None:
    world = FakeClock()
    answers = iter([False, False, True])
    assert mailer.wait_for_queue(
        60, empty=lambda: next(answers), clock=world.clock, sleep=world.sleep
    )
    assert world.now == 1000 + 2 * mailer.FLUSH_POLL
    assert not mailer.wait_for_queue(60, empty=lambda: False, clock=world.clock, sleep=world.sleep)
    assert mailer.wait_for_queue(60, empty=lambda: None, clock=world.clock, sleep=world.sleep)
    assert mailer.queue_empty("/nonexistent/postqueue") is None


def test_uptime_reads_as_an_admin_would() -> None:
    assert mailer.format_uptime(42.9) == "42 s"
    assert mailer.format_uptime(3 * 60 + 7) == "3 min 7 s"
    assert mailer.format_uptime(3600) == "1 h 0 min"
    assert mailer.format_uptime(2 * 86400 + 5) == "2 d 0 h 0 min"
