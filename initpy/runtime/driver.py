"""The boot driver: the state machine, rescue and the hand-off.

The states come from the hook registry; the `transitions` machine is built
from that order (`advance` to the next state, `fail` to rescue from any of
them). The driver runs each state's function, times it, prints and records
it, offers `initpy.break` shells, and on any failure goes to rescue, which
never returns: it runs the rescue policy and ends in reboot or power-off.
PID 1 therefore never exits.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, NoReturn

from initpy.runtime import cmdline, failed_boots, layout
from initpy.runtime.cmdline import BadValue, Parameter
from initpy.runtime.hook import (
    CMDLINE,
    EARLY_MOUNTS,
    HANDOFF,
    RESCUE,
    BootContext,
    BootFailure,
    Fact,
    Milestone,
    Registry,
    build_registry,
    discover,
    select,
)
from initpy.runtime.kernel import MS_NODEV, MS_NOEXEC, MS_NOSUID, Kernel
from initpy.runtime.report import Outcome, Report, Result, StateRecord, printable

# The initial state of the machine, before early mounts.
START = "start"

# The hand-off's programs when initpy.exec is not given: systemd, else an
# /sbin/init that is not busybox's (sysvinit, OpenRC, a link to systemd).
# busybox's init, the applet every initrd has without --rootfs, would give
# anyone at the console a root shell: that is a rescue, with the fix.
SYSTEMD = "/lib/systemd/systemd"
OTHER_INIT = "/sbin/init"
DEFAULT_EXEC = (SYSTEMD, OTHER_INIT)
BUSYBOX_PATHS = ("/usr/bin/busybox", "/bin/busybox")
DEFAULT_PATH = layout.DEFAULT_PATH

# The kernel's /dev/kmsg rate limit as we found it, restored at the hand-off.
PRINTK_DEVKMSG = "/proc/sys/kernel/printk_devkmsg"
KMSG_RATELIMIT: Fact[str | None] = Fact("kmsg_ratelimit")


def _break_state(raw: str | None) -> str:
    if not raw or not all(c.isalnum() or c == "_" for c in raw):
        raise BadValue(f"expected a state name, got {raw!r}")
    return raw


def _rescue_timeout(raw: str | None) -> float | None:
    return cmdline.seconds(1, 7 * 86400)(raw)


EXEC: Parameter[str | None] = Parameter(
    "initpy.exec",
    cmdline.absolute_path,
    None,
    "program to exec at the hand-off (default /lib/systemd/systemd, else /sbin/init "
    "unless it is busybox)",
    "initpy.exec=/sbin/init",
)
BREAK: Parameter[str | None] = Parameter(
    "initpy.break",
    _break_state,
    None,
    "stop in a shell before this state; leaving the shell continues the boot",
    "initpy.break=handoff",
)


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
MAX_FAILED_BOOTS = failed_boots.MAX_FAILED_BOOTS
CORE_PARAMETERS: tuple[Parameter[Any], ...] = (
    EXEC,
    BREAK,
    RESCUE_POLICY,
    RESCUE_TIMEOUT,
    MAX_FAILED_BOOTS,
    DEBUG,
)
# Failed boots in a row, this one included, once /state is mounted (None:
# not mounted yet, or the count could not be kept).
FAILED_BOOTS: Fact[int | None] = Fact("failed_boots")


class Halted(BaseException):
    """Raised by a fake kernel where a real one would never return."""


def is_busybox(kernel: Kernel, path: str) -> bool:
    """Whether `path` is busybox: its symlinks end at a file named busybox, or a hard link."""
    resolved = path
    for _ in range(40):  # the kernel's own limit on nested links
        try:
            link = kernel.readlink(resolved)
        except OSError:
            break
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(resolved), link))
    if posixpath.basename(resolved) == "busybox":
        return True
    try:
        found = kernel.stat(path)
    except OSError:
        return False
    for busybox in BUSYBOX_PATHS:
        try:
            other = kernel.stat(busybox)
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (other.st_dev, other.st_ino):
            return True
    return False


def clean_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for the hand-off and shells, without the freezer's traces.

    PyInstaller's bootloader sets LD_LIBRARY_PATH (keeping the original in
    LD_LIBRARY_PATH_ORIG) and _PYI_*/_MEI* variables; systemd and the shell
    must not inherit them.
    """
    clean = {
        k: v
        for k, v in env.items()
        if not k.startswith(("_PYI", "_MEI", "LD_LIBRARY_PATH", "PYTHON"))
    }
    if env.get("LD_LIBRARY_PATH_ORIG"):
        clean["LD_LIBRARY_PATH"] = env["LD_LIBRARY_PATH_ORIG"]
    clean.setdefault("PATH", DEFAULT_PATH)
    clean.setdefault("HOME", "/")
    clean.setdefault("TERM", "linux")
    return clean


