"""The boot driver on the fake kernel: transitions, rescue, break, hand-off."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

import pytest
from pytest_mock import MockerFixture

from initpy.devtools.fake import FakeKernel, HandedOff, Rebooted
from initpy.runtime.driver import Boot, load_registry, main
from initpy.runtime.handoff import clean_environment
from initpy.runtime.hook import BootContext, BootFailure, Hook, State, build_registry
from initpy.runtime.kernel import Kernel, ShellExit
from tests.unit.conftest import HOOKS_DIR, make_executable, read_report, run_boot


def recorder(trail: list[str], name: str, **milestones: tuple[str, ...]) -> State:
    def run(ctx: BootContext) -> str:
        trail.append(name)
        return f"{name} done"

    return State(name, run, f"records {name}", **milestones)


def two_hooks(trail: list[str]) -> list[Hook]:
    first = Hook(
        "first",
        "first hook",
        (recorder(trail, "alpha"), recorder(trail, "beta", provides=("betas",))),
    )
    second = Hook("second", "second hook", (recorder(trail, "gamma", needs=("betas",)),))
    return [second, first]


def console(kernel: FakeKernel) -> str:
    return "\n".join(kernel.console_lines)


def test_walks_every_state_in_order_and_hands_off(kernel: FakeKernel) -> None:
    trail: list[str] = []
    ended = run_boot(kernel, two_hooks(trail))
    assert isinstance(ended, HandedOff) and ended.path == "/sbin/init"
    assert trail == ["alpha", "beta", "gamma"]
    report = read_report(kernel)
    assert report["outcome"] == "handoff" and report["reason"] is None
    states = report["states"]
    assert isinstance(states, list)
    assert [s["name"] for s in states] == ["early_mounts", "cmdline", "alpha", "beta", "gamma"]
    assert all(s["result"] == "ok" for s in states)
    assert states[2]["detail"] == "alpha done"
    out = console(kernel)
    for name in ("early_mounts", "cmdline", "alpha", "beta", "gamma"):
        assert f"initpy: {name}: ok in " in out
    assert "initpy: handoff: exec /sbin/init" in out
    assert kernel.kmsg_lines == [ln for ln in kernel.console_lines if ln.startswith("initpy:")]


def test_on_start_runs_once_before_the_first_state(kernel: FakeKernel) -> None:
    trail: list[str] = []

    def start(ctx: BootContext) -> None:
        trail.append(f"started after {len(kernel.syscalls('mount'))} mounts")

    starter = Hook("starter", "starts early", (recorder(trail, "delta"),), on_start=(start,))
    run_boot(kernel, [*two_hooks(trail), starter])
    assert trail == ["started after 0 mounts", "alpha", "beta", "gamma", "delta"]


def test_early_mounts_mount_what_is_missing_only(kernel: FakeKernel) -> None:
    with open(kernel.path("/proc/self/mounts"), "a") as f:
        f.write("devtmpfs /dev devtmpfs rw 0 0\n")
    run_boot(kernel, [])
    targets = [c[2] for c in kernel.syscalls("mount")]
    assert targets == ["/proc", "/sys", "/dev/pts", "/run"]


def test_the_machine_has_one_advance_per_state_and_fail_from_each(kernel: FakeKernel) -> None:
    boot = Boot(kernel, build_registry(two_hooks([])))
    machine = boot.machine
    order = ["start", "early_mounts", "cmdline", "alpha", "beta", "gamma", "handoff"]
    for src, dst in zip(order, order[1:], strict=False):
        (t,) = machine.get_transitions("advance", source=src)
        assert t.dest == dst
    for src in order[1:]:
        (t,) = machine.get_transitions("fail", source=src)
        assert t.dest == "rescue"
    assert machine.get_transitions("fail", source="start") == []


def repo_states() -> list[str]:
    return list(load_registry([HOOKS_DIR]).order)


def test_every_repository_state_runs_in_registry_order(
    kernel: FakeKernel, mocker: MockerFixture
) -> None:
    registry = load_registry([HOOKS_DIR])
    boot = Boot(kernel, registry)
    trail: list[str] = []
    for name in registry.states:
        boot.functions[name] = recorder(trail, name).run
    with pytest.raises(HandedOff):
        boot.run()
    assert trail == [n for n in registry.order if n in registry.states]
    states = read_report(kernel)["states"]
    assert isinstance(states, list)
    assert [s["name"] for s in states] == list(registry.order[:-1])


@pytest.mark.parametrize("failing", repo_states())
def test_every_state_failing_ends_in_rescue_with_its_reason(
    kernel: FakeKernel, failing: str
) -> None:
    registry = load_registry([HOOKS_DIR])
    boot = Boot(kernel, registry)
    for name in registry.states:
        boot.functions[name] = lambda ctx: "fine"
    expected = f"{failing}: "
    if failing == "early_mounts":
        kernel.failures["mount"] = {"/proc": errno.EPERM}
        expected += "cannot mount proc on /proc"
    elif failing == "cmdline":
        os.unlink(kernel.path("/proc/cmdline"))
        expected += "unexpected error: FileNotFoundError"
    elif failing == "handoff":
        os.unlink(kernel.path("/sbin/init"))
        expected += (
            "hand-off failed: no init to exec: /lib/systemd/systemd: not found; "
            "/sbin/init: not found"
        )
    else:

        def broken(ctx: BootContext) -> str:
            raise BootFailure(f"{failing} broke on purpose", f"mend {failing}")

        boot.functions[failing] = broken
        expected += f"{failing} broke on purpose"
    with pytest.raises(Rebooted) as ended:
        boot.run()
    assert ended.value.how == "reboot"  # default policy: shell, then reboot
    assert kernel.syscalls("shell"), "the rescue shell was offered"
    assert f"initpy: rescue: {expected}" in console(kernel)
    assert "initpy: rescue: fix: " in console(kernel)
    report = read_report(kernel)
    assert report["outcome"] == "rescue"
    assert str(report["reason"]).startswith(expected)
    states = report["states"]
    assert isinstance(states, list)
    assert states[-1]["name"] == failing and states[-1]["result"] == "failed"
    assert boot.state == "rescue"
    assert not kernel.syscalls("execve") or failing == "handoff"


def test_report_is_written_before_the_rescue_shell(
    kernel: FakeKernel, mocker: MockerFixture
) -> None:
    seen: list[object] = []

    def shell(argv: Sequence[str], env: dict[str, str], idle_timeout: float | None) -> ShellExit:
        seen.append(read_report(kernel)["outcome"])
        seen.append(env.get("PS1"))
        return ShellExit(0)

    mocker.patch.object(kernel, "run_shell", side_effect=shell)
    kernel.failures["execve"] = {"/sbin/init": errno.ENOEXEC}
    assert isinstance(run_boot(kernel, []), Rebooted)
    assert seen == ["rescue", "(initpy rescue) # "]
    assert "/sbin/init: Exec format error" in console(kernel)


@pytest.mark.parametrize("policy", ["reboot", "poweroff"])
def test_rescue_policy_acts_directly(tmp_path: os.PathLike[str], policy: str) -> None:
    k = FakeKernel(root=str(tmp_path), cmdline=f"initpy.rescue={policy} initpy.exec=/nope")
    ended = run_boot(k, [])
    assert isinstance(ended, Rebooted) and ended.how == policy
    assert k.syscalls("shell") == []
    assert f"initpy: rescue: {policy}" in console(k)


def test_rescue_shell_then_reboot(kernel: FakeKernel) -> None:
    kernel.shells.append(ShellExit(3))
    kernel.failures["execve"] = {"/sbin/init": errno.EACCES}
    ended = run_boot(kernel, [])
    assert isinstance(ended, Rebooted) and ended.how == "reboot"
    (shell,) = kernel.syscalls("shell")
    assert shell[1] == ("/bin/sh",)
    assert "shell left with status 3; rebooting" in console(kernel)


def test_rescue_timeout_reboots_an_idle_shell(tmp_path: os.PathLike[str]) -> None:
    k = FakeKernel(
        root=str(tmp_path),
        cmdline="initpy.rescue_timeout=45 initpy.exec=/nope",
        shells=[ShellExit(-9, idle_timeout=True)],
    )
    ended = run_boot(k, [])
    assert isinstance(ended, Rebooted) and ended.how == "reboot"
    (shell,) = k.syscalls("shell")
    assert shell[2] == 45.0
    assert "the shell was idle for 45 s; rebooting" in console(k)


def test_a_failing_reboot_is_retried_never_returned(
    kernel: FakeKernel, mocker: MockerFixture
) -> None:
    mocker.patch.object(
        kernel, "reboot", side_effect=[OSError(errno.EPERM, "denied"), Rebooted("reboot")]
    )
    os.unlink(kernel.path("/sbin/init"))
    assert isinstance(run_boot(kernel, []), Rebooted)
    assert "reboot failed: [Errno 1] denied; retrying in 10 s" in console(kernel)
    assert ("sleep", 10) in kernel.calls


def test_break_gives_a_shell_before_the_state_and_continues(tmp_path: os.PathLike[str]) -> None:
    k = FakeKernel(root=str(tmp_path), cmdline="initpy.break=beta")
    make_executable(k, "/sbin/init")
    trail: list[str] = []

    def shell(
        argv: Sequence[str], env: Mapping[str, str], idle_timeout: float | None = None
    ) -> ShellExit:
        trail.append("shell")
        return ShellExit(0)

    k.run_shell = shell  # type: ignore[method-assign]
    ended = run_boot(k, two_hooks(trail))
    assert isinstance(ended, HandedOff)
    assert trail == ["alpha", "shell", "beta", "gamma"]
    assert "initpy: break: before beta;" in console(k)
    assert read_report(k)["outcome"] == "handoff"


def test_break_on_unknown_state_is_a_warning(tmp_path: os.PathLike[str]) -> None:
    k = FakeKernel(root=str(tmp_path), cmdline="initpy.break=nowhere")
    make_executable(k, "/sbin/init")
    run_boot(k, [])
    assert "no state named 'nowhere'" in console(k)
    command_line = read_report(k)["command_line"]
    assert isinstance(command_line, dict)
    warnings = command_line["warnings"]
    assert any("nowhere" in w for w in warnings)


def set_cmdline(kernel: FakeKernel, text: str, init_args: Sequence[str]) -> None:
    """A command line, and the argv a real kernel would give init for it."""
    kernel.cmdline = text
    kernel.kernel_argv = tuple(init_args)
    with open(kernel.path("/proc/cmdline"), "w") as f:
        f.write(text + "\n")


def test_exec_prefers_systemd_and_passes_init_args(kernel: FakeKernel) -> None:
    make_executable(kernel, "/lib/systemd/systemd")
    set_cmdline(kernel, "quiet -- --unit=rescue.target", ["--unit=rescue.target"])
    ended = run_boot(kernel, [])
    assert isinstance(ended, HandedOff)
    assert ended.argv == ["/lib/systemd/systemd", "--unit=rescue.target"]


def test_handoff_passes_every_word_the_kernel_gave_init(kernel: FakeKernel) -> None:
    """Issue 9, finding 1: bare words (splash, 3) reach systemd, not only those after --."""
    make_executable(kernel, "/lib/systemd/systemd")
    # The kernel keeps `quiet` and drops `initpy.debug` (a dot: a module
    # parameter); `splash` and `3` are unknown bare words: init gets them.
    set_cmdline(
        kernel,
        "quiet splash initpy.debug 3 -- single --log-level=debug",
        ["splash", "3", "single", "--log-level=debug"],
    )
    ended = run_boot(kernel, [])
    assert isinstance(ended, HandedOff)
    assert ended.argv == [
        "/lib/systemd/systemd",
        "splash",
        "3",
        "single",
        "--log-level=debug",
    ]
    command_line = read_report(kernel)["command_line"]
    assert command_line["init_argv"] == ["splash", "3", "single", "--log-level=debug"]  # type: ignore[index]
    assert command_line["warnings"] == []  # type: ignore[index]


def test_init_args_that_disagree_with_the_command_line_are_a_warning(
    kernel: FakeKernel,
) -> None:
    set_cmdline(kernel, "-- single", ["splash"])
    ended = run_boot(kernel, [])
    assert isinstance(ended, HandedOff) and ended.argv == ["/sbin/init", "splash"]
    assert "do not end with the words after -- in /proc/cmdline ['single']" in console(kernel)


def test_the_cli_as_pid1_boots_and_never_parses_argv(mocker: MockerFixture) -> None:
    """Issue 9, finding 1: argparse would exit 2 on `splash`; PID 1 must boot instead."""
    from initpy.devtools import cli

    class Booted(Exception):
        pass

    mocker.patch("os.getpid", return_value=1)
    boot = mocker.patch("initpy.runtime.entry.main", side_effect=Booted)
    mocker.patch.object(sys, "argv", ["/init", "splash", "single", "--help"])
    with pytest.raises(Booted):
        cli.main()
    boot.assert_called_once_with()


def busybox_as_sbin_init(kernel: FakeKernel, how: str) -> None:
    """/sbin/init as mkinitrd makes it without --rootfs: busybox's applet."""
    os.unlink(kernel.path("/sbin/init"))
    make_executable(kernel, "/usr/bin/busybox", "#!/bin/sh\n# busybox\n")
    if how == "symlink":  # mkinitrd's applets: absolute links to /usr/bin/busybox
        os.symlink("/usr/bin/busybox", kernel.path("/sbin/init"))
    else:
        os.link(kernel.path("/usr/bin/busybox"), kernel.path("/sbin/init"))


