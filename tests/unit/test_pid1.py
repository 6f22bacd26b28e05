"""PID 1 never ends: signals, exceptions anywhere, a break shell that fails.

Issue 9, findings 4 and 6. The whole of driver.main runs on the fake
kernel (with the hooks given here instead of a hooks folder); a signal is
delivered through the fake kernel's `deliver`, which runs the handler the
real seam would have installed, or CPython's KeyboardInterrupt when none
was. Whatever happens, main() may only end the way a real machine does:
by the fake kernel's reboot or exec (Halted).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_mock import MockerFixture

from initpy.devtools.fake import FakeKernel, HandedOff, Rebooted
from initpy.runtime import driver
from initpy.runtime.hook import BootContext, Hook, State, build_registry
from initpy.runtime.kernel import Halted, Kernel, ShellExit
from tests.unit.conftest import make_executable, read_report


def console(kernel: FakeKernel) -> str:
    return "\n".join(kernel.console_lines)


def boot_main(kernel: FakeKernel, hooks: Sequence[Hook] = ()) -> Halted:
    """driver.main, the whole of PID 1's life, over these hooks; how it ended."""
    registry = build_registry(hooks)
    with mock.patch.object(driver, "load_registry", return_value=registry):
        try:
            driver.main(kernel, ["/nonexistent-hooks"])
        except Halted as ended:
            return ended
        except BaseException as exc:  # noqa: B036 - a KeyboardInterrupt would stop pytest
            pytest.fail(f"{type(exc).__name__}: {exc!r} left main(): PID 1 would exit")
    pytest.fail("main() returned: PID 1 would exit")


def one_state(name: str, run: Callable[[BootContext], str]) -> Hook:
    return Hook(name, f"the {name} hook", (State(name, run, f"runs {name}"),))


def sigint(kernel: FakeKernel) -> Callable[..., ShellExit]:
    def deliver(*args: object, **kwargs: object) -> ShellExit:
        kernel.deliver(signal.SIGINT)
        return ShellExit(0)

    return deliver


# -- finding 4: SIGINT is a clean reboot -------------------------------------------


def test_sigint_during_a_state_reboots_cleanly(tmp_path: os.PathLike[str]) -> None:
    k = FakeKernel(root=str(tmp_path), cmdline="initpy.rescue=poweroff")
    make_executable(k, "/sbin/init")
    trail: list[str] = []

    def interrupted(ctx: BootContext) -> str:
        k.deliver(signal.SIGINT)  # Ctrl-Alt-Del, in the middle of a state
        trail.append("state went on")
        return "done"

    ended = boot_main(k, [one_state("work", interrupted), one_state("later", interrupted)])
    assert isinstance(ended, Rebooted) and ended.how == "reboot"
    assert "initpy: rescue: SIGINT (Ctrl-Alt-Del): rebooting cleanly" in console(k)
    assert trail == [] and k.syscalls("shell") == [] and k.syscalls("execve") == []
    assert k.syscalls("take_signals") and k.calls.index(("take_signals",)) == 0


def test_sigint_twice_in_the_rescue_shell_and_the_retry_sleep(
    tmp_path: os.PathLike[str], mocker: MockerFixture
) -> None:
    """A SIGINT in the shell's wait reboots; that fails; one more changes nothing."""
    k = FakeKernel(root=str(tmp_path), cmdline="initpy.exec=/nope")
    mocker.patch.object(k, "run_shell", side_effect=sigint(k))
    mocker.patch.object(k, "sleep", side_effect=sigint(k))
    reboot = mocker.patch.object(
        k, "reboot", side_effect=[OSError(errno.EPERM, "denied"), Rebooted("reboot")]
    )
    ended = boot_main(k)
    assert isinstance(ended, Rebooted)
    assert [c.args for c in reboot.call_args_list] == [("reboot",), ("reboot",)]
    assert console(k).count("SIGINT (Ctrl-Alt-Del)") == 1
    assert "reboot failed: [Errno 1] denied; retrying in 10 s" in console(k)
    assert k.run_shell.call_count == 1  # type: ignore[attr-defined]  # no second shell


