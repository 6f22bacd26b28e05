"""Part of the kernel seam: PID 1's child processes, from start to reaping.

Commands run to completion, the console's interactive shells, the daemons
that outlive the hand-off, and the reaping of the orphans PID 1 inherits:
`Processes` keeps the set of children in flight, so that the reaper never
takes the exit status a waiting `run()` is owed. `Kernel` (kernel.py) holds
one and answers for it; callers go through the Kernel (the fake kernel
reuses `signal_handlers`; the reaper's tests drive `Kernel.processes`).

A leaf: the standard library and initpy.runtime.record only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from initpy.runtime.record import frozen

SignalHandler = Callable[[int, FrameType | None], None]

# The CPU priority of spawn_daemon's processes (the boot runs at 0).
DAEMON_NICE = 10


@frozen
class Completed:
    """The outcome of an external command run through the seam."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@frozen
class ShellExit:
    """How an interactive shell on the console ended."""

    status: int
    idle_timeout: bool = False


class Processes:
    """PID 1's children: those in flight, and the orphans it reaps."""

    def __init__(self, watch_orphans: bool | None = None) -> None:
        self._children: set[int] = set()
        self._children_lock = threading.Lock()
        # -- speed: reap only after SIGCHLD ------------------------------------
        # Scanning /proc after every state cost tens of ms each under TCG.
        # PID 1 gets SIGCHLD whenever a child of its own or an adopted orphan
        # dies, so a flag set by the handler says when a scan can find
        # anything. Default: only as PID 1 (a handler is process-wide state).
        self._sigchld = threading.Event()
        self._watching = False
        if watch_orphans if watch_orphans is not None else os.getpid() == 1:
            try:
                signal.signal(signal.SIGCHLD, lambda _signo, _frame: self._sigchld.set())
                # SA_RESTART: a ctypes syscall (mount, finit_module) must not
                # fail with EINTR because some child died meanwhile.
                signal.siginterrupt(signal.SIGCHLD, False)
                self._watching = True
            except ValueError:  # not the main thread: scan every time instead
                pass

    def run(
        self,
        argv: Sequence[str],
        input: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        """Run a command to completion, capturing its output."""
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else None,
        )
        self.adopt(proc.pid)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        finally:
            self.release(proc.pid)
        return Completed(tuple(argv), proc.returncode, out, err)

    def run_shell(
        self, argv: Sequence[str], env: Mapping[str, str], idle_timeout: float | None = None
    ) -> ShellExit:
        """Run a program on the console until it ends, or the console is idle too long.

        The console's access time tells when it last saw input (as `w` does).
        """
        proc = subprocess.Popen(shell_argv(argv), env=dict(env), start_new_session=True)
        self.adopt(proc.pid)
        tty = _console_tty()
        last_input = time.time()
        try:
            while True:
                try:
                    status = proc.wait(timeout=1.0)
                    return ShellExit(status)
                except subprocess.TimeoutExpired:
                    pass
                self.reap_orphans()
                if idle_timeout is None:
                    continue
                if tty is not None:
                    try:
                        last_input = max(last_input, os.stat(tty).st_atime)
                    except OSError:
                        pass
                if time.time() - last_input > idle_timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return ShellExit(-signal.SIGKILL, idle_timeout=True)
        finally:
            self.release(proc.pid)

    def adopt(self, pid: int) -> None:
        """A child whose exit status someone will wait for: the reaper leaves it alone."""
        with self._children_lock:
            self._children.add(pid)

    def release(self, pid: int) -> None:
        """The child was waited for: no longer in flight."""
        with self._children_lock:
            self._children.discard(pid)

    def reap_orphans(self) -> list[int]:
        """Reap zombies that are not our own children in flight.

        As PID 1 we inherit every orphan. `waitpid(-1)` would also steal the
        exit status of a command that `run()` is waiting for, so only zombies
        not adopted by `run()` are reaped. `waitid(WNOWAIT)` names a zombie
        without reaping it: one syscall answers the usual case (the child
        that sent SIGCHLD was run()'s, and is reaped already). Only when the
        zombie it names is run()'s, which hides any others, are the zombies
        looked for in /proc, one file per process (2.4 ms natively for 100
        processes, 15 times that under TCG, after every state that ran a
        command).
        """
        reaped: list[int] = []
        if self._watching:
            if not self._sigchld.is_set():
                return reaped  # no child has died since the last scan
            self._sigchld.clear()  # before the scan: a death during it sets it again
        while True:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return reaped  # no children at all
            if found is None:
                return reaped  # children, but none has ended
            with self._children_lock:
                if found.si_pid in self._children:
                    break  # run()'s own: look past it in /proc
            try:
                if os.waitpid(found.si_pid, os.WNOHANG)[0] != found.si_pid:
                    break  # not reaped after all: never ask about it again and again
                reaped.append(found.si_pid)
            except ChildProcessError:
                pass  # reaped meanwhile by whoever waited for it
        try:
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return reaped
        me = os.getpid()
        for pid in pids:
            with self._children_lock:
                if pid in self._children:
                    continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) < 2 or fields[0] != b"Z" or int(fields[1]) != me:
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
            except ChildProcessError:
                pass
        return reaped

    def spawn_daemon(
        self,
        name: str,
        target: Callable[[], None],
        nice: int = DAEMON_NICE,
        joinable: bool = False,
    ) -> int:
        """Fork the daemon (Kernel.spawn_daemon says what it is); its pid."""
        pid = os.fork()
        if pid:
            if joinable:
                self.adopt(pid)
            return pid
        status = 0
        try:
            # PID 1's handlers are not for a daemon: SIGTERM must end it
            # (systemd's shutdown sends it), SIGINT must not reboot.
            for signo in signal_handlers(lambda: None):
                signal.signal(signo, signal.SIG_DFL)
            os.setsid()
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)
            except OSError:  # already nicer, without the right to go back up
                pass
            ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            target()
        except BaseException:  # noqa: B036 - the child must never return into the boot
            status = 1
        finally:
            os._exit(status)

    def join_daemon(self, pid: int) -> int:
        """Wait for a joinable daemon to end; its exit status (0: `target` returned)."""
        try:
            _, status = os.waitpid(pid, 0)
        finally:
            self.release(pid)
        return os.waitstatus_to_exitcode(status)