def early_mounts(ctx: BootContext) -> str:
    """proc, sys, devtmpfs and /run, each created and mounted where missing."""
    k = ctx.kernel
    mounted = _mounted_targets(k)
    done = []
    table = (
        ("proc", "/proc", "proc", 0o555, "", MS_NOSUID | MS_NODEV | MS_NOEXEC),
        ("sysfs", "/sys", "sysfs", 0o555, "", MS_NOSUID | MS_NODEV | MS_NOEXEC),
        ("devtmpfs", "/dev", "devtmpfs", 0o755, "mode=0755", MS_NOSUID),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            0o755,
            "gid=5,mode=620,ptmxmode=000",
            MS_NOSUID | MS_NOEXEC,
        ),
        ("tmpfs", "/run", "tmpfs", 0o755, "mode=0755", MS_NOSUID | MS_NODEV),
    )
    for source, target, fstype, mode, options, flags in table:
        if target in mounted:
            continue
        k.mkdir(target, mode)
        try:
            k.mount(source, target, fstype, flags, options)
        except OSError as exc:
            if target == "/dev/pts":  # a shell without ptys still works
                ctx.say(f"{EARLY_MOUNTS}: warning: {exc}")
                continue
            raise BootFailure(
                f"cannot mount {fstype} on {target}: {exc}",
                f"the kernel needs {fstype} support built in (CONFIG_"
                f"{'DEVTMPFS' if fstype == 'devtmpfs' else fstype.upper()})",
            ) from exc
        done.append(target)
        if target == "/proc":
            mounted = _mounted_targets(k)
    k.mkdir(layout.RUN_DIR)
    # The kernel keeps only 10 lines per 5 s written to /dev/kmsg and drops
    # the rest, which would lose most `initpy:` lines from the kernel log.
    # The setting is put back at the hand-off, for the OS.
    try:
        ctx.put(KMSG_RATELIMIT, k.read_text(PRINTK_DEVKMSG).strip())
        k.write_text(PRINTK_DEVKMSG, "on\n")
    except OSError as exc:
        ctx.say(f"{EARLY_MOUNTS}: warning: kernel log lines may be rate-limited: {exc}")
    return "mounted " + (" ".join(done) if done else "nothing (all present)")


def _restore_kmsg_ratelimit(ctx: BootContext) -> None:
    found = ctx.get(KMSG_RATELIMIT, None)
    if found and found != "on":
        try:
            ctx.kernel.write_text(PRINTK_DEVKMSG, found + "\n")
        except OSError:
            pass


def _mounted_targets(k: Kernel) -> set[str]:
    try:
        text = k.read_text("/proc/self/mounts")
    except OSError:
        return set()
    return {line.split()[1] for line in text.splitlines() if len(line.split()) > 1}


def handoff_to_systemd(ctx: BootContext) -> tuple[bool, str]:
    """Whether the hand-off will exec systemd (as the driver chooses), and what it execs."""
    k = ctx.kernel
    chosen = ctx.value(EXEC)
    candidates = (chosen,) if chosen else DEFAULT_EXEC
    target = next((p for p in candidates if k.exists(p)), None)
    if target is None:
        return False, "nothing to hand off to"
    path = target
    for _ in range(8):  # /sbin/init -> /lib/systemd/systemd
        if posixpath.basename(path) == "systemd":
            return True, target
        try:
            link = k.readlink(path)
        except OSError:
            break
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), link))
    return False, target