@pytest.mark.parametrize("how", ["symlink", "hard link"])
def test_busybox_init_is_never_the_default_hand_off(kernel: FakeKernel, how: str) -> None:
    """Issue 9, finding 10: without --rootfs, busybox's init gave a root shell to the console."""
    busybox_as_sbin_init(kernel, how)
    ended = run_boot(kernel, [])
    assert isinstance(ended, Rebooted)
    assert kernel.syscalls("execve") == []
    out = console(kernel)
    assert (
        "initpy: rescue: handoff: hand-off failed: no init to exec: /lib/systemd/systemd: "
        "not found; /sbin/init: busybox's init, not taken" in out
    )
    assert "fix: build the initrd with mkinitrd --rootfs DIR" in out
    assert "initpy.exec=PATH" in out
    assert read_report(kernel)["outcome"] == "rescue"


def test_busybox_init_named_with_initpy_exec_is_handed_off(kernel: FakeKernel) -> None:
    busybox_as_sbin_init(kernel, "symlink")
    set_cmdline(kernel, "initpy.exec=/sbin/init", [])
    ended = run_boot(kernel, [])
    assert isinstance(ended, HandedOff) and ended.path == "/sbin/init"


def test_systemd_goes_first_even_beside_busybox(kernel: FakeKernel) -> None:
    busybox_as_sbin_init(kernel, "symlink")
    make_executable(kernel, "/lib/systemd/systemd")
    ended = run_boot(kernel, [])
    assert isinstance(ended, HandedOff) and ended.path == "/lib/systemd/systemd"


