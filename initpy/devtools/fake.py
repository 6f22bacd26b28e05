"""A fake kernel: the whole boot on a normal machine, without root.

`FakeKernel` replaces `initpy.runtime.kernel.Kernel`, the one seam, with a temporary
root folder and recorded answers. Files are read and written below the
root; syscalls (mount, reboot, finit_module, sethostname, execve, mknod)
are recorded in `calls` and answered from the script the test or the
operator gives. `reboot` and `execve` end the walk by raising `Halted`,
where a real kernel would never return. The file calls, and the owners the
fake models, are fake_files.py's.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar, cast

from initpy.devtools.fake_events import FloodingSocket, ScriptedUevents, UeventStep
from initpy.devtools.fake_files import FakeFiles
from initpy.devtools.fake_network import FakeNetlink
from initpy.runtime.kernel import DAEMON_NICE, Completed, Halted, Kernel, NetlinkSocket, ShellExit
from initpy.runtime.processes import SignalHandler, signal_handlers
from initpy.runtime.sockets import BatchReader
from initpy.runtime.uevent import NETLINK_KOBJECT_UEVENT

T = TypeVar("T")


class Rebooted(Halted):
    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class HandedOff(Halted):
    def __init__(self, path: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        super().__init__(path)
        self.path = path
        self.argv = list(argv)
        self.env = dict(env)


CommandAnswer = Completed | Callable[[Sequence[str]], Completed]


@dataclass
class FakeKernel(FakeFiles):
    """A machine made of a folder and a script of answers."""

    root: str
    cmdline: str = "console=ttyS0"
    environment: dict[str, str] = field(
        default_factory=lambda: {
            "HOME": "/",
            "TERM": "linux",
            "LD_LIBRARY_PATH": "/usr/lib/initpy/_internal",
            "_PYI_ARCHIVE_FILE": "/init",
            "_MEIPASS2": "/usr/lib/initpy/_internal",
        }
    )
    # The arguments the kernel started init with (Kernel.init_args): the
    # bare words and the words after `--` of `cmdline`, as a real kernel
    # would pass them; a test sets both.
    kernel_argv: tuple[str, ...] = ()
    # Syscall failures to inject: call name -> {first argument -> errno}.
    # "mkdir": {path: errno} fails mkdir. "write": {path: errno} fails a write
    # of path where a disk would: ENOSPC, EDQUOT, EIO, EFBIG after part of the
    # data (write_atomic then holds a partial temporary file); EEXIST leaves a
    # stale temporary file at write_atomic's temporary path first; any other
    # (EROFS, EACCES) when the file is created. "rename", "chown": {path: errno}.
    failures: dict[str, dict[str, int]] = field(default_factory=dict)
    # Owners of guest paths, (uid, gid); any other is root's (fake_files.py).
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Commands: the first argv word -> answer (a Completed or a function).
    commands: dict[str, CommandAnswer] = field(default_factory=dict)
    # What each interactive shell does, in order; empty means "exit 0".
    shells: list[ShellExit] = field(default_factory=list)
    # Block devices: /dev path -> image bytes (read by read_bytes).
    block_devices: dict[str, bytes] = field(default_factory=dict)
    calls: list[tuple[object, ...]] = field(default_factory=list)
    console_lines: list[str] = field(default_factory=list)
    kmsg_lines: list[str] = field(default_factory=list)
    clock: float = 1.0
    # The CPUs the init may run on (the module loader starts one thread each).
    cpu_count: int = 2
    echo: bool = False
    # Network: scripted NICs and DHCP answers (default: one QEMU user-net NIC);
    # daemons the boot forked (the DHCP renewer), by name, not run.
    network: FakeNetlink = field(default_factory=FakeNetlink.qemu_user)
    daemons: dict[str, Callable[[], None]] = field(default_factory=dict)
    # the joinable ones not yet joined, by pid: join_daemon runs them
    joinable: dict[int, Callable[[], None]] = field(default_factory=dict)
    # Storage: uevents delivered one step per receive (see ScriptedUevents);
    # failures={"uevents": {"netlink": errno}} makes the socket unavailable.
    uevent_script: list[UeventStep] = field(default_factory=list)
    # Netlink protocol -> the datagram a FloodingSocket repeats forever, one
    # each `flood_every` fake seconds (a device that never stops flapping).
    floods: dict[int, bytes] = field(default_factory=dict)
    flood_every: float = 0.001
    flooding: list[FloodingSocket] = field(default_factory=list)
    # A flood past this fake time fails the test: a wait that ignores its
    # deadline would otherwise read the endless stream forever.
    flood_until: float = 600.0
    # What take_signals installed: `deliver(signo)` runs it as the kernel would.
    signal_table: dict[int, SignalHandler] = field(default_factory=dict)
    # TCP: "host:port" the boot connects to -> the real (address, port) the
    # fake connects to instead (a test's SMTP sink on 127.0.0.1); any other
    # is refused, so a walk never reaches a real server.
    # failures={"connect": {"host:port": errno}} fails one.
    tcp_routes: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Threads the boot started (start_thread), by name: recorded, not run;
    # a test runs one when it wants.
    threads: dict[str, Callable[[], None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Kernel.__init__(self)
        self._write_fault: int | None = None
        os.makedirs(self.root, exist_ok=True)
        self._write_seed("proc/cmdline", self.cmdline + "\n")
        self._write_seed("proc/self/mounts", "rootfs / rootfs rw 0 0\n")
        self._write_seed("proc/sys/kernel/printk_devkmsg", "ratelimit\n")

    def _write_seed(self, relative: str, text: str) -> None:
        path = os.path.join(self.root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(text)

    # -- time ---------------------------------------------------------------------

    def monotonic(self) -> float:
        return self.clock

    def uptime(self) -> float:
        self.clock += 0.001
        return self.clock

    def getpid(self) -> int:
        return 1

    def cpus(self) -> int:
        return self.cpu_count

    def sleep(self, seconds: float) -> None:
        self.calls.append(("sleep", seconds))
        self.clock += seconds

    def environ(self) -> dict[str, str]:
        return dict(self.environment)

    def init_args(self) -> tuple[str, ...]:
        return self.kernel_argv

    # -- files ---------------------------------------------------------------------
    # -- syscalls ------------------------------------------------------------------

    def mknod(self, path: str, mode: int, major: int, minor: int) -> None:
        self.calls.append(("mknod", path, major, minor))
        self._fail("mknod", path)
        with open(self.path(path), "w"):
            pass

    def mount(
        self, source: str, target: str, fstype: str, flags: int = 0, options: str = ""
    ) -> None:
        self.calls.append(("mount", source, target, fstype, flags, options))
        self._fail("mount", target)
        if not os.path.isdir(self.path(target)):
            raise OSError(errno.ENOENT, f"mount {target}: no such directory")
        with open(self.path("/proc/self/mounts"), "a") as f:
            f.write(f"{source} {target} {fstype} rw 0 0\n")

    def umount(self, target: str) -> None:
        self.calls.append(("umount", target))
        self._fail("umount", target)
        mounts = self.path("/proc/self/mounts")
        with open(mounts) as f:
            lines = [ln for ln in f if ln.split()[1:2] != [target]]
        with open(mounts, "w") as f:
            f.writelines(lines)

    def attach_loop(self, path: str) -> str:
        self.calls.append(("attach_loop", path))
        self._fail("attach_loop", path)
        if not os.path.isfile(self.path(path)):
            raise OSError(errno.ENOENT, f"attach_loop {path}: no such file")
        return "/dev/loop0"

    def finit_module(self, path: str, params: str = "") -> None:
        self.calls.append(("finit_module", path, params))
        self._fail("finit_module", path)

    def sethostname(self, name: str) -> None:
        self.calls.append(("sethostname", name))
        self._fail("sethostname", name)
        self.write_text("/proc/sys/kernel/hostname", name + "\n")

    def reboot(self, how: str) -> None:
        self.calls.append(("reboot", how))
        self._fail("reboot", how)
        raise Rebooted(how)

    def execve(self, path: str, argv: Sequence[str], env: Mapping[str, str]) -> NoReturn:
        self.calls.append(("execve", path, tuple(argv)))
        self._fail("execve", path)
        host = self.path(path)
        if not os.path.exists(host):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if not os.access(host, os.X_OK):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        raise HandedOff(path, argv, env)

    # -- signals -------------------------------------------------------------------

    def take_signals(self, on_interrupt: Callable[[], None]) -> None:
        """The real seam's handlers, kept here instead of installed in the test process."""
        self.calls.append(("take_signals",))
        self.signal_table = signal_handlers(on_interrupt)

    def deliver(self, signo: int) -> None:
        """A signal arrives now, in the middle of whatever the boot is doing."""
        self.calls.append(("signal", signo))
        handler = self.signal_table.get(signo)
        if handler is not None:
            handler(signo, None)
        elif signo == signal.SIGINT:  # CPython's own handler, until take_signals
            raise KeyboardInterrupt
        # any other: SIG_DFL, which the kernel never delivers to init

    # -- console and processes ----------------------------------------------------

    def console(self, line: str) -> None:
        self.console_lines.append(line)
        if self.echo:
            print(line, flush=True)

    def kmsg(self, line: str) -> None:
        self.kmsg_lines.append(line)

    def run(
        self,
        argv: Sequence[str],
        input: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        self.calls.append(("run", tuple(argv)))
        answer = self.commands.get(argv[0]) or self.commands.get(os.path.basename(argv[0]))
        if answer is None:  # an unscripted command succeeds silently
            return Completed(tuple(argv), 0, "", "")
        return answer(argv) if callable(answer) else answer

    def run_shell(
        self, argv: Sequence[str], env: Mapping[str, str], idle_timeout: float | None = None
    ) -> ShellExit:
        self.calls.append(("shell", tuple(argv), idle_timeout, dict(env)))
        self._fail("shell", argv[0])  # e.g. {"shell": {"/bin/sh": ENOENT}}: no busybox
        result = self.shells.pop(0) if self.shells else ShellExit(0)
        if result.idle_timeout and idle_timeout is None:
            raise AssertionError("fake kernel: an idle shell timed out without a timeout set")
        return result

    def reap_orphans(self) -> list[int]:
        return []

    # -- storage: kernel uevents and the random seed (hooks/storage) -----

    def netlink_socket(self, protocol: int, groups: int) -> NetlinkSocket:
        """Uevents from `uevent_script`, or a flood from `floods` read by the seam's BatchReader.

        failures={"uevents": {"netlink": errno}} denies the uevent socket.
        """

        def advance(seconds: float) -> None:
            self.clock += seconds

        def flow(seconds: float) -> None:
            advance(seconds)
            if self.clock > self.flood_until:
                raise AssertionError(
                    f"the event flood ran to {self.clock:g} s of fake time: a wait went "
                    "past its deadline"
                )

        if protocol in self.floods:
            flood = FloodingSocket(self.floods[protocol], flow, self.flood_every)
            self.flooding.append(flood)
            return BatchReader(flood)
        if protocol != NETLINK_KOBJECT_UEVENT:
            raise OSError(errno.EPROTONOSUPPORT, f"fake kernel: no netlink protocol {protocol}")
        self.calls.append(("uevents",))
        self._fail("uevents", "netlink")
        return ScriptedUevents(self.uevent_script, advance)

    def netlink_requests(self, protocol: int, timeout: float = 5.0) -> socket.socket:
        """Refused: the fake's rtnetlink is `network`, through library("rtnetlink")."""
        raise OSError(errno.EPERM, "fake kernel: no netlink requests; the network is scripted")

    def packet_socket(self, interface: str, ethertype: int = 0x0800) -> socket.socket:
        """Refused: the fake's DHCP answers come from `network` (FakeNetlink)."""
        raise OSError(errno.EPERM, "fake kernel: no packet sockets; the network is scripted")

    def start_thread(self, name: str, target: Callable[[], None]) -> None:
        self.calls.append(("thread", name))
        self.threads[name] = target

    def connect_tcp(self, host: str, port: int, timeout: float) -> socket.socket:
        key = f"{host}:{port}"
        self.calls.append(("connect", key, timeout))
        self._fail("connect", key)
        route = self.tcp_routes.get(key)
        if route is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"fake kernel: no route to {key}")
        return socket.create_connection(route, timeout=timeout)

    def library(self, name: str, real: Callable[[], T]) -> T:
        """The scripted stand-in: "rtnetlink" is `self.network`, bound to this clock."""
        if name == "rtnetlink":
            self.network.attach(self)
            return cast(T, self.network)
        raise AssertionError(f"fake kernel: no stand-in for the library {name!r}")

    def random_bytes(self, size: int) -> bytes:
        """Different on every call, also across fake kernels (a reboot is a new one)."""
        self.calls.append(("random_bytes", size))
        return os.urandom(size)

    def feed_urandom(self, data: bytes) -> None:
        """Kept in the fake root's /dev/urandom, so tests can read what was fed."""
        self.calls.append(("feed_urandom", len(data)))
        os.makedirs(self.path("/dev"), exist_ok=True)
        with open(self.path("/dev/urandom"), "ab") as f:
            f.write(data)

    def add_block_device(
        self,
        name: str,
        image: bytes,
        size: int = 1 << 30,
        parent: str | None = None,
        model: str = "",
        rotational: bool = True,
        serial: str = "",
    ) -> None:
        """A disk (or, with `parent`, a partition) laid out in /sys as the kernel does.

        /sys/class/block/NAME links into /sys/devices/..., a partition sits in
        its disk's folder; `image` is what reading /dev/NAME returns.
        """
        folder = "/sys/devices/virtual/block/" + (f"{parent}/{name}" if parent else name)
        files = {"size": str(size // 512), "dev": f"254:{len(self.block_devices)}"}
        if parent:
            files["partition"] = "1"
        else:
            files["queue/rotational"] = "1" if rotational else "0"
            files["device/model" if model else "device/modalias"] = (
                model or "virtio:d00000002v00001AF4"
            )
            if serial:
                files["serial"] = serial
        for relative, text in files.items():
            path = self.path(f"{folder}/{relative}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text + "\n")
        os.makedirs(self.path("/sys/class/block"), exist_ok=True)
        os.symlink(f"../..{folder.removeprefix('/sys')}", self.path(f"/sys/class/block/{name}"))
        self.block_devices[f"/dev/{name}"] = image

    # -- network: netlink and the lease renewer (hooks/network) ----------

    def spawn_daemon(
        self,
        name: str,
        target: Callable[[], None],
        nice: int = DAEMON_NICE,
        joinable: bool = False,
    ) -> int:
        """Recorded, not run: the daemon would run forever; a joinable one runs when joined."""
        self.calls.append(("spawn_daemon", name))
        self.daemons[name] = target
        pid = 4242 + len(self.calls)
        if joinable:
            self.joinable[pid] = target
        return pid

    def join_daemon(self, pid: int) -> int:
        """Run the joinable daemon's `target` now, in this process, as the fork would have."""
        self.calls.append(("join_daemon", pid))
        target = self.joinable.pop(pid)
        try:
            target()
        except Exception:
            return 1
        return 0

    def syscalls(self, name: str) -> list[tuple[object, ...]]:
        return [c for c in self.calls if c[0] == name]
