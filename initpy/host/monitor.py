"""initpy-monitor: reboot the build host onto a new build; keep the build agent running.

Runs on the booted OS, not in the initrd: systemd starts it as the `build`
user (`initpy-monitor.service`, written by hooks/monitor.py), with the
OS's python3 and `initpy.runtime.layout.HOST_PYTHONPATH` as its path.

**Where its settings come from.** PID 1 parsed the kernel command line
once (initpy.runtime.cmdline: the kernel's quoting rules, checked values,
warnings in the boot report) and left the values in two files, which the
monitor reads and nothing else: `buildos.env` (hooks/services:
`BUILDOS_BUILDID_URL`, `BUILDOS_ADMIN_EMAIL`) and `monitor.env`
(hooks/monitor.py: `INITPY_MONITOR_INTERVAL`, `INITPY_MONITOR_AGENT`).
Reading /proc/cmdline again would be a second parser that could disagree
with the first. Each line is `KEY=VALUE`, the value verbatim.

**The loop.** It compares the build id at `buildos.buildid_url` with the
running image's (the manifest mkinitrd packed, `layout.MANIFEST`):

- the same: nothing; the next poll after `interval` × U(0.75, 1.25);
- another valid id (64 hex digits): mail the admin (old id, new id,
  uptime) through the local MTA, let the queue drain, and reboot through
  systemd (`systemd.request_reboot`, injectable). "Another", not "newer":
  putting the previous build back rolls the fleet back the same way;
- no answer, a timeout, an empty or malformed answer: never a reboot. It
  is logged, the wait grows (`interval` × 2^failures, at most
  4 × `interval`, with the same jitter), and when the URL has failed for
  an hour without a success between, the admin gets one mail; the next
  one only after a success and a new hour of failures.

The first poll comes after U(0, 1) × `interval`, so hosts that boot
together (a power cut, a rollout) do not poll together. The jitter is
drawn anew for every wait, so phases never lock again.

**Status.** Every step is a line on stderr (the journal) and a STATUS= for
`systemctl status initpy-monitor`; errors and warnings carry the
journal's `<3>`/`<4>` priority prefixes.
"""

from __future__ import annotations

import argparse
import getpass
import random
import shlex
import signal
import socket
import sys
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from enum import StrEnum

from initpy.host import agent as agent_slot
from initpy.host import mail as mailer
from initpy.host import systemd
from initpy.host.fetch import FetchError, fetch, parse_build_id
from initpy.runtime import layout

# The files PID 1 writes (hooks/services, hooks/monitor.py).
BUILDOS_ENV = layout.BUILDOS_ENV
MONITOR_ENV = layout.MONITOR_ENV
DEFAULT_INTERVAL = 600.0
MIN_INTERVAL = 1.0
JITTER = 0.25  # every wait is its base times U(1 - JITTER, 1 + JITTER)
BACKOFF_CAP = 4  # a failing URL is tried again after at most 4 intervals (before jitter)
FAILING_MAIL_AFTER = 3600.0
# A fetch's whole budget; a TFTP server that does not answer costs this much.
FETCH_TIMEOUT = 15.0
# The longest sleep: the monitor looks at its agent and signals this often.
MAX_NAP = 60.0


class Outcome(StrEnum):
    SAME = "same"
    CHANGED = "changed"
    FAILED = "failed"


@dataclass(frozen=True)
class Settings:
    """What PID 1 left for the monitor."""

    buildid_url: str | None = None
    admin_email: str | None = None
    interval: float = DEFAULT_INTERVAL
    agent: tuple[str, ...] = ()


@dataclass(frozen=True)
class Poll:
    outcome: Outcome
    detail: str
    build_id: str | None = None