def test_failed_exec_of_named_program_goes_to_rescue(tmp_path: os.PathLike[str]) -> None:
    k = FakeKernel(root=str(tmp_path), cmdline="initpy.exec=/usr/bin/missing")
    make_executable(k, "/sbin/init")
    ended = run_boot(k, [])
    assert isinstance(ended, Rebooted)
    assert "hand-off failed: /usr/bin/missing: not found" in console(k)
    assert "initpy.exec=PATH" in console(k)  # the fix
    assert read_report(k)["outcome"] == "rescue"


def test_handoff_environment_is_scrubbed(kernel: FakeKernel) -> None:
    kernel.environment.update(
        {
            "_PYI_SPLASH_IPC": "1",
            "LD_LIBRARY_PATH_ORIG": "/opt/lib",
            "PYTHONPATH": "/x",
            "console": "ttyS0",
        }
    )
    ended = run_boot(kernel, [])
    assert isinstance(ended, HandedOff)
    assert ended.env == {
        "HOME": "/",
        "TERM": "linux",
        "console": "ttyS0",
        "LD_LIBRARY_PATH": "/opt/lib",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }


def test_clean_environment_drops_every_frozen_runtime_trace() -> None:
    env = clean_environment(
        {"LD_LIBRARY_PATH": "/x", "_MEIPASS2": "/y", "_PYI_ARCHIVE": "z", "PATH": "/bin"}
    )
    assert env == {"PATH": "/bin", "HOME": "/", "TERM": "linux"}