def test_sigint_during_halts_sleep_does_not_end_pid1(
    tmp_path: os.PathLike[str], mocker: MockerFixture
) -> None:
    k = FakeKernel(root=str(tmp_path), cmdline="initpy.rescue=poweroff initpy.exec=/nope")
    mocker.patch.object(k, "sleep", side_effect=sigint(k))
    reboot = mocker.patch.object(
        k, "reboot", side_effect=[OSError(errno.EIO, "refused"), Rebooted("reboot")]
    )
    ended = boot_main(k)
    assert isinstance(ended, Rebooted)
    # poweroff failed; Ctrl-Alt-Del during the wait asked for a reboot.
    assert [c.args for c in reboot.call_args_list] == [("poweroff",), ("reboot",)]
    assert k.syscalls("shell") == []


def test_sigterm_and_sighup_mean_nothing(kernel: FakeKernel) -> None:
    seen: list[str] = []

    def signalled(ctx: BootContext) -> str:
        kernel.deliver(signal.SIGTERM)
        kernel.deliver(signal.SIGHUP)
        kernel.deliver(signal.SIGUSR1)  # SIG_DFL: never delivered to init
        seen.append("went on")
        return "done"

    ended = boot_main(kernel, [one_state("work", signalled)])
    assert isinstance(ended, HandedOff)
    assert seen == ["went on"]
    assert read_report(kernel)["outcome"] == "handoff"


# -- finding 4: no exception path leaves main() -------------------------------------


class Stray(BaseException):
    """Not an Exception: what a careless `raise` or a library might throw."""


SEAM_METHODS = (
    "take_signals",
    "getpid",
    "uptime",
    "console",
    "kmsg",
    "environ",
    "exists",
    "read_text",
    "mkdir",
    "write_atomic",
    "run_shell",
    "sleep",
    "reboot",
)
STRAYS: tuple[Callable[[], BaseException], ...] = (
    KeyboardInterrupt,
    lambda: SystemExit(2),
    Stray,
    lambda: GeneratorExit(),
)


def break_seam(kernel: FakeKernel, faults: dict[str, set[int]]) -> None:
    """Make kernel.METHOD raise a BaseException at the listed calls (0-based)."""
    for name, calls in faults.items():
        real = getattr(kernel, name)
        counter = iter(range(1_000_000))

        def faulty(
            *args: Any, _real: Any = real, _calls: set[int] = calls, _n: Any = counter, **kw: Any
        ) -> Any:
            index = next(_n)
            if index in _calls:
                raise STRAYS[index % len(STRAYS)]()
            return _real(*args, **kw)

        setattr(kernel, name, faulty)


@pytest.mark.parametrize("method", SEAM_METHODS)
def test_a_base_exception_from_any_seam_call_never_leaves_main(
    tmp_path: os.PathLike[str], method: str
) -> None:
    k = FakeKernel(root=str(tmp_path), cmdline="initpy.exec=/nope initpy.rescue_timeout=60")
    break_seam(k, {method: {0, 1, 2, 3}})
    ended = boot_main(k, [one_state("work", lambda ctx: "done")])
    assert isinstance(ended, Rebooted)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.sampled_from(SEAM_METHODS),
        st.sets(st.integers(min_value=0, max_value=12), max_size=5),
        max_size=4,
    ),
    st.sampled_from(["initpy.exec=/nope", "initpy.exec=/nope initpy.rescue=poweroff", ""]),
)
def test_no_pattern_of_stray_exceptions_leaves_main(
    tmp_path_factory: pytest.TempPathFactory, faults: dict[str, set[int]], cmdline: str
) -> None:
    k = FakeKernel(root=str(tmp_path_factory.mktemp("root")), cmdline=cmdline)
    make_executable(k, "/sbin/init")
    break_seam(k, faults)
    ended = boot_main(k, [one_state("work", lambda ctx: "done")])
    assert isinstance(ended, Rebooted | HandedOff)


def test_a_state_raising_keyboard_interrupt_follows_the_rescue_policy(
    tmp_path: os.PathLike[str],
) -> None:
    k = FakeKernel(root=str(tmp_path), cmdline="initpy.rescue=poweroff")

    def interrupted(ctx: BootContext) -> str:
        raise KeyboardInterrupt

    ended = boot_main(k, [one_state("work", interrupted)])
    assert isinstance(ended, Rebooted) and ended.how == "poweroff"
    assert "initpy: rescue: work: unexpected error: KeyboardInterrupt" in console(k)


# -- finding 6: a break shell that cannot start -------------------------------------


