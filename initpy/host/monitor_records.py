"""The monitor loop's records: what it touches the world with, and what it found.

`Dependencies` is everything initpy.host.monitor's loop touches the world
with (fetches, mail, the reboot request, the clock, systemd's status and
watchdog), each injectable by a test; `LoopState` is what the polls so far
found and did; `Poll` is one poll's answer.
"""

from __future__ import annotations

import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from enum import StrEnum

from initpy.host import mail as mailer
from initpy.host import systemd
from initpy.host.checksums import fetch_checksums
from initpy.host.fetch import fetch

# A fetch's whole budget; a TFTP server that does not answer costs this much.
FETCH_TIMEOUT = 15.0
# The longest sleep, with a watchdog or without (a run by hand, a test):
# run's stop() is asked at least this often.
MAX_NAP = 60.0


class Outcome(StrEnum):
    SAME = "same"
    CHANGED = "changed"
    REFUSED = "refused"  # a new toolchain whose files do not match: no reboot
    FAILED = "failed"


@dataclass(frozen=True)
class Poll:
    outcome: Outcome
    detail: str
    build_id: str | None = None


def read_uptime(path: str = "/proc/uptime") -> float:
    try:
        with open(path) as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Dependencies:
    """Everything the loop touches the world with; tests inject each one."""

    fetch: Callable[[str, float], bytes] = fetch
    fetch_checksums: Callable[[str, float], bytes] = fetch_checksums
    reboot: Callable[[str], None] = systemd.request_reboot
    mail: Callable[[EmailMessage], None] = mailer.sendmail
    flush_mail: Callable[[], bool] = mailer.wait_for_queue
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    notify: Callable[[str], bool] = systemd.notify
    log: Callable[[str], None] = log_to_stderr
    uptime: Callable[[], float] = read_uptime
    hostname: str = field(default_factory=socket.gethostname)
    user: str = "initpy-monitor"
    fetch_timeout: float = FETCH_TIMEOUT
    run_dir: str = systemd.RUN_DIR  # where a new toolchain's files are verified
    # WATCHDOG=1 from the loop and a long transfer's chunks; none in a test
    # or a run by hand (initpy-monitor's command gives it the unit's).
    watchdog: systemd.Watchdog = field(default_factory=lambda: systemd.Watchdog(None))


@dataclass
class LoopState:
    """The record of the loop: what the polls so far found and did."""

    polls: int = 0
    failures: int = 0  # consecutive failed polls
    failing_since: float | None = None
    failing_mailed: bool = False
    last_error: str = ""
    failing_url: str | None = None  # the URL the last failed poll could not read
    failing_what: str = "build id URL"
    rebooting_to: str | None = None
    refused_toolchain: str | None = None  # the sha256 of the last checksums file refused
    refused_problem: str = ""
    recheck_at: float = 0.0  # the clock at which the refused file is examined again
    recheck_wait: float = 0.0
    rechecking: bool = False  # this poll examines the refused file again
    reboots: int = 0
    summary: str = "starting"  # what the last step found, for the log and STATUS=
