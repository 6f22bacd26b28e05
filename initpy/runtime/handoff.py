"""The hand-off: which program PID 1 becomes, with which arguments and environment.

The last state (`handoff`) execs systemd, or the program `initpy.exec`
names, with exactly the words the kernel gave init, an environment without
the freezer's traces and the kernel log's rate limit put back. Hooks that
install something for the OS read the same rule here (`handoff_to_systemd`:
will systemd run next?), so what they write and what the boot execs never
disagree. Rescue and the break shell use `clean_environment` too.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from initpy.runtime import cmdline, failed_boots, layout
from initpy.runtime.cmdline import Parameter
from initpy.runtime.failed_boots import FAILED_BOOTS
from initpy.runtime.hook import HANDOFF, BootContext, BootFailure, Fact
from initpy.runtime.kernel import Kernel
from initpy.runtime.report import Outcome

# The hand-off's programs when initpy.exec is not given: systemd, else an
# /sbin/init that is not busybox's (sysvinit, OpenRC, a link to systemd).
# busybox's init, the applet every initrd has without --rootfs, would give
# anyone at the console a root shell: that is a rescue, with the fix.
SYSTEMD = "/lib/systemd/systemd"
OTHER_INIT = "/sbin/init"
DEFAULT_EXEC = (SYSTEMD, OTHER_INIT)
BUSYBOX_PATHS = ("/usr/bin/busybox", "/bin/busybox")

# The kernel's /dev/kmsg rate limit as early_mounts found it, restored here.
PRINTK_DEVKMSG = "/proc/sys/kernel/printk_devkmsg"
KMSG_RATELIMIT: Fact[str | None] = Fact("kmsg_ratelimit")

EXEC: Parameter[str | None] = Parameter(
    "initpy.exec",
    cmdline.absolute_path,
    None,
    "program to exec at the hand-off (default /lib/systemd/systemd, else /sbin/init "
    "unless it is busybox)",
    "initpy.exec=/sbin/init",
)


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
    clean.setdefault("PATH", layout.DEFAULT_PATH)
    clean.setdefault("HOME", "/")
    clean.setdefault("TERM", "linux")
    return clean


def handoff_to_systemd(ctx: BootContext) -> tuple[bool, str]:
    """Whether the hand-off will exec systemd (as `handoff` chooses), and what it execs."""
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


def handoff(ctx: BootContext) -> str:
    """The last state: exec the init, or fail with what was tried and the fix."""
    report = ctx.report
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
        report.outcome = Outcome.HANDOFF
        count = ctx.get(FAILED_BOOTS, None)
        if count is not None:
            failed_boots.reset(ctx.kernel, report)
        report.write(ctx.state_mounted())
        ctx.say(f"{HANDOFF}: exec {path} (uptime {ctx.kernel.uptime():.2f}s)")
        _restore_kmsg_ratelimit(ctx)
        try:
            ctx.kernel.execve(path, [path, *argv_tail], env)
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
            report.outcome = None
            if count is not None:
                failed_boots.restore(ctx.kernel, report, count)
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


def _restore_kmsg_ratelimit(ctx: BootContext) -> None:
    found = ctx.get(KMSG_RATELIMIT, None)
    if found and found != "on":
        try:
            ctx.kernel.write_text(PRINTK_DEVKMSG, found + "\n")
        except OSError:
            pass