class Boot:
    """One boot: drives the registry's states through a `transitions` machine."""

    state: str  # set by transitions

    def __init__(
        self, kernel: Kernel, registry: Registry, manifest: layout.Manifest | None = None
    ) -> None:
        from transitions import Machine

        self.kernel = kernel
        self.registry = registry
        self.report = Report(kernel)
        self.ctx = BootContext(kernel=kernel, report=self.report, manifest=manifest)
        self.functions = {
            EARLY_MOUNTS: early_mounts,
            CMDLINE: self._parse_cmdline,
            HANDOFF: self._handoff,
            **{name: s.run for name, s in registry.states.items()},
        }
        self.machine = Machine(
            model=self,
            states=machine_states(registry),
            transitions=machine_transitions(registry),
            initial=START,
            auto_transitions=False,
            send_event=False,
        )
        for hook in registry.hooks:
            for tell in hook.on_rescue:
                self.ctx.on_rescue(tell)

    # -- the states the driver owns -----------------------------------------

    def _parse_cmdline(self, ctx: BootContext) -> str:
        text = ctx.kernel.read_text("/proc/cmdline")
        parameters = [*CORE_PARAMETERS, *self.registry.parameters()]
        config = cmdline.parse(text, parameters)
        problems = list(config.problems)
        wanted_break = config.value(BREAK)
        if wanted_break is not None and wanted_break not in self.registry.order:
            problems.append(
                f"initpy.break: no state named {wanted_break!r}; states are "
                + ", ".join(self.registry.order)
            )
        # What the hand-off passes on is the argv the kernel gave us; the
        # words after `--` in /proc/cmdline must be its tail.
        init_argv = ctx.kernel.init_args()
        after_dashes = config.init_args
        if after_dashes and init_argv[-len(after_dashes) :] != after_dashes:
            problems.append(
                f"the kernel started init with the arguments {list(init_argv)}, which do not "
                f"end with the words after -- in /proc/cmdline {list(after_dashes)}; the "
                "hand-off passes on what the kernel gave"
            )
        if problems != list(config.problems):
            config = cmdline.BootConfig(
                config.values, tuple(problems), config.raw, config.init_args, config.cmdline
            )
        ctx.config = config
        self.report.command_line = {**config.as_report(), "init_argv": list(init_argv)}
        for problem in config.problems:
            ctx.say(f"{CMDLINE}: warning: {problem}")
        given = ", ".join(sorted(config.values)) or "no initpy/buildos parameters"
        return f"{given}; {len(config.problems)} warning(s)"

    def _handoff(self, ctx: BootContext) -> str:
        target = ctx.value(EXEC)
        candidates = (target,) if target else DEFAULT_EXEC
        env = clean_environment(ctx.kernel.environ())
        # Exactly the words the kernel gave init (its bare words and those
        # after `--`): what systemd would have received as init.
        argv_tail = list(ctx.kernel.init_args())
        ctx.exiting()
        errors = []
        for path in candidates:
            if not ctx.kernel.exists(path):
                errors.append(f"{path}: not found")
                continue
            if not target and path == OTHER_INIT and is_busybox(ctx.kernel, path):
                errors.append(
                    f"{path}: busybox's init, not taken (it would give an unprotected root "
                    "shell on the console)"
                )
                continue
            self.report.outcome = Outcome.HANDOFF
            count = ctx.get(FAILED_BOOTS, None)
            if count is not None:
                failed_boots.reset(ctx.kernel, self.report)
            self.report.write(_state_mounted(ctx))
            ctx.say(f"{HANDOFF}: exec {path} (uptime {ctx.kernel.uptime():.2f}s)")
            _restore_kmsg_ratelimit(ctx)
            try:
                ctx.kernel.execve(path, [path, *argv_tail], env)
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror or exc}")
                self.report.outcome = None
                if count is not None:
                    failed_boots.restore(ctx.kernel, self.report, count)
        if target:
            raise BootFailure(
                "hand-off failed: " + "; ".join(errors),
                "put the program into the initrd (mkinitrd --include SRC:DST, or --rootfs), or "
                "name an existing one with initpy.exec=PATH",
            )
        raise BootFailure(
            "hand-off failed: no init to exec: " + "; ".join(errors),
            "build the initrd with mkinitrd --rootfs DIR (a root file system with systemd), or "
            "name the program with initpy.exec=PATH (initpy.exec=/sbin/init runs busybox's "
            "init all the same)",
        )

    # -- driving -----------------------------------------------------------------

    def run(self) -> NoReturn:
        while True:
            name = self._next_state()
            self._maybe_break(name)
            self.trigger("advance")  # type: ignore[attr-defined]
            self._run_state(name)

    def _next_state(self) -> str:
        order = self.registry.order
        if self.state == START:
            return order[0]
        return order[order.index(self.state) + 1]

    def _run_state(self, name: str) -> None:
        start = self.kernel.uptime()
        try:
            detail = self.functions[name](self.ctx)
        except BootFailure as exc:
            self._finish(name, start, Result.FAILED, exc.reason)
            self.rescue(f"{name}: {exc.reason}", exc.fix, exc)
        except Halted:
            raise
        except BaseException as exc:  # noqa: B036 - KeyboardInterrupt too: the policy decides
            self._finish(name, start, Result.FAILED, _describe(exc))
            self.rescue(
                f"{name}: unexpected error: {_describe(exc)}",
                "this is a bug in initpy or a hook; boot with initpy.debug for the traceback "
                "and report it with /run/initpy/report.json",
                exc,
            )
        self._finish(name, start, Result.OK, detail)
        state = self.registry.states.get(name)
        if state is not None:
            self.ctx.reached.update(state.provides)
            if Milestone.STATE in state.provides:  # failed until the hand-off
                self.ctx.put(FAILED_BOOTS, failed_boots.count_this_boot(self.kernel, self.report))
        self.kernel.reap_orphans()

    def _finish(self, name: str, start: float, result: Result, detail: str | None) -> None:
        end = self.kernel.uptime()
        self.report.record(
            StateRecord(
                name,
                int(start * 1000),
                int((end - start) * 1000),
                result,
                detail,
            )
        )
        suffix = f": {detail}" if detail else ""
        if result == Result.OK:
            self.report.say(f"{name}: ok in {int((end - start) * 1000)} ms{suffix}")

    def _maybe_break(self, name: str) -> None:
        """The `initpy.break` shell before `name`; a failure is the state's, for rescue."""
        if self.ctx.value(BREAK) != name:
            return
        try:
            self._break_shell(name)
        except Halted:
            raise
        except OSError as exc:
            self.rescue(
                f"{name}: break: cannot start /bin/sh: {exc}",
                "put busybox into the initrd (mkinitrd's rescue_tools hook, in every default "
                f"build), or boot without initpy.break={name}",
                exc,
            )
        except BaseException as exc:  # noqa: B036 - the rescue policy decides, as for a state
            self.rescue(
                f"{name}: break: unexpected error: {_describe(exc)}",
                "this is a bug in initpy; boot with initpy.debug for the traceback and report "
                "it with /run/initpy/report.json",
                exc,
            )

    def _break_shell(self, name: str) -> None:
        self.report.say(f"break: before {name}; leave the shell (exit or Ctrl-D) to continue")
        self.report.write(_state_mounted(self.ctx))
        env = clean_environment(self.kernel.environ())
        env["PS1"] = f"(initpy break before {name}) # "
        result = self.kernel.run_shell(["/bin/sh"], env)
        self.report.say(f"break: shell left with status {result.status}; continuing with {name}")

    # -- rescue --------------------------------------------------------------------

    def rescue(self, reason: str, fix: str, exc: BaseException | None = None) -> NoReturn:
        try:
            self.trigger("fail")  # type: ignore[attr-defined]
        except Exception:  # already in rescue, or the machine is broken
            pass
        try:
            self.ctx.exiting()
        except BaseException:  # noqa: B036 - a stop that fails must not keep us from rescue
            pass
        rescue(self.kernel, self.report, self.ctx, reason, fix, exc)


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
            guard = failed_boots.decide(ctx.get(FAILED_BOOTS, None), ctx.value(MAX_FAILED_BOOTS))
        except Exception:  # a broken config: no guard, the policy stands
            pass
    # The guard stops a reboot, not a power-off: a host switched off does not loop.
    stays = guard.stays and policy != RescuePolicy.POWEROFF
    left = _guarded(lambda: _offer_rescue(kernel, report, ctx, reason, fix, exc, policy, guard))
    if stays and isinstance(left, _NoShell):
        halt(kernel, report, RescuePolicy.POWEROFF)  # no shell to stay in: stop, do not loop
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
    the policy but poweroff, and with no idle timeout.
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
    report.write(_state_mounted(ctx) if ctx is not None else False)
    if ctx is not None:
        ctx.rescuing()
    if policy != RescuePolicy.SHELL and not stays:
        return
    if stays:
        timeout = None  # an idle reboot would be the loop the guard stops
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
    if result.idle_timeout:
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


