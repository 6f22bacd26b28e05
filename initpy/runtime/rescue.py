"""Rescue: what a failure does, and how PID 1 ends when it cannot boot.

A failed state, a broken hook or a stray exception ends here. `rescue`
tells the operator the reason and the fix (`initpy: rescue:` lines), keeps
the report, lets the hooks say their word, and by `initpy.rescue` and the
loop guard (failed_boots.py) offers a shell, reboots or powers off; a host
the guard keeps in rescue boots again once its console has been idle for
the guard's growing wait. `halt`
retries forever: PID 1 never returns. `ctrl_alt_del` is the same clean
reboot for the kernel's SIGINT.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import NoReturn

from initpy.runtime import cmdline, failed_boots
from initpy.runtime.cmdline import Parameter, spoken
from initpy.runtime.failed_boots import FAILED_BOOTS, GUARD_RETRY, MAX_FAILED_BOOTS
from initpy.runtime.handoff import clean_environment
from initpy.runtime.hook import RESCUE, BootContext
from initpy.runtime.kernel import Halted, Kernel
from initpy.runtime.report import Outcome, Report, printable


class RescuePolicy(StrEnum):
    """What a failure does."""

    SHELL = "shell"
    REBOOT = "reboot"
    POWEROFF = "poweroff"


def _rescue_policy(raw: str | None) -> RescuePolicy:
    return RescuePolicy(cmdline.choice(*RescuePolicy)(raw))


RESCUE_POLICY: Parameter[RescuePolicy] = Parameter(
    "initpy.rescue",
    _rescue_policy,
    RescuePolicy.SHELL,
    "what a failure does: shell (then reboot when it exits), reboot or poweroff",
    "initpy.rescue=reboot",
)


def _rescue_timeout(raw: str | None) -> float | None:
    return cmdline.seconds(1, 7 * 86400)(raw)


RESCUE_TIMEOUT: Parameter[float | None] = Parameter(
    "initpy.rescue_timeout",
    _rescue_timeout,
    None,
    "seconds a rescue shell may sit idle before the host reboots",
    "initpy.rescue_timeout=600",
)
DEBUG: Parameter[bool] = Parameter(
    "initpy.debug",
    cmdline.flag,
    False,
    "show tracebacks on the console",
    "initpy.debug",
)


def rescue(
    kernel: Kernel,
    report: Report,
    ctx: BootContext | None,
    reason: str,
    fix: str,
    exc: BaseException | None = None,
) -> NoReturn:
    """Tell the operator, keep the report, run the policy; never returns.

    Whatever goes wrong on the way (the console, the report, the shell, a
    stray exception) only shortens the way to `halt`.
    """
    policy = RescuePolicy.SHELL
    if ctx is not None:
        try:
            policy = ctx.value(RESCUE_POLICY)
        except Exception:  # a broken config: the default policy stands
            pass
    guard = failed_boots.decide(None, 0)
    if ctx is not None:
        try:
            guard = failed_boots.decide(
                ctx.get(FAILED_BOOTS, None), ctx.value(MAX_FAILED_BOOTS), ctx.value(GUARD_RETRY)
            )
        except Exception:  # a broken config: no guard, the policy stands
            pass
    # The guard stops a reboot, not a power-off: a host switched off does not loop.
    stays = guard.stays and policy != RescuePolicy.POWEROFF
    left = guarded(lambda: _offer_rescue(kernel, report, ctx, reason, fix, exc, policy, guard))
    if stays and isinstance(left, _NoShell):
        if guard.retry_after is None:
            halt(kernel, report, RescuePolicy.POWEROFF)  # no shell to stay in: stop, do not loop
        # No shell to wait in: the guard's wait without one, then the retry.
        guarded(lambda: kernel.sleep(guard.retry_after or 0))
    halt(kernel, report, RescuePolicy.REBOOT if policy == RescuePolicy.SHELL or stays else policy)


class _NoShell(Exception):
    """The rescue shell could not start."""


def _offer_rescue(
    kernel: Kernel,
    report: Report,
    ctx: BootContext | None,
    reason: str,
    fix: str,
    exc: BaseException | None,
    policy: RescuePolicy,
    guard: failed_boots.Guard,
) -> None:
    """The rescue's lines, its report, the hooks' word and, by policy, its shell.

    The shell runs until it is left; with the loop guard tripped, whatever
    the policy but poweroff, and until the console has been idle for the
    guard's wait (`Guard.retry_after`) instead of `initpy.rescue_timeout`:
    each key pressed restarts the wait, so the retry never cuts off someone
    typing.
    """
    report.outcome = Outcome.RESCUE
    report.reason = reason
    report.fix = fix or None
    if exc is not None:
        import traceback  # only a failure needs it: not on the path to the first state

        report.traceback = "".join(traceback.format_exception(exc))
    timeout, debug = None, False
    if ctx is not None:
        timeout, debug = ctx.value(RESCUE_TIMEOUT), ctx.value(DEBUG)
    # Every line of the reason and the fix is an `initpy: rescue:` line,
    # escaped by say(): a label or a DHCP option quoted in them stays text.
    report.say(f"{RESCUE}: {reason}", continuation=f"{RESCUE}: ")
    if fix:
        report.say(f"{RESCUE}: fix: {fix}", continuation=f"{RESCUE}: ")
    if debug and report.traceback:
        for line in report.traceback.rstrip().splitlines():
            kernel.console(printable(line))
    stays = guard.stays and policy != RescuePolicy.POWEROFF
    _tell_failed_boots(kernel, report, guard, policy, stays)
    report.write(ctx.state_mounted() if ctx is not None else False)
    if ctx is not None:
        ctx.rescuing()
    if policy != RescuePolicy.SHELL and not stays:
        return
    if stays:
        timeout = guard.retry_after  # the guard's wait, not the operator's idle timeout
    report.say(
        f"{RESCUE}: starting /bin/sh on the console; the report is /run/initpy/report.json;"
        " leave the shell (exit or Ctrl-D) to reboot"
    )
    env = clean_environment(kernel.environ())
    env["PS1"] = "(initpy rescue) # "
    try:
        result = kernel.run_shell(["/bin/sh"], env, idle_timeout=timeout)
    except OSError as shell_error:
        if stays:
            report.say(f"{RESCUE}: cannot start /bin/sh ({shell_error}); powering off")
            raise _NoShell() from shell_error
        report.say(f"{RESCUE}: cannot start /bin/sh ({shell_error}); rebooting in 30 s")
        kernel.sleep(30)
        return
    if result.idle_timeout and stays:
        report.say(
            f"{RESCUE}: no input on the console for {spoken(timeout or 0)}: retrying the boot "
            "(initpy.guard_retry)"
        )
    elif result.idle_timeout:
        report.say(f"{RESCUE}: the shell was idle for {timeout:g} s; rebooting")
    else:
        report.say(f"{RESCUE}: shell left with status {result.status}; rebooting")


def _tell_failed_boots(
    kernel: Kernel,
    report: Report,
    guard: failed_boots.Guard,
    policy: RescuePolicy,
    stays: bool,
) -> None:
    """The loop guard's lines: the count, and the history when the host stays."""
    if guard.count is None:
        if policy != RescuePolicy.SHELL:
            report.say(
                f"{RESCUE}: /state is not mounted, so this failed boot is not counted "
                "(initpy.max_failed_boots cannot stop a reboot loop before /state)"
            )
        return
    report.extra["failed_boots"] = guard.count
    if not stays:
        report.say(
            f"{RESCUE}: failed boots in a row: {guard.count} (a rescue stays in the shell "
            f"after {guard.limit}: initpy.max_failed_boots)"
            if guard.limit
            else f"{RESCUE}: failed boots in a row: {guard.count}"
        )
        return
    report.extra["stayed"] = True
    report.say(
        f"{RESCUE}: {guard.count} boots in a row have failed (more than "
        f"initpy.max_failed_boots={guard.limit}): staying in rescue instead of "
        + ("rebooting" if policy == RescuePolicy.REBOOT else "rebooting when idle")
        + ", so that a broken image cannot reboot the host in a loop"
    )
    history = failed_boots.history(kernel, report, guard.count)
    report.extra["failed_boots_history"] = history
    for line in history:
        report.say(f"{RESCUE}: history: {line}")
    report.say(
        f"{RESCUE}: fix the image or the host, then leave the shell to reboot; the count "
        f"goes back to 0 at the next hand-off (rm {failed_boots.COUNT_PATH} gives "
        f"{guard.limit} more reboots)"
    )
    _tell_retry(kernel, report, guard)