def test_a_break_shell_that_cannot_start_follows_the_rescue_policy(
    tmp_path: os.PathLike[str],
) -> None:
    k = FakeKernel(
        root=str(tmp_path),
        cmdline="initpy.break=work initpy.rescue=poweroff",
        failures={"shell": {"/bin/sh": errno.ENOENT}},
    )
    make_executable(k, "/sbin/init")
    ended = boot_main(k, [one_state("work", lambda ctx: "done")])
    assert isinstance(ended, Rebooted) and ended.how == "poweroff"
    states = read_report(k)["states"]
    assert isinstance(states, list) and "work" not in [s["name"] for s in states]
    assert "initpy: rescue: work: break: cannot start /bin/sh" in console(k)
    assert "initpy: rescue: fix: " in console(k)
    report = read_report(k)
    assert report["outcome"] == "rescue"
    assert str(report["reason"]).startswith("work: break: cannot start /bin/sh")


def test_a_break_shell_that_cannot_start_gives_the_rescue_shell_its_try(
    tmp_path: os.PathLike[str],
) -> None:
    k = FakeKernel(
        root=str(tmp_path),
        cmdline="initpy.break=work",
        failures={"shell": {"/bin/sh": errno.ENOENT}},
    )
    ended = boot_main(k, [one_state("work", lambda ctx: "done")])
    assert isinstance(ended, Rebooted) and ended.how == "reboot"
    assert len(k.syscalls("shell")) == 2  # the break's, then the rescue's
    assert "cannot start /bin/sh" in console(k) and ("sleep", 30) in k.calls


# -- the real seam: handlers in this very process ------------------------------------


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for signo, handler in saved.items():
        signal.signal(signo, handler)


def test_the_real_seam_turns_sigint_into_the_callback(restore_signals: None) -> None:
    interrupts: list[str] = []
    Kernel().take_signals(lambda: interrupts.append("SIGINT"))
    os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt with CPython's handler
    os.kill(os.getpid(), signal.SIGTERM)  # the end of this process with SIG_DFL
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(100):  # the handlers run in the main thread, between bytecodes
        if interrupts:
            break
        time.sleep(0.01)
    assert interrupts == ["SIGINT"]
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)


def test_a_daemon_forked_by_pid1_dies_on_sigterm(
    restore_signals: None, tmp_path: os.PathLike[str]
) -> None:
    """The handlers are PID 1's: the DHCP renewer must still stop when systemd says so."""
    k = Kernel()
    k.take_signals(lambda: None)
    ready = os.path.join(str(tmp_path), "ready")

    def daemon() -> None:
        open(ready, "w").close()
        while True:
            signal.pause()

    pid = k.spawn_daemon("initpy-test", daemon)
    try:
        for _ in range(500):
            if os.path.exists(ready):
                break
            time.sleep(0.01)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_the_hand_off_starts_its_program_with_no_signal_ignored_or_blocked(
    tmp_path: os.PathLike[str],
) -> None:
    """CPython ignores SIGPIPE and SIGXFSZ; exec would pass that on to systemd."""
    out = os.path.join(str(tmp_path), "status")
    script = textwrap.dedent(
        f"""
        import signal
        from initpy.runtime.kernel import Kernel
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
        report = "grep -E '^Sig(Ign|Blk)' /proc/self/status > {out}"
        Kernel().execve("/bin/sh", ["sh", "-c", report], {{}})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    fields = dict(line.split(":\t") for line in open(out).read().splitlines())
    assert int(fields["SigIgn"], 16) == 0, fields
    assert int(fields["SigBlk"], 16) == 0, fields


def test_the_entry_point_never_returns_even_when_the_driver_does(
    tmp_path: os.PathLike[str],
) -> None:
    """entry.main's last resort: reboot, retry, forever (here: until the third try)."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from initpy.runtime import entry, kernel
        tries = []
        def reboot(self, how):
            tries.append(how)
            print("reboot", how, flush=True)
            if len(tries) == 3:
                os._exit(0)
            raise KeyboardInterrupt
        def broken_driver(k):
            raise SystemExit(2)
        kernel.Kernel.reboot = reboot
        entry.boot_main = broken_driver
        entry.os.getpid = lambda: 1
        time.sleep = lambda seconds: None
        entry.main()
        print("returned", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.stdout.splitlines() == ["reboot reboot"] * 3, done.stderr
    assert done.returncode == 0
