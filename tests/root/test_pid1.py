"""The real frozen init as PID 1 of a PID namespace: nothing may end it (issue 9).

The unit tests run driver.main on the fake kernel; these run the real
entry point, frozen by the real mkinitrd (`--hooks probe` from
tests/root/pid1_hooks, plus the modules and rescue_tools hooks every build
has, `--compress none`), unpacked with initpy.builder.cpio into a
temporary root. Each boot is `unshare --pid --fork --mount
--propagation private`, then chroot into that root and exec /init: the
init is PID 1 of its namespace, and its mounts stay in a private mount
namespace that dies with it.

What the namespace gives it instead of the host's:
- /proc/cmdline: a file of the test's command line, bound over it;
- /proc/sys/kernel/printk_devkmsg and modprobe: files bound over them, so
  that the init's sysctl writes do not change the host;
- /sys: an empty tmpfs, so that busybox cttyhack does not find the host's
  console and the rescue shell reads the test's pipe;
- argv: what the kernel would give init for that command line.

The initrd's kernel modules are for the VM tier's kernel, not this host's,
so load_modules fails: that is the "failing state" case. Where a test needs
the boot to reach the hand-off, its copy of the root lists no modules in
the manifest.

reboot(2) in a child PID namespace kills its init with SIGHUP (restart)
or SIGINT (power off, halt); `unshare` dies of the same signal. So every
test ends with the namespace rebooted or powered off through the seam, or
still alive; an exit with a status (what panics a real kernel) fails it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from initpy.builder import cpio
from initpy.runtime import layout

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.getuid() != 0, reason="needs root (PID and mount namespaces, chroot)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare"),
]

REPO = Path(__file__).resolve().parents[2]
PROBE_HOOKS = Path(__file__).parent / "pid1_hooks"
HANDOFF_PROGRAM = "/usr/bin/initpy-args"
BOOT_TIMEOUT = 30.0
# Inside the new namespaces, as their PID 1, before it becomes the init.
NAMESPACE_SETUP = r"""
set -e
root=$1; work=$2; shift 2
mount -t proc proc "$root/proc"
mount --bind "$work/cmdline" "$root/proc/cmdline"
for sysctl in printk_devkmsg modprobe; do
    if [ -e "$root/proc/sys/kernel/$sysctl" ]; then
        mount --bind "$work/$sysctl" "$root/proc/sys/kernel/$sysctl"
    fi
