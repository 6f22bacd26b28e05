"""The boot engine: the state machine, its states, and PID 1's whole life (`main`).

The states come from the hook registry; the `transitions` machine is built
from that order (`advance` to the next state, `fail` to rescue from any of
them). `Boot` runs each state's function, times it, prints and records it,
offers `initpy.break` shells, and on any failure goes to rescue
(rescue.py), which never returns; the last state is the hand-off
(handoff.py). PID 1 therefore never exits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

from initpy.runtime import cmdline, failed_boots, layout, preload, state_folders
from initpy.runtime.cmdline import BadValue, Parameter
from initpy.runtime.failed_boots import FAILED_BOOTS, GUARD_RETRY, MAX_FAILED_BOOTS
from initpy.runtime.handoff import EXEC, KMSG_RATELIMIT, PRINTK_DEVKMSG, clean_environment, handoff
from initpy.runtime.hook import (
    CMDLINE,
    EARLY_MOUNTS,
    HANDOFF,
    PRELOADED,
    RESCUE,
    BootContext,
    BootFailure,
    Milestone,
    Registry,
    build_registry,
    discover,
    select,
)
from initpy.runtime.kernel import MS_NODEV, MS_NOEXEC, MS_NOSUID, Halted, Kernel
from initpy.runtime.report import Report, Result, StateRecord
from initpy.runtime.rescue import (
    DEBUG,
    RESCUE_POLICY,
    RESCUE_TIMEOUT,
    ctrl_alt_del,
    describe,
    guarded,
    rescue,
)

# The initial state of the machine, before early mounts.
START = "start"


def _break_state(raw: str | None) -> str:
    if not raw or not all(c.isalnum() or c == "_" for c in raw):
        raise BadValue(f"expected a state name, got {raw!r}")
    return raw


BREAK: Parameter[str | None] = Parameter(
    "initpy.break",
    _break_state,
    None,
    "stop in a shell before this state; leaving the shell continues the boot",
    "initpy.break=handoff",
)


CORE_PARAMETERS: tuple[Parameter[Any], ...] = (
    EXEC,
    BREAK,
    RESCUE_POLICY,
    RESCUE_TIMEOUT,
    MAX_FAILED_BOOTS,
    GUARD_RETRY,
    DEBUG,
)


def early_mounts(ctx: BootContext) -> str:
    """proc, sys, devtmpfs and /run, each created and mounted where missing."""
    k = ctx.kernel
    mounted = _mounted_targets(k)
    done = []
    table = (
        # The preload may have mounted it already (to read the command line).
        preload.PROC_MOUNT,
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


def _mounted_targets(k: Kernel) -> set[str]:
    try:
        text = k.read_text("/proc/self/mounts")
    except OSError:
        return set()
    return {line.split()[1] for line in text.splitlines() if len(line.split()) > 1}


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
        self.ctx.put(PRELOADED, preload.loaded)
        self.functions = {
            EARLY_MOUNTS: early_mounts,
            CMDLINE: self._parse_cmdline,
            HANDOFF: handoff,
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

    # -- driving -----------------------------------------------------------------

    def run(self) -> NoReturn:
        for hook in self.registry.hooks:
            for start in hook.on_start:
                start(self.ctx)
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
            self._finish(name, start, Result.FAILED, describe(exc))
            self.rescue(
                f"{name}: unexpected error: {describe(exc)}",
                "this is a bug in initpy or a hook; boot with initpy.debug for the traceback "
                "and report it with /run/initpy/report.json",
                exc,
            )
        self._finish(name, start, Result.OK, detail)
        state = self.registry.states.get(name)
        if state is not None:
            self.ctx.reached.update(state.provides)
            if Milestone.STATE in state.provides:
                # Before anything on /state is read: the init's folders must be its own.
                changed = state_folders.secure(self.kernel, self.report.warn)
                if changed:
                    self.report.extra["state_folders"] = changed
                # Failed until the hand-off.
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
                f"{name}: break: unexpected error: {describe(exc)}",
                "this is a bug in initpy; boot with initpy.debug for the traceback and report "
                "it with /run/initpy/report.json",
                exc,
            )

    def _break_shell(self, name: str) -> None:
        self.report.say(f"break: before {name}; leave the shell (exit or Ctrl-D) to continue")
        self.report.write(self.ctx.state_mounted())
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
    signals_failed = guarded(lambda: kernel.take_signals(ctrl_alt_del(kernel)))
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
    guarded(lambda: early_mounts(BootContext(kernel=kernel, report=report)))
    rescue(
        kernel,
        report,
        None,
        f"init failed to start: {describe(failure)}",
        "rebuild the initrd; the hooks or the frozen init are broken",
        failure,
    )
