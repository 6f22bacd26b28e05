"""The kernel seam: every syscall and every host file access of the boot.

Everything the init does to the machine goes through one `Kernel` object:
mounts, reboot, module loading, the hostname, exec, device nodes, /dev/kmsg,
reads of /proc and /sys, block-device reads, file writes, child processes and
the console. Tests and the no-root "walk" replace this object with
`initpy.devtools.fake.FakeKernel`, and nothing else, to fake a whole machine.

This module is what callers import; three siblings hold parts of its code:
files.py (reads, atomic writes, folders, owners and modes), processes.py
(children, shells, daemons, the reaper) and sockets.py (netlink, packet
and TCP sockets). The types in the Kernel's signatures are
re-exported here. Only the standard library and those leaf siblings (and
initpy.runtime.record, which imports nothing) are imported: this module is
on PID 1's start-up path.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn, TypeVar

from initpy.runtime import sockets
from initpy.runtime.files import Files
from initpy.runtime.processes import DAEMON_NICE as DAEMON_NICE
from initpy.runtime.processes import Completed as Completed
from initpy.runtime.processes import Processes, signal_handlers
from initpy.runtime.processes import ShellExit as ShellExit
from initpy.runtime.sockets import NetlinkSocket as NetlinkSocket

T = TypeVar("T")

# mount(2) flags, from <sys/mount.h>.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8

# reboot(2) commands, from <linux/reboot.h>.
_LINUX_REBOOT_CMD_RESTART = 0x01234567
_LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
_LINUX_REBOOT_CMD_HALT = 0xCDEF0123
REBOOT_COMMANDS = {
    "reboot": _LINUX_REBOOT_CMD_RESTART,
    "poweroff": _LINUX_REBOOT_CMD_POWER_OFF,
    "halt": _LINUX_REBOOT_CMD_HALT,
}
# Ctrl-Alt-Del sends SIGINT to init instead of rebooting at once.
_LINUX_REBOOT_CMD_CAD_OFF = 0

# The loop driver's ioctls, from <linux/loop.h>.
_LOOP_CTL = "/dev/loop-control"
_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_SET_FD = 0x4C00
_SYS_FINIT_MODULE = 313  # x86_64
_MODULE_INIT_COMPRESSED_FILE = 4


class Halted(BaseException):
    """Raised by a fake kernel where a real one would never return."""


class KernelError(OSError):
    """A syscall failed; the message names the call and its arguments."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise KernelError(err, f"{what}: {os.strerror(err)}")
    return result


