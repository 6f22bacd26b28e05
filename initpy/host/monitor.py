"""initpy-monitor: reboot the build host onto a new build or toolchain.

Runs on the booted OS, not in the initrd: systemd starts it as its own
user, `initpy-monitor` (`initpy-monitor.service`, written by
hooks/monitor.py), with the OS's python3 and
`initpy.runtime.layout.HOST_PYTHONPATH` as its path. Its records (what it
touches the world with, what it found) are in initpy.host.monitor_records.

**Its settings** are the files PID 1 left (initpy.host.settings); its
mails' words are in initpy.host.mailtext.

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

**The toolchain.** With `buildos.toolchain_url` set, each poll also reads
the toolchain's checksums file (after the build id: a new build reboots
first). The boot's own toolchain is the sha256 initpy-toolchain recorded
(`settings.TOOLCHAIN_RESULT`); without one (it failed, or has not run) the
first file read is the baseline. Another file is examined first
(initpy.host.toolchain_check, nothing run): all its files match, and it
mails and reboots as for a new build; else it is refused (one `<3>` line
and one mail per file's sha256, no reboot). A refused file is examined
again after `RECHECK_FIRST`, then after waits that double up to
`RECHECK_CAP` (its listed files may be fixed under the same sums): a pass
then reboots with the change mail; another refusal only logs. No answer is
a failed poll.

The first poll comes after U(0, 1) × `interval`, so hosts that boot
together (a power cut, a rollout) do not poll together. The jitter is
drawn anew for every wait, so phases never lock again.

**Status.** Every step is a line on stderr (the journal) and a STATUS= for
`systemctl status initpy-monitor`; errors and warnings carry the
journal's `<3>`/`<4>` priority prefixes. The build agent is not the
monitor's: it runs in a unit of its own (bbot-agent.service, or
initpy-agent.service for `initpy.monitor.agent`), under another uid.

**Watchdog.** Each turn of the loop, each status and each chunk of a new
toolchain's files sends WATCHDOG=1 (initpy.host.systemd.Watchdog), and no
nap is longer than half the unit's WatchdogSec=: a monitor that hangs, or
that something of its own uid stopped, is killed and restarted by systemd.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import signal
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

from initpy.cli import DEBUG_FLAG, handle
from initpy.host import mail as mailer
from initpy.host import mailtext, monitor_check, systemd, toolchain_check
from initpy.host.checksums import ChecksumsError, parse_checksums
from initpy.host.fetch import FetchError, parse_build_id
from initpy.host.monitor_records import (
    FETCH_TIMEOUT,
    MAX_NAP,
    Dependencies,
    LoopState,
    Outcome,
    Poll,
    log_to_stderr,
)
from initpy.host.settings import (
    BUILDOS_ENV,
    MONITOR_ENV,
    TOOLCHAIN_RESULT,
    Settings,
    load_settings,
    running_build_id,
    running_toolchain,
)
from initpy.runtime import layout

JITTER = 0.25  # every wait is its base times U(1 - JITTER, 1 + JITTER)
BACKOFF_CAP = 4  # a failing URL is tried again after at most 4 intervals (before jitter)
FAILING_MAIL_AFTER = 3600.0
# The same refused checksums file is examined again after an hour, then
# after waits that double up to a day (docs/toolchain.md says why).
RECHECK_FIRST = 3600.0
RECHECK_CAP = 86400.0


@dataclass
class Monitor:
    """The loop: its settings, its dependencies, and its state, each a record of its own."""

    settings: Settings
    running_id: str | None
    deps: Dependencies = field(default_factory=Dependencies)
    loop: LoopState = field(default_factory=LoopState)
    # The sha256 of the checksums file this boot's toolchain came from.
    running_toolchain: str | None = None

    # -- one poll ----------------------------------------------------------------

    def polls_build_id(self) -> bool:
        return self.settings.buildid_url is not None and self.running_id is not None

    def poll(self) -> Poll:
        """Fetch, compare, act: a change reboots, a failure never does."""
        loop = self.loop
        loop.polls += 1
        new_id = None
        if self.polls_build_id():
            assert self.settings.buildid_url is not None
            url = self.settings.buildid_url
            try:
                new_id = parse_build_id(self.deps.fetch(url, self.deps.fetch_timeout))
            except (FetchError, ValueError) as exc:
                return self._failed(url, f"{url}: {exc}")
        if new_id is not None and new_id != self.running_id:
            self._answered()
            self._changed(new_id)
            return Poll(Outcome.CHANGED, loop.summary, new_id)
        new_key, refused = None, None
        if self.settings.toolchain_url is not None:
            url = self.settings.toolchain_url
            try:
                body = self.deps.fetch_checksums(url, self.deps.fetch_timeout)
                new_key = hashlib.sha256(body).hexdigest()
                refused = self._judge(url, body, new_key)
            except (FetchError, OSError) as exc:
                return self._failed(url, f"{url}: {exc}", "toolchain URL")
        self._answered()
        if new_key is not None and refused is not None:
            return self._refused(new_key, refused, new_id)
        if new_key is not None and self.running_toolchain is None:
            self.running_toolchain = new_key
            self.deps.log(f"no toolchain recorded for this boot: {new_key[:12]} is the baseline")
        if new_key is not None and new_key != self.running_toolchain:
            self._toolchain_changed(new_key)
            return Poll(Outcome.CHANGED, loop.summary, new_id)
        current = []
        if new_id is not None:
            current.append(f"build {new_id[:12]}")
        if new_key is not None:
            current.append(f"toolchain {new_key[:12]}")
        loop.summary = " and ".join(current) + (
            " is current" if len(current) == 1 else " are current"
        )
        return Poll(Outcome.SAME, loop.summary, new_id)

    def _judge(self, url: str, body: bytes, key: str) -> str | None:
        """Why `body` may not be booted onto, or None; a refused file waits for its re-check."""
        loop = self.loop
        if key in (self.running_toolchain, loop.rebooting_to):
            return None
        if key == loop.refused_toolchain and self.deps.clock() < loop.recheck_at:
            return loop.refused_problem
        loop.rechecking = key == loop.refused_toolchain
        try:
            if self.running_toolchain is None:
                parse_checksums(body, url)  # the baseline: this boot's, no reboot to guard
            else:
                self._status(f"new toolchain {key[:12]}: fetching and verifying its files")
                toolchain_check.examine(
                    body,
                    url,
                    self.deps.run_dir,
                    self.deps.fetch_timeout,
                    progress=self.deps.watchdog.ping,
                )
        except ChecksumsError as exc:
            return f"the checksums file does not parse: {exc}"
        except toolchain_check.Refused as exc:
            return str(exc)
        return None

    def _refused(self, key: str, problem: str, new_id: str | None) -> Poll:
        """A checksums file that cannot be booted onto: one line, one mail, no reboot."""
        loop, url = self.loop, self.settings.toolchain_url
        running, now = self.running_toolchain or "none", self.deps.clock()
        if loop.refused_toolchain != key:
            loop.refused_toolchain, loop.refused_problem = key, problem
            loop.recheck_wait, loop.recheck_at = RECHECK_FIRST, now + RECHECK_FIRST
            self.deps.log(
                f"<3>new toolchain {key[:12]} at {url} refused: {problem}; nothing ran, "
                f"no reboot, still running toolchain {running[:12]}"
            )
            self._mail(mailtext.toolchain_refused(self._sender(), url, running, key, problem))
        elif loop.rechecking:  # examined again: the same outcome, so no mail
            loop.refused_problem, loop.rechecking = problem, False
            loop.recheck_wait = min(loop.recheck_wait * 2, RECHECK_CAP)
            loop.recheck_at = now + loop.recheck_wait
            self.deps.log(
                f"<4>toolchain {key[:12]} examined again, still refused: {problem}; "
                f"next look in {loop.recheck_wait / 3600:g} h"
            )
        loop.summary = f"toolchain {key[:12]} refused, running {running[:12]}: {problem}"
        return Poll(Outcome.REFUSED, loop.summary, new_id)

    def _answered(self) -> None:
        """A poll whose URLs all answered: the failures end."""
        loop = self.loop
        url, what = loop.failing_url, loop.failing_what
        if loop.failures:
            self.deps.log(f"{url} answers again after {loop.failures} failed poll(s)")
            if loop.failing_mailed:
                self._mail(mailtext.recovered(self._sender(), url, loop.failures, what))
        loop.failures, loop.failing_since, loop.failing_mailed = 0, None, False

    def _changed(self, new_id: str) -> None:
        assert self.running_id is not None
        change = mailtext.change(
            self._sender(), self.settings.buildid_url, self.running_id, new_id, self.deps.uptime()
        )
        self._reboot("build", self.settings.buildid_url, self.running_id, new_id, change)

    def _toolchain_changed(self, new_key: str) -> None:
        assert self.running_toolchain is not None
        url, old = self.settings.toolchain_url, self.running_toolchain
        change = mailtext.toolchain_change(self._sender(), url, old, new_key, self.deps.uptime())
        self._reboot("toolchain", url, old, new_key, change)

    def _reboot(self, what: str, url: str | None, old: str, new: str, change: EmailMessage) -> None:
        """Mail the admin once, then ask for the reboot (again, at each poll it has not come)."""
        loop, deps = self.loop, self.deps
        if loop.rebooting_to != new:
            loop.rebooting_to = new
            deps.log(
                f"new {what} at {url}: {new} (running {old}); mailing the admin, then rebooting"
            )
            self._status(f"new {what} {new[:12]} found; mailing the admin")
            if self._mail(change) and not deps.flush_mail():
                deps.log(
                    f"<4>the mail about {what} {new[:12]} is still queued after "
                    f"{mailer.FLUSH_TIMEOUT:g} s; rebooting anyway (postqueue -p says why)"
                )
        else:
            deps.log(f"<4>still running {what} {old[:12]}: asking for the reboot again")
        loop.summary = f"rebooting onto {what} {new[:12]} (running {old[:12]})"
        # Not STOPPING=1: systemd would take it as the service's own stop,
        # and kill the monitor if the reboot never came.
        self._status(loop.summary)
        try:
            deps.reboot(f"initpy-monitor: {what} {old} -> {new}")
            loop.reboots += 1
        except OSError as exc:
            deps.log(
                f"<3>cannot ask for a reboot: {exc}; is {systemd.RUN_DIR} there "
                "(RuntimeDirectory= of initpy-monitor.service)?"
            )

    def _failed(self, url: str, error: str, what: str = "build id URL") -> Poll:
        loop = self.loop
        now = self.deps.clock()
        loop.failures += 1
        loop.failing_url, loop.failing_what = url, what
        if loop.failing_since is None:
            loop.failing_since = now
        loop.last_error = error
        failing_for = now - loop.failing_since
        self.deps.log(
            f"<4>poll failed ({loop.failures} in a row, for {failing_for:.0f} s): {error}; "
            "no reboot"
        )
        if failing_for >= FAILING_MAIL_AFTER and not loop.failing_mailed:
            loop.failing_mailed = self._mail(
                mailtext.failing(
                    self._sender(),
                    url,
                    failing_for,
                    loop.failures,
                    loop.last_error,
                    self.running_id,
                    what,
                )
            )
        loop.summary = f"{what} failing ({loop.failures} in a row): {error}"
        return Poll(Outcome.FAILED, loop.summary)

    # -- timing ------------------------------------------------------------------

    def first_wait(self) -> float:
        return self.deps.rng.uniform(0.0, 1.0) * self.settings.interval

    def next_wait(self) -> float:
        """The wait after the last poll: the jittered interval, or the backoff."""
        loop, interval = self.loop, self.settings.interval
        base = min(interval * 2.0**loop.failures, interval * BACKOFF_CAP)
        wait = base * self.deps.rng.uniform(1 - JITTER, 1 + JITTER)
        if loop.failing_since is not None and not loop.failing_mailed:
            # Look again when the hour is up, so the mail leaves on time.
            due = loop.failing_since + FAILING_MAIL_AFTER - self.deps.clock()
            if due > 0:
                wait = min(wait, due)
        return wait

    # -- mail --------------------------------------------------------------------

    def _sender(self) -> mailtext.Sender:
        return mailtext.Sender(
            self.deps.user, self.deps.hostname, self.settings.admin_email or "root"
        )

    def _mail(self, message: EmailMessage) -> bool:
        try:
            self.deps.mail(message)
        except mailer.MailError as exc:
            self.deps.log(f"<3>mail to {message['To']} not sent: {exc}")
            return False
        self.deps.log(f"mailed {message['To']}: {message['Subject']}")
        return True

    # -- the loop ----------------------------------------------------------------

    def _status(self, text: str, ready: bool = False) -> None:
        """The STATUS= line: what the last poll found."""
        self.deps.watchdog.ping()
        self.deps.notify(("READY=1\n" if ready else "") + systemd.status(text))

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Poll until `stop()` says so (never, as a service)."""
        loop, deps = self.loop, self.deps
        url, interval = self.settings.buildid_url, self.settings.interval
        polling = self.polls_build_id() or self.settings.toolchain_url is not None
        now = deps.clock()
        next_poll = now + self.first_wait() if polling else float("inf")
        if not polling:
            loop.summary = "not polling: " + (
                "no buildos.buildid_url on the command line"
                if url is None
                else "the running image's build id is unknown"
            )
            deps.log(f"<4>{loop.summary}")
        else:
            if not self.polls_build_id():
                deps.log("<4>not polling the build id: no URL or no running id")
            urls = " and ".join(
                u
                for u in (url if self.polls_build_id() else None, self.settings.toolchain_url)
                if u
            )
            loop.summary = f"running build {self.running_id}; first poll in {next_poll - now:.0f} s"
            deps.log(f"polling {urls} every {interval:g} s (jitter ±{JITTER:.0%}); {loop.summary}")
        self._status(loop.summary, ready=True)
        while not stop():
            now = deps.clock()
            if now >= next_poll:
                result = self.poll()
                wait = self.next_wait()
                next_poll = deps.clock() + wait
                self._status(f"{result.detail}; next poll in {wait:.0f} s")
                continue
            deps.watchdog.ping()
            deps.sleep(max(0.0, min(next_poll - now, MAX_NAP, deps.watchdog.nap)))