def read_env_file(path: str) -> dict[str, str]:
    """`KEY=VALUE` lines, each value unquoted as a shell would; a missing file is empty.

    PID 1 writes them with initpy.runtime.etc.env_file (shlex-quoted).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    found = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            try:
                words = shlex.split(value)
            except ValueError:  # unbalanced quotes: not ours; keep it as written
                words = [value]
            found[key.strip()] = words[0] if len(words) == 1 else value
    return found


def load_settings(
    buildos_env: str = BUILDOS_ENV, monitor_env: str = MONITOR_ENV
) -> tuple[Settings, list[str]]:
    """The settings, and the problems found in them (each already defaulted)."""
    buildos, own = read_env_file(buildos_env), read_env_file(monitor_env)
    problems = []
    interval = DEFAULT_INTERVAL
    raw = own.get("INITPY_MONITOR_INTERVAL")
    if raw:
        try:
            interval = float(raw)
            if not interval >= MIN_INTERVAL:
                raise ValueError
        except ValueError:
            interval = DEFAULT_INTERVAL
            problems.append(
                f"{monitor_env}: INITPY_MONITOR_INTERVAL={raw!r} is not a number of seconds "
                f">= {MIN_INTERVAL:g}; using {DEFAULT_INTERVAL:g}"
            )
    agent: tuple[str, ...] = ()
    raw = own.get("INITPY_MONITOR_AGENT")
    if raw:
        try:
            agent = tuple(shlex.split(raw))
        except ValueError as exc:
            problems.append(f"{monitor_env}: INITPY_MONITOR_AGENT={raw!r}: {exc}; no agent")
    return (
        Settings(
            buildid_url=buildos.get("BUILDOS_BUILDID_URL") or None,
            admin_email=buildos.get("BUILDOS_ADMIN_EMAIL") or None,
            interval=interval,
            agent=agent,
        ),
        problems,
    )


def running_build_id(manifest: str = layout.MANIFEST) -> tuple[str | None, str]:
    """The running image's build id from its manifest, or None and why not."""
    try:
        with open(manifest, encoding="utf-8") as f:
            build_id = layout.Manifest.from_json(f.read()).build_id
    except OSError as exc:
        return None, f"{manifest}: {exc.strerror or exc}"
    except layout.ManifestError as exc:
        return None, f"{manifest}: {exc}"
    try:
        return parse_build_id(build_id.encode()), ""
    except ValueError as exc:
        return None, f"{manifest}: build_id {exc}"


