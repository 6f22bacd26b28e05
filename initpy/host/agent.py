"""The agent slot: the build agent (the spec's bbot), kept running by the monitor.

`initpy.monitor.agent=COMMAND` names a program of the image (an absolute
path, with arguments if quoted on the command line). The monitor starts it
once it is itself up (its unit is ordered after the network and postfix),
as its own child, so as the `build` user in `/build`, and starts it again
whenever it ends, whatever its exit status.

Why a child and not a unit of its own: starting a unit is a privileged
call (polkit and D-Bus, which a minimal image has not), while a child needs
nothing; it shares the monitor's cgroup, so `systemctl stop
initpy-monitor` and a reboot stop it too; its output goes to the journal
under the monitor's unit; and the restart law below is plain code that a
unit test drives with a stand-in agent. The price: restarting the monitor
restarts the agent.

The restart law: after an exit, wait `backoff` before the next start;
`backoff` starts at MIN_BACKOFF and doubles on every exit up to
MAX_BACKOFF, and falls back to MIN_BACKOFF when the agent had run
STABLE_AFTER seconds. So a crash loop costs one start a minute, and a
rare crash costs a second.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence

from initpy.runtime.exit_status import describe_exit

MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0
STABLE_AFTER = 60.0
# How often a running agent is looked at (Popen.poll: no syscall storm).
CHECK_EVERY = 1.0
STOP_TIMEOUT = 10.0

Spawn = Callable[[Sequence[str], Mapping[str, str]], "subprocess.Popen[bytes]"]


def _spawn(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    # Its own session: a signal meant for it does not reach the monitor.
    return subprocess.Popen(
        list(argv), env=dict(env), stdin=subprocess.DEVNULL, start_new_session=True
    )


class Agent:
    """One supervised command. `tick(now)` does what is due and says when to look again."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Callable[[str], None],
        *,
        spawn: Spawn = _spawn,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.log = log
        self.spawn = spawn
        base = dict(os.environ if env is None else env)
        # The agent must not speak for the monitor to systemd.
        base.pop("NOTIFY_SOCKET", None)
        self.env = base
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at = 0.0  # the first tick starts it
        self.backoff = MIN_BACKOFF
        self.starts = 0
        self.last_exit: str | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.argv[0])

    def tick(self, now: float) -> float:
        """Reap an ended agent, start one when due; the time of the next look."""
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return now + CHECK_EVERY
            ran = now - self.started_at
            if ran >= STABLE_AFTER:
                self.backoff = MIN_BACKOFF
            self.last_exit = describe_exit(code)
            self.log(
                f"agent {self.name} (pid {self.process.pid}) ended: {self.last_exit} "
                f"after {ran:.0f} s; starting it again in {self.backoff:g} s"
            )
            self.process = None
            self.restart_at = now + self.backoff
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        if now < self.restart_at:
            return self.restart_at
        try:
            self.process = self.spawn(self.argv, self.env)
        except OSError as exc:
            self.last_exit = f"cannot start: {exc.strerror or exc}"
            self.log(
                f"agent {self.argv[0]}: {self.last_exit}; trying again in {self.backoff:g} s "
                "(is initpy.monitor.agent a program of the image?)"
            )
            self.restart_at = now + self.backoff
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
            return self.restart_at
        self.starts += 1
        self.started_at = now
        self.log(
            f"agent {' '.join(self.argv)} started (pid {self.process.pid}, start {self.starts})"
        )
        return now + CHECK_EVERY

    def describe(self) -> str:
        if self.process is not None:
            return f"agent {self.name} running (pid {self.process.pid}, start {self.starts})"
        if self.last_exit is None:
            return f"agent {self.name} not started yet"
        return f"agent {self.name} restarting ({self.last_exit})"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after `timeout`: the monitor leaves no agent behind."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