def halt(kernel: Kernel, report: Report, how: str) -> NoReturn:
    """Reboot or power off, retrying forever: PID 1 must not return.

    Nothing raised here (but a fake kernel's Halted) ends the loop: a
    failed reboot, a broken console, an exception from a signal handler
    during the sleep all lead to the next try.
    """
    while True:
        _guarded(lambda: report.say(f"{RESCUE}: {how}"))
        failed = _guarded(lambda: kernel.reboot(how))
        if failed is not None:
            line = f"{RESCUE}: {how} failed: {_describe_error(failed)}; retrying in 10 s"
            _guarded(lambda: report.say(line))  # noqa: B023 - called at once
        _guarded(lambda: kernel.sleep(10))


def _guarded(action: Callable[[], object]) -> BaseException | None:
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
        _guarded(lambda: report.say(f"{RESCUE}: SIGINT (Ctrl-Alt-Del): rebooting cleanly"))
        halt(kernel, report, "reboot")

    return on_interrupt


def machine_states(registry: Registry) -> list[str]:
    return [START, *registry.order, RESCUE]


def machine_transitions(registry: Registry) -> list[dict[str, str]]:
    order = [START, *registry.order]
    moves = [
        {"trigger": "advance", "source": a, "dest": b}
        for a, b in zip(order, order[1:], strict=False)
    ]
    moves += [{"trigger": "fail", "source": s, "dest": RESCUE} for s in registry.order]
    return moves