done
mount -t tmpfs -o size=64k,mode=0755 no-sysfs "$root/sys"
chroot=$(command -v chroot)
exec env -i HOME=/ TERM=linux "$chroot" "$root" /init "$@"
"""


@pytest.fixture(scope="session")
def pid1_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real mkinitrd's initrd, unpacked: the kernel must come, never a skip."""
    fetched = subprocess.run(
        [str(REPO / "scripts" / "fetch-kernel")], capture_output=True, text=True, check=False
    )
    assert fetched.returncode == 0, f"scripts/fetch-kernel failed:\n{fetched.stderr}"
    kernel = Path(fetched.stdout.strip().splitlines()[-1])
    out = tmp_path_factory.mktemp("pid1-initrd")
    built = subprocess.run(
        [
            sys.executable,
            str(REPO / "mkinitrd.py"),
            "--kernel",
            str(kernel / "vmlinuz"),
            "--modules",
            str(kernel / "modules"),
            "-o",
            str(out),
            "--hooks",
            "probe",
            "--hooks-dir",
            str(PROBE_HOOKS),
            "--compress",
            "none",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr
    tree = out / "root"
    unpack(cpio.decompress((out / "buildos-initrd").read_bytes()), tree)
    return tree


def unpack(archive: bytes, top: Path) -> None:
    """Every member of a newc archive under `top`, with modes.

    Not the device nodes (/dev/console, /dev/kmsg): the init mounts
    devtmpfs over /dev, and a copy of the tree would read them as files.
    """
    top.mkdir()
    modes: list[tuple[Path, int]] = []
    for member in cpio.read_newc(archive):
        path = top / member.path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = stat.S_IFMT(member.mode)
        if kind == stat.S_IFDIR:
            path.mkdir(exist_ok=True)
            modes.append((path, stat.S_IMODE(member.mode)))
        elif kind == stat.S_IFLNK:
            os.symlink(member.data.decode(), path)
        elif kind == stat.S_IFREG:
            path.write_bytes(member.data)
            path.chmod(stat.S_IMODE(member.mode))
    for path, mode in modes:
        path.chmod(mode)


@dataclass
class Pid1:
    """One boot of the real init as PID 1 of its own namespaces."""

    process: subprocess.Popen[bytes]
    output: bytearray = field(default_factory=bytearray)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := os.read(self.process.stdout.fileno(), 65536):
            with self.lock:
                self.output += chunk

    @property
    def console(self) -> str:
        with self.lock:
            return self.output.decode(errors="replace")

    def expect(self, pattern: str, timeout: float = BOOT_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.console, re.M)
            if found:
                return found
            if self.process.poll() is not None:
                time.sleep(0.2)  # the last output may still be in the pipe
                found = re.search(pattern, self.console, re.M)
                if found:
                    return found
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no {pattern!r} on the console (unshare: {self.process.poll()}):\n{self.console}"
        )

    def init_pid(self) -> int:
        """The init's PID on the host: the child of `unshare`."""
        path = f"/proc/{self.process.pid}/task/{self.process.pid}/children"
        for _ in range(200):
            children = Path(path).read_text().split() if os.path.exists(path) else []
            if children:
                return int(children[0])
            time.sleep(0.02)
        raise AssertionError(f"unshare {self.process.pid} started no init:\n{self.console}")

    def signal(self, signo: int) -> None:
        os.kill(self.init_pid(), signo)

    def alive(self) -> bool:
        if self.process.poll() is not None:
            return False
        status = Path(f"/proc/{self.init_pid()}/stat").read_text()
        return status.rsplit(")", 1)[1].split()[0] != "Z"

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def ended_by(self, timeout: float = BOOT_TIMEOUT) -> int:
        """The signal that ended the namespace's init; fails on an exit with a status."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"PID 1 still runs after {timeout} s:\n{self.console}") from None
        assert code < 0, f"PID 1 EXITED with status {code} (a kernel panic):\n{self.console}"
        return -code


class Boot(Protocol):
    """The `boot` fixture: start the frozen init as PID 1 of a new namespace."""

    def __call__(
        self, command_line: str, argv: Sequence[str] = (), root: Path | None = None
    ) -> Pid1: ...


@pytest.fixture
def boot(pid1_initrd: Path, tmp_path: Path) -> Iterator[Boot]:
    """`boot(cmdline, argv, root=...)` starts the init; everything is cleaned by PID."""
    started: list[Pid1] = []

    def start(command_line: str, argv: Sequence[str] = (), root: Path | None = None) -> Pid1:
        work = tmp_path / f"work{len(started)}"
        work.mkdir()
        (work / "cmdline").write_text(command_line + "\n")
        (work / "printk_devkmsg").write_text("ratelimit\n")
        (work / "modprobe").write_text("/sbin/modprobe\n")
        process = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--propagation",
                "private",
                "/bin/sh",
                "-c",
                NAMESPACE_SETUP,
                "sh",
                str(root or pid1_initrd),
                str(work),
                *argv,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        pid1 = Pid1(process)
        started.append(pid1)
        return pid1

    yield start
    for pid1 in started:
        if pid1.process.poll() is None:
            try:
                os.kill(pid1.init_pid(), signal.SIGKILL)  # by PID: the namespace goes with it
            except (ProcessLookupError, AssertionError):
                pid1.process.kill()
            pid1.process.wait(10)


def root_copy(pid1_initrd: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(pid1_initrd, copy, symlinks=True)
    return copy


def without_modules(root: Path) -> None:
    """The host's kernel is not the one the modules were built for: pack none."""
    manifest_path = root / layout.MANIFEST.lstrip("/")
    manifest = json.loads(manifest_path.read_text())
    manifest["modules"] = []
    manifest_path.write_text(json.dumps(manifest))


def with_handoff_program(root: Path) -> None:
    """The program the init execs: prints its PID and argv, then powers off (SIGINT)."""
    program = root / HANDOFF_PROGRAM.lstrip("/")
    program.write_text(
        "#!/bin/sh\n"
        'echo "handoff-pid=$$"\n'
        'for word in "$@"; do echo "handoff-arg=$word"; done\n'
        "echo handoff-done\n"
        "exec /usr/bin/busybox poweroff -f\n"
    )
    program.chmod(0o755)


def without_shell(root: Path) -> None:
    for name in ("usr/bin/busybox", "bin/busybox", "usr/bin/sh", "bin/sh"):
        path = root / name
        if path.is_symlink() or path.exists():
            path.unlink()


# -- argv words ---------------------------------------------------------------------


def test_words_for_init_reach_the_hand_off_and_never_stop_pid1(
    boot: Boot, pid1_initrd: Path, tmp_path: Path
) -> None:
    """splash, 3, -h, --help, -c: what the kernel gives init; Python and argparse must ignore."""
    root = root_copy(pid1_initrd, tmp_path, "handoff")
    without_modules(root)
    with_handoff_program(root)
    command_line = (
        f"console=ttyS0 quiet splash 3 -h initpy.exec={HANDOFF_PROGRAM} -- single --help -c x"
    )
    argv = ["splash", "3", "-h", "single", "--help", "-c", "x"]
    pid1 = boot(command_line, argv, root)
    pid1.expect(r"^handoff-done$")
    assert pid1.ended_by() == signal.SIGINT  # the program's poweroff -f
    assert re.findall(r"^handoff-arg=(.*)$", pid1.console, re.M) == argv
    assert "handoff-pid=1" in pid1.console
    assert f"initpy: handoff: exec {HANDOFF_PROGRAM}" in pid1.console
    assert "cmdline: warning" not in pid1.console  # the words after -- are argv's tail


# -- signals ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["state", "rescue shell"])
def test_sigterm_and_sighup_change_nothing_and_sigint_twice_reboots_cleanly(
    boot: Boot, pid1_initrd: Path, tmp_path: Path, where: str
) -> None:
    if where == "state":
        root = root_copy(pid1_initrd, tmp_path, "sleeper")
        without_modules(root)
        pid1 = boot("initpy.probe=sleep", root=root)
        pid1.expect(r"initpy: probe: sleeping")
    else:  # load_modules fails: the host's kernel is not the initrd's
        pid1 = boot("console=ttyS0")
        pid1.expect(r"initpy: rescue: starting /bin/sh")
    for signo in (signal.SIGTERM, signal.SIGHUP):
        pid1.signal(signo)
    time.sleep(1.0)
    assert pid1.alive(), pid1.console
    pid1.signal(signal.SIGINT)
    pid1.signal(signal.SIGINT)
    assert pid1.ended_by() == signal.SIGHUP  # reboot(2): the seam's restart
    assert pid1.console.count("initpy: rescue: SIGINT (Ctrl-Alt-Del): rebooting cleanly") == 1
    assert "Traceback" not in pid1.console and "KeyboardInterrupt" not in pid1.console


# -- a failing state, a missing shell ------------------------------------------------


@pytest.mark.parametrize(
    ("probe", "reason"),
    [
        ("raise", "probe: unexpected error: RuntimeError: the probe failed on purpose"),
        ("exit", "probe: unexpected error: SystemExit: 3"),
        ("interrupt", "probe: unexpected error: KeyboardInterrupt"),
    ],
)
def test_a_failing_state_follows_the_rescue_policy(
    boot: Boot, pid1_initrd: Path, tmp_path: Path, probe: str, reason: str
) -> None:
    root = root_copy(pid1_initrd, tmp_path, "probe")
    without_modules(root)
    pid1 = boot(f"initpy.probe={probe} initpy.rescue=poweroff", root=root)
    assert pid1.ended_by() == signal.SIGINT  # reboot(2) with POWER_OFF
    assert f"initpy: rescue: {reason}" in pid1.console, pid1.console
    assert "initpy: rescue: poweroff" in pid1.console


def test_a_real_failing_state_gives_a_working_rescue_shell_and_leaving_it_reboots(
    boot: Boot,
) -> None:
    pid1 = boot("console=ttyS0")
    pid1.expect(r"initpy: rescue: load_modules: this kernel is ")
    pid1.expect(r"initpy: rescue: starting /bin/sh")
    pid1.send("echo alive-$((6 * 7)) pid-$$")
    pid1.expect(r"^alive-42 pid-\d+$")
    assert pid1.alive()
    pid1.send("exit 5")
    pid1.expect(r"initpy: rescue: shell left with status 5; rebooting")
    assert pid1.ended_by() == signal.SIGHUP


def test_a_missing_shell_waits_then_reboots_and_a_sigint_in_the_wait_too(
    boot: Boot, pid1_initrd: Path, tmp_path: Path
) -> None:
    root = root_copy(pid1_initrd, tmp_path, "noshell")
    without_shell(root)
    pid1 = boot("console=ttyS0", root=root)
    pid1.expect(r"initpy: rescue: cannot start /bin/sh \(.*\); rebooting in 30 s")
    time.sleep(1.0)
    assert pid1.alive(), pid1.console  # in the 30 s sleep
    pid1.signal(signal.SIGINT)
    assert pid1.ended_by() == signal.SIGHUP


def test_a_break_without_a_shell_follows_the_rescue_policy(
    boot: Boot, pid1_initrd: Path, tmp_path: Path
) -> None:
    root = root_copy(pid1_initrd, tmp_path, "nobreakshell")
    without_shell(root)
    without_modules(root)
    pid1 = boot("initpy.break=probe initpy.rescue=poweroff", root=root)
    assert pid1.ended_by() == signal.SIGINT
    assert "initpy: rescue: probe: break: cannot start /bin/sh" in pid1.console


def test_no_init_to_hand_off_to_is_a_rescue_not_busybox_init(
    boot: Boot, pid1_initrd: Path, tmp_path: Path
) -> None:
    """The initrd has no --rootfs: /sbin/init is busybox's, and it must not be run."""
    root = root_copy(pid1_initrd, tmp_path, "nosystemd")
    without_modules(root)
    assert os.readlink(root / "usr/sbin/init") == "/usr/bin/busybox"
    pid1 = boot("initpy.rescue=poweroff", root=root)
    assert pid1.ended_by() == signal.SIGINT
    assert "/sbin/init: busybox's init, not taken" in pid1.console
    assert "initpy: handoff: exec" not in pid1.console