def _tell_retry(kernel: Kernel, report: Report, guard: failed_boots.Guard) -> None:
    """When the host that stays boots again: on the console and in the report."""
    if guard.retry_after is None:
        report.extra["guard_retry_s"] = None
        report.say(
            f"{RESCUE}: the host stays until someone leaves the shell (initpy.guard_retry=off)"
        )
        return
    wait = guard.retry_after
    at = kernel.uptime() + wait
    report.extra["guard_retry_s"] = wait
    report.extra["guard_retry_at_uptime_s"] = round(at)
    report.say(
        f"{RESCUE}: the boot is retried after {spoken(wait)} without input on the console "
        f"(at uptime {at:.0f} s if nobody types; each key pressed restarts the wait), "
        "twice as long after each further failed boot (initpy.guard_retry)"
    )


def halt(kernel: Kernel, report: Report, how: str) -> NoReturn:
    """Reboot or power off, retrying forever: PID 1 must not return.

    Nothing raised here (but a fake kernel's Halted) ends the loop: a
    failed reboot, a broken console, an exception from a signal handler
    during the sleep all lead to the next try.
    """
    while True:
        guarded(lambda: report.say(f"{RESCUE}: {how}"))
        failed = guarded(lambda: kernel.reboot(how))
        if failed is not None:
            line = f"{RESCUE}: {how} failed: {_describe_error(failed)}; retrying in 10 s"
            guarded(lambda: report.say(line))  # noqa: B023 - called at once
        guarded(lambda: kernel.sleep(10))


def guarded(action: Callable[[], object]) -> BaseException | None:
    """Run `action`; what it raises is returned, never raised (but Halted).

    PID 1 must survive anything, KeyboardInterrupt and SystemExit included:
    an exception that leaves main() ends init, and the kernel panics.
    """
    try:
        action()
    except Halted:
        raise
    except BaseException as exc:  # noqa: B036 - PID 1 must survive anything
        return exc
    return None


def ctrl_alt_del(kernel: Kernel) -> Callable[[], None]:
    """What SIGINT does: a clean reboot (sync, reboot), as systemd does for Ctrl-Alt-Del.

    The kernel sends init SIGINT for Ctrl-Alt-Del once it is told to
    (Kernel.take_signals). A second SIGINT while the first is rebooting
    changes nothing.
    """
    rebooting = False

    def on_interrupt() -> None:
        nonlocal rebooting
        if rebooting:
            return
        rebooting = True
        report = Report(kernel)
        guarded(lambda: report.say(f"{RESCUE}: SIGINT (Ctrl-Alt-Del): rebooting cleanly"))
        halt(kernel, report, "reboot")

    return on_interrupt


def _describe_error(exc: BaseException) -> str:
    """str() of an exception, even one whose str() raises."""
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


def describe(exc: BaseException) -> str:
    """`Type: text` of an exception, even one whose str() raises."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return type(exc).__name__