def test_debug_shows_the_traceback_on_the_console(tmp_path: os.PathLike[str]) -> None:
    k = FakeKernel(root=str(tmp_path), cmdline="initpy.debug initpy.rescue=reboot")

    def crash(ctx: BootContext) -> str:
        raise ZeroDivisionError("boom")

    run_boot(k, [Hook("bad", "crashes", (State("crash", crash, "crashes"),))])
    out = console(k)
    assert "initpy: rescue: crash: unexpected error: ZeroDivisionError: boom" in out
    assert "Traceback (most recent call last)" in out
    assert "ZeroDivisionError" in str(read_report(k)["traceback"])


def test_no_traceback_on_console_without_debug(tmp_path: os.PathLike[str]) -> None:
    k = FakeKernel(root=str(tmp_path), cmdline="initpy.rescue=reboot")

    def crash(ctx: BootContext) -> str:
        raise ZeroDivisionError("boom")

    run_boot(k, [Hook("bad", "crashes", (State("crash", crash, "crashes"),))])
    assert "Traceback" not in console(k)


def test_main_survives_broken_hooks(tmp_path: os.PathLike[str]) -> None:
    hooks = os.path.join(str(tmp_path), "hooks")
    os.makedirs(hooks)
    with open(os.path.join(hooks, "bad.py"), "w") as f:
        f.write("raise RuntimeError('hook file is broken')\n")
    k = FakeKernel(root=os.path.join(str(tmp_path), "root"), cmdline="initpy.rescue=poweroff")
    with pytest.raises(Rebooted) as ended:
        main(k, [hooks])
    assert ended.value.how == "reboot"  # before the command line: shell, then reboot
    assert "init failed to start: RuntimeError: hook file is broken" in console(k)
    assert read_report(k)["outcome"] == "rescue"