def read_uptime(path: str = "/proc/uptime") -> float:
    try:
        with open(path) as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Monitor:
    """The loop's state and its actions; everything that touches the world is injected."""

    settings: Settings
    running_id: str | None
    fetch: Callable[[str, float], bytes] = fetch
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
    user: str = "build"
    agent: agent_slot.Agent | None = None
    fetch_timeout: float = FETCH_TIMEOUT
    # The record of the loop.
    polls: int = 0
    failures: int = 0  # consecutive failed polls
    failing_since: float | None = None
    failing_mailed: bool = False
    last_error: str = ""
    rebooting_to: str | None = None
    reboots: int = 0
    state: str = "starting"
    status_text: str = ""
    agent_text: str = ""

    # -- one poll ----------------------------------------------------------------

    def poll(self) -> Poll:
        """Fetch, compare, act: a change reboots, a failure never does."""
        assert self.settings.buildid_url is not None and self.running_id is not None
        self.polls += 1
        url = self.settings.buildid_url
        try:
            answer = self.fetch(url, self.fetch_timeout)
            new_id = parse_build_id(answer)
        except (FetchError, ValueError) as exc:
            return self._failed(f"{url}: {exc}")
        if self.failures:
            self.log(f"{url} answers again after {self.failures} failed poll(s)")
            if self.failing_mailed:
                self._mail(self._recovered_message())
        self.failures, self.failing_since, self.failing_mailed = 0, None, False
        if new_id == self.running_id:
            self.state = f"build {self.running_id[:12]} is current"
            return Poll(Outcome.SAME, self.state, new_id)
        self._changed(new_id)
        return Poll(Outcome.CHANGED, self.state, new_id)

    def _changed(self, new_id: str) -> None:
        assert self.running_id is not None
        if self.rebooting_to != new_id:
            self.rebooting_to = new_id
            self.log(
                f"new build at {self.settings.buildid_url}: {new_id} "
                f"(running {self.running_id}); mailing the admin, then rebooting"
            )
            self._status(f"new build {new_id[:12]} found; mailing the admin")
            if self._mail(self._change_message(new_id)) and not self.flush_mail():
                self.log(
                    f"<4>the mail about build {new_id[:12]} is still queued after "
                    f"{mailer.FLUSH_TIMEOUT:g} s; rebooting anyway (postqueue -p says why)"
                )
        else:
            self.log(f"<4>still running {self.running_id[:12]}: asking for the reboot again")
        self.state = f"rebooting onto build {new_id[:12]} (running {self.running_id[:12]})"
        # Not STOPPING=1: systemd would take it as the service's own stop,
        # and kill the monitor if the reboot never came.
        self._status(self.state)
        try:
            self.reboot(f"initpy-monitor: build {self.running_id} -> {new_id}")
            self.reboots += 1
        except OSError as exc:
            self.log(
                f"<3>cannot ask for a reboot: {exc}; is {systemd.RUN_DIR} there "
                "(RuntimeDirectory= of initpy-monitor.service)?"
            )

    def _failed(self, error: str) -> Poll:
        now = self.clock()
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
        self.last_error = error
        failing_for = now - self.failing_since
        self.log(
            f"<4>poll failed ({self.failures} in a row, for {failing_for:.0f} s): {error}; "
            "no reboot"
        )
        if failing_for >= FAILING_MAIL_AFTER and not self.failing_mailed:
            self.failing_mailed = self._mail(self._failing_message(failing_for))
        self.state = f"build id URL failing ({self.failures} in a row): {error}"
        return Poll(Outcome.FAILED, self.state)

    # -- timing ------------------------------------------------------------------

    def first_wait(self) -> float:
        return self.rng.uniform(0.0, 1.0) * self.settings.interval

    def next_wait(self) -> float:
        """The wait after the last poll: the jittered interval, or the backoff."""
        interval = self.settings.interval
        base = min(interval * 2.0**self.failures, interval * BACKOFF_CAP)
        wait = base * self.rng.uniform(1 - JITTER, 1 + JITTER)
        if self.failing_since is not None and not self.failing_mailed:
            # Look again when the hour is up, so the mail leaves on time.
            due = self.failing_since + FAILING_MAIL_AFTER - self.clock()
            if due > 0:
                wait = min(wait, due)
        return wait

    # -- mail --------------------------------------------------------------------

    def _recipient(self) -> str:
        # Without buildos.admin_email root's mail stays on the host (or goes
        # where the image's aliases say).
        return self.settings.admin_email or "root"

    def _mail(self, message: EmailMessage) -> bool:
        try:
            self.mail(message)
        except mailer.MailError as exc:
            self.log(f"<3>mail to {message['To']} not sent: {exc}")
            return False
        self.log(f"mailed {message['To']}: {message['Subject']}")
        return True

    def _change_message(self, new_id: str) -> EmailMessage:
        uptime = mailer.format_uptime(self.uptime())
        return mailer.message(
            self.user,
            self._recipient(),
            f"{self.hostname}: new build {new_id[:12]}, rebooting",
            f"The build id at {self.settings.buildid_url} changed; {self.hostname} reboots "
            "onto the new build now.\n\n"
            f"old build id: {self.running_id}\n"
            f"new build id: {new_id}\n"
            f"uptime:       {uptime}\n",
        )

    def _failing_message(self, failing_for: float) -> EmailMessage:
        return mailer.message(
            self.user,
            self._recipient(),
            f"{self.hostname}: build id URL failing for {mailer.format_uptime(failing_for)}",
            f"{self.hostname} cannot read its build id URL, so it cannot follow a new "
            "build; it keeps running the build it has, and keeps trying.\n\n"
            f"URL:          {self.settings.buildid_url}\n"
            f"failing for:  {mailer.format_uptime(failing_for)} ({self.failures} polls)\n"
            f"last error:   {self.last_error}\n"
            f"running:      {self.running_id}\n\n"
            "No other mail about this comes until the URL has answered again.\n",
        )

    def _recovered_message(self) -> EmailMessage:
        return mailer.message(
            self.user,
            self._recipient(),
            f"{self.hostname}: build id URL answers again",
            f"{self.settings.buildid_url} answers again after {self.failures} failed polls.\n",
        )

    # -- the loop ----------------------------------------------------------------

    def _status(self, text: str, ready: bool = False) -> None:
        """The STATUS= line: what the last poll found, and the agent's state."""
        self.status_text = text
        if self.agent is not None:
            self.agent_text = self.agent.describe()
            text = f"{text}; {self.agent_text}"
        self.notify(("READY=1\n" if ready else "") + systemd.status(text))

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Poll and supervise until `stop()` says so (never, as a service)."""
        url, interval = self.settings.buildid_url, self.settings.interval
        polling = url is not None and self.running_id is not None
        now = self.clock()
        next_poll = now + self.first_wait() if polling else float("inf")
        if not polling:
            self.state = "not polling: " + (
                "no buildos.buildid_url on the command line"
                if url is None
                else "the running image's build id is unknown"
            )
            self.log(f"<4>{self.state}")
        else:
            self.state = f"running build {self.running_id}; first poll in {next_poll - now:.0f} s"
            self.log(f"polling {url} every {interval:g} s (jitter ±{JITTER:.0%}); {self.state}")
        self._status(self.state, ready=True)
        while not stop():
            now = self.clock()
            if now >= next_poll:
                result = self.poll()
                wait = self.next_wait()
                next_poll = self.clock() + wait
                self._status(f"{result.detail}; next poll in {wait:.0f} s")
                continue
            wake = next_poll
            if self.agent is not None:
                wake = min(wake, self.agent.tick(now))
                if self.agent.describe() != self.agent_text:
                    self._status(self.status_text)
            self.sleep(max(0.0, min(wake - now, MAX_NAP)))


class Stopped(BaseException):
    """SIGTERM: systemd stops the unit."""


def _stop(signum: int, frame: types.FrameType | None) -> None:
    raise Stopped


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="initpy-monitor",
        description="Reboot this build host onto a new build; keep the build agent running.",
    )
    parser.add_argument("--buildos-env", default=BUILDOS_ENV, help="default: %(default)s")
    parser.add_argument("--monitor-env", default=MONITOR_ENV, help="default: %(default)s")
    parser.add_argument("--manifest", default=layout.MANIFEST, help="default: %(default)s")
    parser.add_argument(
        "--check",
        action="store_true",
        help="poll once and say what the monitor would do; mail nothing, reboot nothing",
    )
    args = parser.parse_args(argv)
    settings, problems = load_settings(args.buildos_env, args.monitor_env)
    for problem in problems:
        log_to_stderr(f"<4>{problem}")
    running_id, why = running_build_id(args.manifest)
    if running_id is None:
        log_to_stderr(f"<3>no build id for the running image: {why}; not polling")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "build"
    if args.check:
        return _check(settings, running_id)
    agent = agent_slot.Agent(settings.agent, log_to_stderr, env=env) if settings.agent else None
    if agent is None:
        log_to_stderr("no initpy.monitor.agent: no agent to run")
    monitor = Monitor(settings, running_id, user=user, agent=agent)
    signal.signal(signal.SIGTERM, _stop)
    try:
        monitor.run()
    except (Stopped, KeyboardInterrupt):
        log_to_stderr("stopping")
    finally:
        if agent is not None:
            agent.stop()
    return 0


def _check(settings: Settings, running_id: str | None) -> int:
    """--check: 0 same build, 1 a failure (or nothing to poll), 2 another build."""
    print(f"running build: {running_id or 'unknown'}")
    if settings.buildid_url is None or running_id is None:
        print("not polling: " + ("no buildos.buildid_url" if running_id else "no running id"))
        return 1
    try:
        new_id = parse_build_id(fetch(settings.buildid_url, FETCH_TIMEOUT))
    except (FetchError, ValueError) as exc:
        print(f"{settings.buildid_url}: {exc}: the monitor would log it and wait longer")
        return 1
    print(f"{settings.buildid_url}: {new_id}")
    if new_id == running_id:
        print("the same build: nothing to do")
        return 0
    print("another build: the monitor would mail the admin and reboot")
    return 2


if __name__ == "__main__":
    sys.exit(main())
