"""The loop guard (issue 12): failed boots in a row are counted on /state, and
after initpy.max_failed_boots of them a rescue stays in its shell instead of
rebooting, with the history of those boots on the console.

Each test boots the fake kernel several times over one root folder, as a
host reboots over the same state disk.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from initpy.devtools.fake import FakeKernel, HandedOff, Rebooted
from initpy.runtime import cmdline
from initpy.runtime.driver import Boot
from initpy.runtime.failed_boots import COUNT_PATH, GUARD_RETRY, RetryWaits, decide
from initpy.runtime.hook import BootContext, BootFailure, Hook, Milestone, State, build_registry
from initpy.runtime.kernel import Halted, ShellExit
from tests.unit.conftest import make_executable, read_report


def mount_state(ctx: BootContext) -> str:
    ctx.kernel.mkdir("/state")
    return "mounted"


def disk_hook() -> Hook:
    return Hook(
        "disk",
        "stands for storage",
        (State("mount_state", mount_state, "m", provides=(Milestone.STATE,)),),
    )


def failing_hook(number: int, needs: tuple[str, ...] = (Milestone.STATE,)) -> Hook:
    def breaks(ctx: BootContext) -> str:
        raise BootFailure(f"the image is broken (boot {number})", "build a good image")

    return Hook("broken", "fails", (State("breaks", breaks, "fails", needs=needs),))


def boot_once(
    root: str,
    cmdline: str,
    number: int,
    *,
    fail: bool = True,
    before_state: bool = False,
    shells: list[ShellExit] | None = None,
    failures: dict[str, dict[str, int]] | None = None,
) -> tuple[Halted, FakeKernel]:
    kernel = FakeKernel(root=root, cmdline=cmdline, shells=shells or [], failures=failures or {})
    make_executable(kernel, "/sbin/init")
    hooks = [disk_hook()]
    if fail:
        broken = failing_hook(number, () if before_state else (Milestone.STATE,))
        hooks = [broken, *hooks] if before_state else [*hooks, broken]
    boot = Boot(kernel, build_registry(hooks))
    with pytest.raises(Halted) as ended:
        boot.run()
    return ended.value, kernel


def count(root: str) -> str:
    with open(os.path.join(root, COUNT_PATH.lstrip("/"))) as f:
        return f.read()


def console(kernel: FakeKernel) -> str:
    return "\n".join(kernel.console_lines)


def test_failed_boots_are_counted_and_a_handoff_resets_the_count(tmp_path: object) -> None:
    root = str(tmp_path)
    for number in (1, 2):
        ended, kernel = boot_once(root, "initpy.rescue=reboot", number)
        assert isinstance(ended, Rebooted) and ended.how == "reboot"
        assert count(root) == f"{number}\n"
        assert read_report(kernel)["failed_boots"] == number
        assert f"initpy: rescue: failed boots in a row: {number}" in console(kernel)
    ended, kernel = boot_once(root, "initpy.rescue=reboot", 3, fail=False)
    assert isinstance(ended, HandedOff)
    assert count(root) == "0\n"
    assert read_report(kernel)["failed_boots"] == 0
    assert os.stat(os.path.join(root, COUNT_PATH.lstrip("/"))).st_mode & 0o777 == 0o600


def test_the_fourth_failed_boot_in_a_row_stays_in_rescue_and_says_why(tmp_path: object) -> None:
    root = str(tmp_path)
    for number in (1, 2, 3):
        ended, kernel = boot_once(root, "initpy.rescue=reboot", number)
        assert isinstance(ended, Rebooted) and kernel.syscalls("shell") == []
    ended, kernel = boot_once(root, "initpy.rescue=reboot", 4, shells=[ShellExit(0)])
    (shell,) = kernel.syscalls("shell")
    assert shell[2] == 3600.0  # the guard's first wait (initpy.guard_retry's default)
    text = console(kernel)
    assert (
        "initpy: rescue: 4 boots in a row have failed (more than initpy.max_failed_boots=3): "
        "staying in rescue instead of rebooting" in text
    )
    history = [line for line in kernel.console_lines if "rescue: history:" in line]
    assert history == [
        "initpy: rescue: history: this boot: breaks: the image is broken (boot 4)",
        "initpy: rescue: history: 1 boot ago: breaks: the image is broken (boot 3)",
        "initpy: rescue: history: 2 boots ago: breaks: the image is broken (boot 2)",
        "initpy: rescue: history: 3 boots ago: breaks: the image is broken (boot 1)",
    ]
    # The lines come before the shell, and the shell is left to reboot.
    assert text.index("history: this boot") < text.index("starting /bin/sh")
    assert isinstance(ended, Rebooted) and ended.how == "reboot"
    report = read_report(kernel)
    assert report["stayed"] is True and report["failed_boots"] == 4
    assert len(report["failed_boots_history"]) == 4  # type: ignore[arg-type]


def test_the_guard_replaces_the_idle_timeout_with_its_own_wait_once_it_trips(
    tmp_path: object,
) -> None:
    root = str(tmp_path)
    idle = "initpy.rescue_timeout=60"
    for number in (1, 2, 3):
        ended, kernel = boot_once(root, idle, number, shells=[ShellExit(-9, idle_timeout=True)])
        (shell,) = kernel.syscalls("shell")
        assert shell[2] == 60.0 and isinstance(ended, Rebooted)
    ended, kernel = boot_once(root, idle, 4)
    (shell,) = kernel.syscalls("shell")
    assert shell[2] == 3600.0
    assert "staying in rescue instead of rebooting when idle" in console(kernel)


@pytest.mark.parametrize(
    ("retry", "waits"),
    [
        # The default: 1 h, doubling with each further failed boot, up to 24 h.
        (None, [3600, 7200, 14400, 28800, 57600, 86400, 86400]),
        ("initpy.guard_retry=20s", [20, 40, 80, 160, 320, 640, 1280]),
        ("initpy.guard_retry=15m,1h", [900, 1800, 3600, 3600, 3600, 3600, 3600]),
        ("initpy.guard_retry=2d", [172800] * 7),  # above 24 h: the first is the longest
    ],
)
def test_the_wait_doubles_with_each_further_failed_boot_up_to_the_longest(
    retry: str | None, waits: list[int]
) -> None:
    config = cmdline.parse(retry or "", [GUARD_RETRY])
    assert config.problems == ()
    limit = 3
    got = [decide(count, limit, config.value(GUARD_RETRY)) for count in range(1, limit + 8)]
    assert [g.stays for g in got] == [False] * limit + [True] * 7
    assert [g.retry_after for g in got[:limit]] == [None] * limit
    assert [g.retry_after for g in got[limit:]] == waits
    # A count far past the limit (a planted one, or years of failures) stays bounded.
    given = config.value(GUARD_RETRY)
    assert given is not None and decide(10**9, limit, given).retry_after == given.longest


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("initpy.guard_retry=5s", "expected a duration from 10 s to 30 d"),
        ("initpy.guard_retry=1h,10m", "the longest wait must not be shorter than the first"),
        ("initpy.guard_retry=1w", "as 90s, 15m, 1h or 1d, got '1w'"),
        ("initpy.guard_retry", "got ''"),
        ("initpy.guard_retry=1h,", "got ''"),
    ],
)
def test_a_bad_retry_is_a_warning_and_the_default_stands(raw: str, problem: str) -> None:
    config = cmdline.parse(raw, [GUARD_RETRY])
    (line,) = config.problems
    assert line.startswith("initpy.guard_retry: ") and problem in line, line
    assert config.value(GUARD_RETRY) == RetryWaits(3600.0, 86400.0)
    assert str(config.value(GUARD_RETRY)) == "1h,1d"


def test_a_host_that_stays_boots_again_after_the_idle_wait_and_says_when(
    tmp_path: object,
) -> None:
    root = str(tmp_path)
    line = "initpy.rescue=reboot initpy.max_failed_boots=1 initpy.guard_retry=20s,1m"
    boot_once(root, line, 1)
    for number, wait, spoken in ((2, 20.0, "20 s"), (3, 40.0, "40 s"), (4, 60.0, "1 min")):
        ended, kernel = boot_once(root, line, number, shells=[ShellExit(-9, idle_timeout=True)])
        (shell,) = kernel.syscalls("shell")
        assert shell[2] == wait  # the shell's idle timeout: a key pressed restarts it
        assert isinstance(ended, Rebooted) and ended.how == "reboot"  # the retry
        text = console(kernel)
        assert f"the boot is retried after {spoken} without input on the console" in text
        assert "each key pressed restarts the wait" in text
        assert f"no input on the console for {spoken}: retrying the boot" in text
        report = read_report(kernel)
        assert report["guard_retry_s"] == wait
        at = report["guard_retry_at_uptime_s"]
        assert isinstance(at, int) and at >= wait
    # A boot that reaches the hand-off resets the count: the next failure reboots at once.
    assert isinstance(boot_once(root, line, 5, fail=False)[0], HandedOff)
    assert count(root) == "0\n"
    ended, kernel = boot_once(root, line, 6)
    assert kernel.syscalls("shell") == [] and count(root) == "1\n"


def test_with_the_retry_off_the_host_stays_until_the_shell_is_left(tmp_path: object) -> None:
    root = str(tmp_path)
    line = "initpy.rescue=reboot initpy.max_failed_boots=1 initpy.guard_retry=off"
    boot_once(root, line, 1)
    ended, kernel = boot_once(root, line, 2)
    (shell,) = kernel.syscalls("shell")
    assert shell[2] is None
    assert "stays until someone leaves the shell (initpy.guard_retry=off)" in console(kernel)
    assert read_report(kernel)["guard_retry_s"] is None


def test_a_host_that_stays_keeps_staying_until_a_boot_reaches_the_handoff(
    tmp_path: object,
) -> None:
    root = str(tmp_path)
    for number in range(1, 6):
        ended, kernel = boot_once(root, "initpy.rescue=reboot", number)
    assert kernel.syscalls("shell") != [] and count(root) == "5\n"
    boot_once(root, "initpy.rescue=reboot", 6, fail=False)
    ended, kernel = boot_once(root, "initpy.rescue=reboot", 7)
    assert kernel.syscalls("shell") == [] and count(root) == "1\n"


@pytest.mark.parametrize(
    ("cmdline", "stays_at"),
    [
        ("initpy.rescue=reboot initpy.max_failed_boots=1", 2),
        ("initpy.rescue=reboot initpy.max_failed_boots=0", None),
        ("initpy.rescue=poweroff", None),
    ],
)
def test_the_limit_is_a_parameter_and_poweroff_is_left_alone(
    tmp_path: object, cmdline: str, stays_at: int | None
) -> None:
    root = str(tmp_path)
    for number in range(1, 6):
        ended, kernel = boot_once(root, cmdline, number)
        stayed = kernel.syscalls("shell") != []
        assert stayed == (stays_at is not None and number >= stays_at), number
        if "poweroff" in cmdline:
            assert isinstance(ended, Rebooted) and ended.how == "poweroff"


def test_a_failure_before_state_is_mounted_is_not_counted_and_says_so(tmp_path: object) -> None:
    root = str(tmp_path)
    boot_once(root, "initpy.rescue=reboot", 1)
    ended, kernel = boot_once(root, "initpy.rescue=reboot", 2, before_state=True)
    assert isinstance(ended, Rebooted)
    assert count(root) == "1\n"  # untouched
    assert (
        "initpy: rescue: /state is not mounted, so this failed boot is not counted "
        "(initpy.max_failed_boots cannot stop a reboot loop before /state)" in console(kernel)
    )
    assert "failed_boots" not in read_report(kernel)


def test_a_failed_exec_at_the_handoff_is_a_failed_boot(tmp_path: object) -> None:
    root = str(tmp_path)
    failures = {"execve": {"/sbin/init": errno.ENOEXEC}}
    for number in (1, 2):
        ended, kernel = boot_once(
            root, "initpy.rescue=reboot", number, fail=False, failures=failures
        )
        assert isinstance(ended, Rebooted)
        assert count(root) == f"{number}\n"
        assert read_report(kernel)["failed_boots"] == number


def test_a_count_that_does_not_parse_counts_from_zero_with_a_warning(tmp_path: object) -> None:
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "state/initpy"))
    with open(os.path.join(root, COUNT_PATH.lstrip("/")), "w") as f:
        f.write("\x1b[2Jlots\n")
    ended, kernel = boot_once(root, "initpy.rescue=reboot", 1)
    assert count(root) == "1\n"
    warnings = read_report(kernel)["warnings"]
    assert isinstance(warnings, list) and any("counting from 0" in w for w in warnings)
    assert all("\x1b" not in line for line in kernel.console_lines)


def test_a_symlinked_state_folder_is_never_written_through(tmp_path: object) -> None:
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "state"))
    os.makedirs(os.path.join(root, "elsewhere"))
    os.symlink("/elsewhere", os.path.join(root, "state/initpy"))
    ended, kernel = boot_once(root, "initpy.rescue=reboot", 1)
    assert os.listdir(os.path.join(root, "elsewhere")) == []
    # Moved aside (the link kept as it was), and the count kept in a fresh folder.
    assert os.readlink(os.path.join(root, "state/initpy.untrusted-1")) == "/elsewhere"
    assert count(root) == "1\n"
    assert "failed boots in a row: 1" in console(kernel)


def test_boots_without_a_report_show_as_such_in_the_history(tmp_path: object) -> None:
    """A power cut or panic after /state was mounted counts, but left no report."""
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "state/initpy"))
    with open(os.path.join(root, COUNT_PATH.lstrip("/")), "w") as f:
        f.write("3\n")
    ended, kernel = boot_once(root, "initpy.rescue=reboot", 4)
    history = [line for line in kernel.console_lines if "rescue: history:" in line]
    assert len(history) == 4
    assert history[1].endswith(
        "1 boot ago: no report kept (the boot ended before a report: a power cut, a panic or a "
        "hang)"
    )


def test_a_kept_report_is_read_as_untrusted_text(tmp_path: object) -> None:
    root = str(tmp_path)
    reports = os.path.join(root, "state/initpy/reports")
    os.makedirs(reports)
    with open(os.path.join(reports, "report.json.0"), "w") as f:
        json.dump({"outcome": "rescue", "reason": "x\n\x1b[2Jinitpy: fake line" + "y" * 900}, f)
    with open(os.path.join(root, COUNT_PATH.lstrip("/")), "w") as f:
        f.write("3\n")
    ended, kernel = boot_once(root, "initpy.rescue=reboot", 4)
    history = [line for line in kernel.console_lines if "rescue: history:" in line]
    assert "1 boot ago: x\\n\\x1b[2Jinitpy: fake line" in history[1]
    assert history[1].endswith("...") and len(history[1]) < 400
    assert not any(line.startswith("initpy: fake") for line in kernel.console_lines)


def test_staying_without_a_shell_waits_the_retry_then_reboots(tmp_path: object) -> None:
    root = str(tmp_path)
    for number in (1, 2, 3):
        boot_once(root, "initpy.rescue=reboot", number)
    ended, kernel = boot_once(
        root, "initpy.rescue=reboot", 4, failures={"shell": {"/bin/sh": errno.ENOENT}}
    )
    assert isinstance(ended, Rebooted) and ended.how == "reboot"
    assert ("sleep", 3600.0) in kernel.calls
    assert "cannot start /bin/sh" in console(kernel)


def test_staying_without_a_shell_and_no_retry_powers_off(tmp_path: object) -> None:
    root = str(tmp_path)
    line = "initpy.rescue=reboot initpy.max_failed_boots=1 initpy.guard_retry=off"
    boot_once(root, line, 1)
    ended, kernel = boot_once(root, line, 2, failures={"shell": {"/bin/sh": errno.ENOENT}})
    assert isinstance(ended, Rebooted) and ended.how == "poweroff"