class Kernel(Files):
    """The real machine. One instance lives in PID 1."""

    def __init__(self, watch_orphans: bool | None = None) -> None:
        # The children in flight and the reaper (processes.py); with
        # `watch_orphans` (default: as PID 1) it scans only after a SIGCHLD.
        self.processes = Processes(watch_orphans)
        self._kmsg: int | None = None
        self._kmsg_priority = 6
        # Reentrant: the SIGINT handler prints from the main thread, perhaps
        # while that thread is inside console() already.
        self._console_lock = threading.RLock()

    # -- time and identity -------------------------------------------------

    def monotonic(self) -> float:
        return time.monotonic()

    def uptime(self) -> float:
        """Seconds since the kernel started (CLOCK_BOOTTIME)."""
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def getpid(self) -> int:
        return os.getpid()

    def cpus(self) -> int:
        """How many CPUs this process may run on (at least 1)."""
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            return 1

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def environ(self) -> dict[str, str]:
        return dict(os.environ)

    def init_args(self) -> tuple[str, ...]:
        """The arguments the kernel started init with, as it passed them.

        The kernel gives init, as argv, every word of its command line it
        did not take itself and that has no `=` or `.` (`splash`, `single`,
        `3`), then every word after `--`. They are never parsed here: the
        hand-off passes them on, as systemd expects.
        """
        return tuple(sys.argv[1:])

    # -- devices, mounts, modules -------------------------------------------

    def mknod(self, path: str, mode: int, major: int, minor: int) -> None:
        os.mknod(path, mode, os.makedev(major, minor))

    def mount(
        self, source: str, target: str, fstype: str, flags: int = 0, options: str = ""
    ) -> None:
        res = _libc().mount(
            source.encode(),
            target.encode(),
            fstype.encode(),
            ctypes.c_ulong(flags),
            options.encode() if options else None,
        )
        _check(res, f"mount -t {fstype} {source} {target} -o {options or 'defaults'}")

    def umount(self, target: str) -> None:
        _check(_libc().umount2(target.encode(), 0), f"umount {target}")

    def attach_loop(self, path: str) -> str:
        """Back a free loop device with the file `path`, read-only; returns the device.

        The file is opened read-only, so the kernel makes the device
        read-only too. The device stays attached for the host's life.
        """
        import fcntl  # only the os_image hook's boot attaches a loop device

        control = os.open(_LOOP_CTL, os.O_RDWR | os.O_CLOEXEC)
        try:
            device = f"/dev/loop{fcntl.ioctl(control, _LOOP_CTL_GET_FREE)}"
        finally:
            os.close(control)
        backing = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            loop = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(loop, _LOOP_SET_FD, backing)
            finally:
                os.close(loop)
        finally:
            os.close(backing)
        return device

    def finit_module(self, path: str, params: str = "") -> None:
        """Load one module file; `EEXIST` (already loaded) is not an error."""
        flags = 0 if path.endswith(".ko") else _MODULE_INIT_COMPRESSED_FILE
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            res = _libc().syscall(_SYS_FINIT_MODULE, fd, params.encode(), flags)
            if res < 0:
                err = ctypes.get_errno()
                if err == errno.EEXIST:
                    return
                raise KernelError(err, f"finit_module {path}: {os.strerror(err)}")
        finally:
            os.close(fd)

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        _check(_libc().sethostname(raw, len(raw)), f"sethostname {name}")

    def reboot(self, how: str) -> None:
        """Sync and reboot, power off or halt. Returns only if the call failed."""
        os.sync()
        _check(_libc().reboot(ctypes.c_int(REBOOT_COMMANDS[how])), f"reboot({how})")

    def execve(self, path: str, argv: Sequence[str], env: Mapping[str, str]) -> NoReturn:
        """Replace PID 1 with `path`, with the signal state a fresh init expects.

        Caught signals fall back to their defaults by themselves; CPython's
        SIG_IGN for SIGPIPE and SIGXFSZ, and a blocked mask, would be
        inherited, so they are put back first.
        """
        sys.stdout.flush()
        sys.stderr.flush()
        for signo in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(signo, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execve(path, list(argv), dict(env))

    # -- signals ---------------------------------------------------------------

    def take_signals(self, on_interrupt: Callable[[], None]) -> None:
        """Decide what every signal means to PID 1 (see `signal_handlers`).

        Also asks the kernel to turn Ctrl-Alt-Del into a SIGINT to init
        rather than an immediate reboot without a sync, as systemd and
        busybox init do; outside the first PID namespace the kernel refuses,
        which does not matter.
        """
        for signo, handler in signal_handlers(on_interrupt).items():
            signal.signal(signo, handler)
            # SIGTERM and SIGHUP mean nothing: they must not make a ctypes
            # syscall fail with EINTR. SIGINT reboots, so it may interrupt.
            signal.siginterrupt(signo, signo == signal.SIGINT)
        if os.getpid() == 1:
            _libc().reboot(ctypes.c_int(_LINUX_REBOOT_CMD_CAD_OFF))

    # -- console and kernel log ---------------------------------------------

    def console(self, line: str) -> None:
        with self._console_lock:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except Exception:  # OSError, or a reentrant write from a signal handler
                pass

    def kmsg(self, line: str) -> None:
        """Append a line to the kernel log, without printing it twice.

        Every line is also written to the console by `console()`. When the
        kernel's console log level would print an info line too (the
        default, without `quiet`), the copy goes in at debug priority, which
        dmesg keeps but the console does not show.
        """
        try:
            if self._kmsg is None:
                self._kmsg = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
                self._kmsg_priority = 7 if _console_loglevel() > 6 else 6
            os.write(self._kmsg, f"<{self._kmsg_priority}>{line}\n".encode()[:1000])
        except OSError:
            pass

    # -- child processes -----------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        input: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        """Run a command to completion, capturing its output."""
        return self.processes.run(argv, input, timeout, env)

    def run_shell(
        self, argv: Sequence[str], env: Mapping[str, str], idle_timeout: float | None = None
    ) -> ShellExit:
        """Run an interactive program on the console and wait for it.

        With `idle_timeout`, the program is killed once the console has seen
        no input for that long; the console's access time tells (as `w` does).
        """
        return self.processes.run_shell(argv, env, idle_timeout)

    def reap_orphans(self) -> list[int]:
        """Reap the zombies PID 1 inherited, never a child that run() waits for."""
        return self.processes.reap_orphans()

    # -- netlink sockets and libraries that talk to the kernel themselves ------

    def netlink_socket(self, protocol: int, groups: int) -> NetlinkSocket:
        """A datagram netlink socket bound to multicast `groups` (OSError if none).

        The hooks read kernel events through it: uevents
        (NETLINK_KOBJECT_UEVENT) for block devices, link changes
        (NETLINK_ROUTE, RTMGRP_LINK) for carrier.
        """
        return sockets.netlink_listener(protocol, groups)

    def netlink_requests(self, protocol: int, timeout: float = 5.0) -> socket.socket:
        """A netlink socket for requests and their answers (no multicast groups).

        The network hook talks rtnetlink through it (hooks/network/rtnetlink.py):
        the few messages the boot sends once, without a library's machinery.
        `timeout` bounds every receive, so a missing answer is an OSError,
        never a hang of PID 1.
        """
        return sockets.netlink_requests(protocol, timeout)

    def packet_socket(self, interface: str, ethertype: int = 0x0800) -> socket.socket:
        """A non-blocking packet socket on one interface (AF_PACKET, SOCK_DGRAM).

        The DHCP client sends and receives its IPv4 frames through it before
        the interface has an address; the kernel adds and strips the
        Ethernet header (`sendto(data, (interface, ethertype, 0, 0, mac))`),
        and `recvfrom` names the sender's MAC.
        """
        return sockets.packet_socket(interface, ethertype)

    def connect_tcp(self, host: str, port: int, timeout: float) -> socket.socket:
        """A TCP connection to `host`:`port` (the rescue's mail to the relay).

        Through the seam so that a fake kernel (unit tests, `initpy walk` on
        a laptop) never reaches the real relay: it connects where its script
        says, or is refused. `timeout` bounds the connect and every later
        send and receive; a host name is resolved by the C library first,
        as /etc/resolv.conf says (the network hook writes it from the lease).
        """
        return sockets.connect_tcp(host, port, timeout)

    def library(self, name: str, real: Callable[[], T]) -> T:
        """The handle of a library that makes its own syscalls (pyroute2's IPRoute).

        A hook asks for it here rather than building it itself, so that the
        whole machine stays behind this one seam: the real kernel calls
        `real()`; a fake kernel hands out its scripted stand-in for `name`.
        """
        return real()

    def start_thread(self, name: str, target: Callable[[], None]) -> None:
        """Run `target` in a daemon thread of PID 1 (work that outlives a state).

        Through the seam so that a fake kernel can record it and run it when
        the test says, instead of racing the scripted boot.
        """
        threading.Thread(target=target, name=name, daemon=True).start()

    # -- the random seed -------------------------------------------------------

    def random_bytes(self, size: int) -> bytes:
        """Fresh random bytes that never block (a seed for the next boot).

        /dev/urandom never blocks on 5.18+ kernels; getrandom(2) would wait
        for the CRNG to be initialised, which only matters for keys, not
        for a seed that the next boot mixes with everything else.
        """
        with open("/dev/urandom", "rb", buffering=0) as f:
            return f.read(size)

    def feed_urandom(self, data: bytes) -> None:
        """Mix bytes into the kernel's pool; a write credits no entropy."""
        with open("/dev/urandom", "wb", buffering=0) as f:
            f.write(data)

    # -- daemons that outlive the hand-off ---------------------------------------

    def spawn_daemon(
        self,
        name: str,
        target: Callable[[], None],
        nice: int = DAEMON_NICE,
        joinable: bool = False,
    ) -> int:
        """Fork a process that outlives the hand-off and runs `target` forever.

        The child leaves PID 1's session, names itself `name` (what ps shows),
        reads nothing from the console and never returns into the boot: it
        exits when `target` ends. After the exec, systemd inherits it. It
        runs at nice `nice` (DAEMON_NICE): the boot it was forked from keeps
        the CPU (one vCPU under TCG: the renewer's first DHCP exchange took a
        quarter of a second from the states after it).

        A `joinable` one is work the boot may wait for (`join_daemon`): the
        reaper leaves its exit status alone until then.
        """
        return self.processes.spawn_daemon(name, target, nice, joinable)

    def join_daemon(self, pid: int) -> int:
        """Wait for a joinable daemon to end; its exit status (0: `target` returned)."""
        return self.processes.join_daemon(pid)


def _console_loglevel() -> int:
    """The first field of /proc/sys/kernel/printk (7 when unreadable)."""
    try:
        with open("/proc/sys/kernel/printk") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 7