class Stopped(BaseException):
    """SIGTERM: systemd stops the unit."""


def _stop(signum: int, frame: types.FrameType | None) -> None:
    raise Stopped


def main(argv: list[str] | None = None) -> int:
    """initpy-monitor's command: what escapes the loop is one error line and a
    hint in the journal (initpy.cli), the traceback with --debug."""
    return handle("initpy-monitor", _main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="initpy-monitor",
        description="Reboot this build host onto a new build or toolchain.",
    )
    parser.add_argument("--buildos-env", default=BUILDOS_ENV, help="default: %(default)s")
    parser.add_argument("--monitor-env", default=MONITOR_ENV, help="default: %(default)s")
    parser.add_argument("--manifest", default=layout.MANIFEST, help="default: %(default)s")
    parser.add_argument(
        "--toolchain-result",
        default=TOOLCHAIN_RESULT,
        help="initpy-toolchain's result, naming this boot's toolchain; default: %(default)s",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="poll once and say what the monitor would do (exit 0 unchanged, 1 unreachable, "
        "2 changed, 3 refused); mail nothing, reboot nothing",
    )
    parser.add_argument(DEBUG_FLAG, action="store_true", help="tracebacks for errors")
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
        user = "initpy-monitor"  # its unit's User= (hooks/monitor.py)
    if args.check:
        toolchain = running_toolchain(args.toolchain_result)
        return monitor_check.check(settings, running_id, toolchain, FETCH_TIMEOUT)
    monitor = Monitor(
        settings,
        running_id,
        Dependencies(user=user, watchdog=systemd.Watchdog(systemd.watchdog_interval())),
        running_toolchain=running_toolchain(args.toolchain_result),
    )
    signal.signal(signal.SIGTERM, _stop)
    try:
        monitor.run()
    except (Stopped, KeyboardInterrupt):
        log_to_stderr("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