def test_unscripted_commands_and_kernel_log(kernel: FakeKernel) -> None:
    from initpy.runtime.kernel import Completed
    from initpy.runtime.run import CommandFailed, run

    assert run(kernel, ["btrfs", "device", "scan"]).returncode == 0
    kernel.commands["nft"] = lambda argv: Completed(tuple(argv), 1, "", "Error: syntax error\n")
    with pytest.raises(CommandFailed, match="nft -f x: exit 1: Error: syntax error"):
        run(kernel, ["nft", "-f", "x"], fix="check the rules")
    assert "initpy: run: btrfs device scan" in kernel.kmsg_lines


# -- the real seam's process handling (no root needed) ----------------------------


def test_real_kernel_reaps_orphans_but_not_its_own_children() -> None:
    k = Kernel()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    time.sleep(0.2)  # the child is now a zombie that nobody waits for
    stop = threading.Event()

    def reaper() -> None:
        while not stop.is_set():
            k.reap_orphans()

    thread = threading.Thread(target=reaper)
    thread.start()
    try:
        results = [
            k.run([sys.executable, "-c", "import sys; sys.exit(7)"]).returncode for _ in range(5)
        ]
    finally:
        stop.set()
        thread.join()
    assert results == [7] * 5
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped by reap_orphans


def test_real_kernel_run_captures_and_times_out() -> None:
    k = Kernel()
    done = k.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    slow = k.run(["sleep", "5"], timeout=0.2)
    assert slow.returncode == -9


def test_real_kernel_write_atomic_replaces_whole_files(tmp_path: os.PathLike[str]) -> None:
    k = Kernel()
    target = os.path.join(str(tmp_path), "seed")
    k.write_atomic(target, b"old", 0o600)
    k.write_atomic(target, b"new contents", 0o600)
    assert open(target, "rb").read() == b"new contents"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert os.listdir(str(tmp_path)) == ["seed"]


def test_walk_command_runs_without_root() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "initpy",
            "walk",
            "--hooks",
            "",
            "--cmdline",
            "initpy.exec=/sbin/init buildos.bogus=1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "initpy: cmdline: warning: unknown parameter 'buildos.bogus'" in out.stdout
    assert "(walk) report.json outcome: handoff" in out.stdout
    assert out.returncode == 0


def test_walk_shows_the_words_for_init_on_the_hand_off(
    capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str]
) -> None:
    from initpy.devtools.walk import init_args_for, walk

    assert init_args_for('quiet splash 3 initpy.debug a=b "x y" -- single "-c z"') == (
        "splash",
        "3",
        "x y",
        "single",
        "-c z",
    )
    walk("quiet splash initpy.exec=/sbin/init -- single", [HOOKS_DIR], [], str(tmp_path))
    assert "(walk) the init would now exec /sbin/init splash single;" in capsys.readouterr().out


def test_reports_are_kept_on_state_and_rotated_once_per_boot(kernel: FakeKernel) -> None:
    from initpy.runtime.report import Outcome, Report

    for boot_number in range(12):
        report = Report(kernel, outcome=Outcome.HANDOFF, reason=f"boot {boot_number}")
        report.write(state_mounted=True)
        report.write(state_mounted=True)  # a second write in one boot does not rotate
    folder = kernel.path("/state/initpy/reports")
    assert sorted(os.listdir(folder)) == sorted(f"report.json.{i}" for i in range(10))
    newest = open(os.path.join(folder, "report.json.0")).read()
    oldest = open(os.path.join(folder, "report.json.9")).read()
    assert '"boot 11"' in newest and '"boot 2"' in oldest


def test_kernel_log_rate_limit_is_off_during_the_boot_and_restored(kernel: FakeKernel) -> None:
    seen: list[str] = []

    def look(ctx: BootContext) -> str:
        seen.append(ctx.kernel.read_text("/proc/sys/kernel/printk_devkmsg"))
        return "looked"

    run_boot(kernel, [Hook("look", "looks", (State("look", look, "looks"),))])
    assert seen == ["on\n"]  # every initpy: line reaches the kernel log
    assert kernel.read_text("/proc/sys/kernel/printk_devkmsg") == "ratelimit\n"