def signal_handlers(on_interrupt: Callable[[], None]) -> dict[int, SignalHandler]:
    """What each signal means to PID 1; `Kernel.take_signals` installs them.

    - SIGINT, what the kernel sends init for Ctrl-Alt-Del: `on_interrupt`
      (the driver reboots cleanly, as systemd does). CPython's own handler
      would raise KeyboardInterrupt anywhere in the boot.
    - SIGTERM, SIGHUP: nothing. A handler that does nothing, not SIG_IGN,
      which every child would inherit across exec.
    - Every other signal keeps SIG_DFL, which the kernel never delivers to
      init (SIGKILL and SIGSTOP only from an outer PID namespace).

    A forked copy of PID 1 that kept these handlers gets the default action.
    """
    owner = os.getpid()

    def interrupt(signo: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signo, signal.SIG_DFL)
            os.kill(os.getpid(), signo)
            return
        on_interrupt()

    def ignore(signo: int, frame: FrameType | None) -> None:
        pass

    return {signal.SIGINT: interrupt, signal.SIGTERM: ignore, signal.SIGHUP: ignore}


def _console_tty() -> str | None:
    """The terminal behind /dev/console (e.g. /dev/ttyS0), whose atime shows input."""
    try:
        with open("/sys/class/tty/console/active") as f:
            names = f.read().split()
    except OSError:
        names = []
    for path in ([f"/dev/{names[-1]}"] if names else []) + ["/dev/console"]:
        if os.path.exists(path):
            return path
    return None


def shell_argv(argv: Sequence[str]) -> list[str]:
    """Run a shell through busybox cttyhack, so it gets a controlling terminal.

    Without one, Ctrl-C would not reach commands typed in a rescue shell.
    """
    if os.path.exists("/bin/busybox") and argv and argv[0] == "/bin/sh":
        return ["/bin/busybox", "cttyhack", *argv]
    return list(argv)