def _state_mounted(ctx: BootContext) -> bool:
    return Milestone.STATE in ctx.reached


def load_registry(folders: Sequence[str], names: Sequence[str] | None = None) -> Registry:
    found = discover(folders)
    return build_registry(select(found, names), found.values())


def read_manifest(kernel: Kernel) -> layout.Manifest | None:
    """The builder's manifest, or None when there is none (a hand-made tree)."""
    if not kernel.exists(layout.MANIFEST):
        return None
    return layout.Manifest.from_json(kernel.read_bytes(layout.MANIFEST))


def main(
    kernel: Kernel, folders: Sequence[str] = (layout.HOOKS_DIR,), names: Sequence[str] | None = None
) -> NoReturn:
    """PID 1's whole life: never returns, whatever happens."""
    report = Report(kernel)
    signals_failed = _guarded(lambda: kernel.take_signals(ctrl_alt_del(kernel)))
    failure: BaseException = RuntimeError("the boot returned")
    try:
        report.say(f"starting (pid {kernel.getpid()}, uptime {kernel.uptime():.2f}s)")
        if signals_failed is not None:
            report.say(f"warning: signals keep their defaults: {signals_failed}")
        manifest = read_manifest(kernel)
        if names is None and manifest is not None:
            names = manifest.hooks
        registry = load_registry(folders, names)
        boot = Boot(kernel, registry, manifest)
        report = boot.report
        boot.run()
    except Halted:
        raise
    except BaseException as exc:  # noqa: B036 - PID 1 must survive anything
        failure = exc
    # Mounts may be missing if we failed before or during early mounts.
    _guarded(lambda: early_mounts(BootContext(kernel=kernel, report=report)))
    rescue(
        kernel,
        report,
        None,
        f"init failed to start: {_describe(failure)}",
        "rebuild the initrd; the hooks or the frozen init are broken",
        failure,
    )


def _describe_error(exc: BaseException) -> str:
    """str() of an exception, even one whose str() raises."""
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


def _describe(exc: BaseException) -> str:
    """`Type: text` of an exception, even one whose str() raises."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return type(exc).__name__
