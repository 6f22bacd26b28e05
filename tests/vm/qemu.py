"""The QEMU driver of the VM test tier: boot a kernel and initrd, talk to it.

`boot()` is a context manager that starts one `qemu-system-x86_64` with the
serial console on pipes (read by a thread into a buffer and the artefact
log), the human monitor on a unix socket, and returns a `Vm` whose
`expect()`/`send()`/`monitor()`/`wait_exit()` drive the guest. On leaving,
QEMU is killed by its own PID, whatever happened.

Rules of this machine that the harness enforces, so that no test can break
them by accident:
- at most two VMs run at once on the whole machine (2 cores; a third VM
  only slows the other two): every boot takes one of two flock slots,
  /tmp/initpy-vm-slot0.lock and slot1.lock, shared by every process;
- QEMU networking only as `-netdev user,...,restrict=on` (the guest cannot
  reach out), unix-socket `dgram`/`stream` links between local QEMUs, or
  `tap` links into namespaces the test made; `-nodefaults` so QEMU adds no
  default NIC of its own;
- TCG by default (KVM is broken on these hosts); INITPY_QEMU_ACCEL=kvm
  chooses KVM where it works.

Every boot's serial log is kept as artefacts/vm/<name>.log (written as it
arrives, so even a hung or killed run leaves it); failures print its path
and its tail.
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("INITPY_ARTIFACTS", REPO / "artifacts")) / "vm"
SLOT_LOCKS = ("/tmp/initpy-vm-slot0.lock", "/tmp/initpy-vm-slot1.lock")
QEMU = os.environ.get("INITPY_QEMU", "qemu-system-x86_64")
# What every guest needs on its command line for the harness to work: the
# console on the serial port we read, and a kernel panic (say, PID 1 died)
# that reboots at once, which -no-reboot turns into QEMU exiting, instead of
# a hang until the test's timeout.
REQUIRED_APPEND = ("console=ttyS0", "panic=-1")
LOG_TAIL_LINES = 40
# TCG's code cache when a guest may reboot (qemu_argv says why); 0: QEMU's
# default (benchmarks/tcg_reboot.py compares the two).
REBOOT_TB_SIZE_MIB = 128


class VmError(AssertionError):
    """A VM did not do what the test expected; the message carries the log tail."""


@dataclass(frozen=True)
class Nic:
    """One guest NIC: a `-netdev` backend and the `-device` that uses it.

    Use the constructors: they only make the links this machine allows.
    """

    netdev: str
    device: str

    @staticmethod
    def user(
        id: str, mac: str | None = None, model: str = "virtio-net-pci", options: str = ""
    ) -> Nic:
        """QEMU's user network, restricted: DHCP answers, no way out."""
        extra = f",{options}" if options else ""
        return Nic(f"user,id={id},restrict=on{extra}", _device(model, id, mac))

    @staticmethod
    def socket_link(
        id: str, path: str, listen: bool, mac: str | None = None, model: str = "virtio-net-pci"
    ) -> Nic:
        """A point-to-point link to another local QEMU over a unix stream socket."""
        role = (
            f"server=on,addr.type=unix,addr.path={path}"
            if listen
            else f"server=off,addr.type=unix,addr.path={path}"
        )
        return Nic(f"stream,id={id},{role}", _device(model, id, mac))

    @staticmethod
    def tap(id: str, ifname: str, mac: str | None = None, model: str = "virtio-net-pci") -> Nic:
        """A tap link; the test must have made `ifname` inside its own namespace."""
        return Nic(f"tap,id={id},ifname={ifname},script=no,downscript=no", _device(model, id, mac))


def _device(model: str, id: str, mac: str | None) -> str:
    return f"{model},netdev={id}" + (f",mac={mac}" if mac else "")


def check_netdev(spec: str) -> None:
    """Refuse any QEMU network backend this machine does not allow."""
    kind, _, rest = spec.partition(",")
    options = dict(o.partition("=")[::2] for o in rest.split(",") if o)
    if kind == "user":
        if options.get("restrict") not in ("on", "yes", "y"):
            raise ValueError(f"-netdev {spec}: a user network must have restrict=on")
        return
    if kind in ("stream", "dgram"):
        unix = [k for k, v in options.items() if k.endswith("type") and v == "unix"]
        inet = [k for k, v in options.items() if k.endswith("type") and v != "unix"]
        if unix and not inet:
            return
        raise ValueError(f"-netdev {spec}: {kind} links must use unix sockets only")
    if kind == "tap":
        if options.get("script", "no") != "no" or options.get("downscript", "no") != "no":
            raise ValueError(f"-netdev {spec}: tap links take no scripts (script=no)")
        if "ifname" not in options:
            raise ValueError(f"-netdev {spec}: name the tap you made (ifname=...)")
        return
    raise ValueError(
        f"-netdev {spec}: only user (restrict=on), unix stream/dgram and tap "
        "links are allowed on this machine"
    )


def check_extra(extra: Sequence[str]) -> None:
    """Extra QEMU arguments may not sneak in another network."""
    for i, arg in enumerate(extra):
        if arg in ("-net", "-nic", "-netdev", "--net", "--nic", "--netdev"):
            if arg.lstrip("-") != "netdev" or i + 1 >= len(extra):
                raise ValueError(f"{arg}: give NICs with nics=(Nic...), not extra arguments")
            check_netdev(extra[i + 1])


def drive_args(disk: str | Sequence[str]) -> list[str]:
    """A raw virtio disk from a path, or the caller's own list of arguments."""
    if isinstance(disk, str):
        return ["-drive", f"file={disk},if=virtio,format=raw"]
    return list(disk)


def qemu_argv(
    kernel: str | None,
    initrd: str | None,
    append: str,
    *,
    serial: str,
    monitor_path: str,
    disks: Sequence[str | Sequence[str]] = (),
    nics: Sequence[Nic] = (),
    extra: Sequence[str] = (),
    memory: int = 1024,
    reboot: bool = False,
) -> list[str]:
    """The whole QEMU command line; every rule of this machine is applied here.

    `kernel=None` boots from the network instead (`-boot n`: the first NIC's
    PXE ROM, QEMU's own iPXE); the boot loader then gives the command line,
    so `initrd` and `append` must be empty, and REQUIRED_APPEND is the
    caller's to put in the loader's config. `reboot=True` leaves out
    -no-reboot, so that a guest's reboot boots again instead of ending QEMU.
    """
    accel = os.environ.get("INITPY_QEMU_ACCEL", "tcg")
    if reboot and accel == "tcg" and REBOOT_TB_SIZE_MIB:
        # After a reboot in the same QEMU, TCG's default code cache (1 GiB,
        # full of the first boot's code) makes the next boot unpack its
        # initramfs about 5 times slower (full image: 36-40 s against 6-9 s);
        # a 128 MiB cache unpacks it in 6-7 s again (tests/vm/test_pxe.py).
        accel = f"tcg,tb-size={REBOOT_TB_SIZE_MIB}"
    argv = [QEMU, "-accel", accel, "-m", str(memory), "-smp", "1", "-nodefaults", "-nographic"]
    argv += [] if reboot else ["-no-reboot"]
    argv += ["-serial", serial, "-monitor", f"unix:{monitor_path},server=on,wait=off"]
    if kernel is None:
        if initrd is not None or append.strip():
            raise ValueError(
                "a network boot takes its initrd and command line from the boot loader's "
                "config (pxelinux.cfg), not from -initrd/-append"
            )
        argv += ["-boot", "n"]
    else:
        if initrd is None:
            raise ValueError(f"-kernel {kernel} needs an initrd")
        words = append.split()
        for required in REQUIRED_APPEND:
            key = required.split("=")[0]
            if not any(w == required or w.startswith(key + "=") for w in words):
                append = f"{required} {append}"
        argv += ["-kernel", kernel, "-initrd", initrd, "-append", append.strip()]
    for disk in disks:
        argv += drive_args(disk)
    for nic in nics:
        check_netdev(nic.netdev)
        argv += ["-netdev", nic.netdev, "-device", nic.device]
    check_extra(extra)
    argv += list(extra)
    return argv


@contextlib.contextmanager
def vm_slot(timeout: float = 3600) -> Iterator[int]:
    """Hold one of the two machine-wide VM slots, waiting until one is free."""
    deadline = time.monotonic() + timeout
    handles = []
    try:
        for path in SLOT_LOCKS:
            handles.append(os.open(path, os.O_RDWR | os.O_CREAT, 0o666))
        while True:
            for number, fd in enumerate(handles):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    yield number
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return
            if time.monotonic() > deadline:
                raise VmError(
                    f"no free VM slot in {timeout:g} s ({', '.join(SLOT_LOCKS)} "
                    "held; `cat` them for the holders' PIDs)"
                )
            time.sleep(0.2)
    finally:
        for fd in handles:
            os.close(fd)


def artefact_path(name: str) -> Path:
    """artifacts/vm/<name>.log, with a number added when the name is taken this run."""
    safe = re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", name).strip("_") or "vm"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{safe}.log"
    n = 2
    while path in _used_logs:
        path = ARTIFACTS / f"{safe}-{n}.log"
        n += 1
    _used_logs.add(path)
    return path


_used_logs: set[Path] = set()


class Vm:
    """A running guest: its serial console, its monitor, its QEMU process."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        monitor_path: str,
        log_path: Path,
        argv: list[str],
        stderr: IO[bytes],
    ) -> None:
        self.proc = proc
        self._stderr = stderr
        self.monitor_path = monitor_path
        self.log_path = log_path
        self.argv = argv
        self.started = time.monotonic()
        self._text = ""  # the whole console so far, \r removed
        # (length of _text, monotonic time) after each chunk: when text came.
        self._arrivals: list[tuple[int, float]] = []
        self._cursor = 0  # expect() searches from here
        self._changed = threading.Condition()
        self._eof = False
        self._monitor: socket.socket | None = None
        self._log = open(log_path, "w", encoding="utf-8")  # closed in close()
        self._log.write("# " + " ".join(argv) + "\n")
        self._log.flush()
        self._reader = threading.Thread(
            target=self._read_console, daemon=True, name=f"serial:{log_path.name}"
        )
        self._reader.start()

    # -- the serial console ------------------------------------------------------

    def _read_console(self) -> None:
        assert self.proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            text = decoder.decode(chunk, final=not chunk).replace("\r", "")
            with self._changed:
                if text:
                    self._text += text
                    self._arrivals.append((len(self._text), time.monotonic()))
                    if not self._log.closed:
                        self._log.write(text)
                        self._log.flush()
                if not chunk:
                    self._eof = True
                self._changed.notify_all()
            if not chunk:
                return

    @property
    def console(self) -> str:
        """Everything the guest printed on the serial console so far."""
        with self._changed:
            return self._text

    def expect(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 60,
        flags: int = 0,
        fail_on: str | None = None,
    ) -> re.Match[str]:
        """Wait for `pattern` on the console, after the previous match; return the match.

        Fails with the log's tail and path when the pattern does not come in
        time or QEMU ends first, or at once when `fail_on` (a regex, e.g.
        `initpy: rescue:`) shows up first: a boot that went to rescue will
        not reach the hand-off, so waiting out the timeout only wastes minutes.
        """
        regex = re.compile(pattern, flags) if isinstance(pattern, str) else pattern
        failure = re.compile(fail_on, flags) if fail_on else None
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = regex.search(self._text, self._cursor)
                if match:
                    self._cursor = match.end()
                    return match
                if failure is not None and (bad := failure.search(self._text, self._cursor)):
                    # Let the lines after it (the reason, the fix) arrive.
                    self._changed.wait(2.0)
                    raise VmError(self._failure(f"{bad.group(0)!r} came before {regex.pattern!r}"))
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "QEMU ended" if self._eof else f"{timeout:g} s passed"
                    raise VmError(self._failure(f"{why} before {regex.pattern!r} appeared"))
                self._changed.wait(min(left, 1.0))

    def seconds_at(self, offset: int) -> float:
        """When the console character at `offset` arrived, in seconds since QEMU started.

        For timing what the guest printed (a match's `start()`), however
        late the test looked at it.
        """
        with self._changed:
            index = bisect.bisect_right(self._arrivals, offset, key=lambda a: a[0])
            if index == len(self._arrivals):
                raise ValueError(f"console offset {offset} has not arrived yet")
            return self._arrivals[index][1] - self.started

    def send(self, line: str) -> None:
        """Type one line into the serial console (the guest's tty sees Enter)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise VmError(self._failure(f"cannot send {line!r}: QEMU has ended")) from exc

    # -- the monitor and the process -------------------------------------------

    def monitor(self, command: str, timeout: float = 10) -> str:
        """Run a human-monitor command (e.g. `set_link net0 off`); return its output."""
        if self._monitor is None:
            deadline = time.monotonic() + timeout
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(self.monitor_path)
                    break
                except OSError:
                    sock.close()
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise VmError(self._failure("the QEMU monitor does not answer")) from None
                    time.sleep(0.1)
            sock.settimeout(timeout)
            self._monitor = sock
            self._monitor_read()  # the banner and the first prompt
        self._monitor.sendall(command.encode() + b"\n")
        reply = self._monitor_read()
        # The monitor echoes the command line (with terminal escapes) first.
        lines = re.sub(r"\x1b\[[0-9;]*[A-Za-z]|\x1b[A-Za-z]", "", reply).replace("\r", "")
        return "\n".join(lines.splitlines()[1:]).strip()

    def _monitor_read(self) -> str:
        assert self._monitor is not None
        buffer = b""
        while not buffer.endswith(b"(qemu) "):
            chunk = self._monitor.recv(4096)
            if not chunk:
                break
            buffer += chunk
        return buffer.decode(errors="replace").removesuffix("(qemu) ")

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for QEMU to end (with -no-reboot, a guest reboot or power-off ends it)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise VmError(self._failure(f"QEMU still runs after {timeout:g} s")) from None
        self._reader.join(5)
        return code

    def leave_rescue_shell(self, timeout: float = 60) -> None:
        """Type `exit` in the rescue shell and see the guest reboot, ending QEMU."""
        self.send("exit")
        self.expect(r"initpy: rescue: shell left with status 0; rebooting", timeout)
        self.expect(r"reboot: Restarting system", timeout)
        code = self.wait_exit(timeout)
        if code != 0:
            raise VmError(self._failure(f"QEMU ended with {code} after the reboot"))

    @property
    def seconds(self) -> float:
        """Wall time since QEMU started."""
        return time.monotonic() - self.started

    def close(self) -> None:
        """Kill our QEMU by its PID (never by name) and keep the log."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self._monitor is not None:
            self._monitor.close()
        self._reader.join(5)
        self._stderr.seek(0)
        stderr = self._stderr.read().decode(errors="replace")
        with self._changed:
            if stderr.strip():
                self._log.write("\n# QEMU stderr:\n" + stderr)
            self._log.write(f"\n# QEMU exit {self.proc.returncode} after {self.seconds:.1f} s\n")
            self._log.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _failure(self, what: str) -> str:
        tail = "\n".join(self._text.splitlines()[-LOG_TAIL_LINES:])
        return (
            f"{what}\n--- last {LOG_TAIL_LINES} console lines (whole log: {self.log_path})"
            f" ---\n{tail}\n---"
        )


@contextlib.contextmanager
def boot(
    kernel: str | os.PathLike[str],
    initrd: str | os.PathLike[str],
    append: str = "",
    *,
    disks: Sequence[str | Sequence[str]] = (),
    nics: Sequence[Nic] = (),
    extra: Sequence[str] = (),
    memory: int = 1024,
    name: str = "vm",
) -> Iterator[Vm]:
    """Boot `kernel` with `initrd` in QEMU, holding a machine-wide VM slot.

    `disks` are raw image paths (virtio) or argument lists; `nics` are `Nic`s.
    The log goes to artifacts/vm/<name>.log. QEMU is killed on leaving.
    """

    def argv(monitor_path: str) -> list[str]:
        return qemu_argv(
            os.fspath(kernel),
            os.fspath(initrd),
            append,
            serial="stdio",
            monitor_path=monitor_path,
            disks=disks,
            nics=nics,
            extra=extra,
            memory=memory,
        )

    with _started(argv, name) as vm:
        yield vm


@contextlib.contextmanager
def network_boot(
    *,
    nics: Sequence[Nic],
    disks: Sequence[str | Sequence[str]] = (),
    extra: Sequence[str] = (),
    memory: int = 1024,
    name: str = "vm",
    reboot: bool = False,
) -> Iterator[Vm]:
    """PXE-boot from the first NIC (`-boot n`), holding a machine-wide VM slot.

    The NIC's user network serves the boot: `Nic.user(..., options="tftp=DIR,
    bootfile=pxelinux.0")`. Its pxelinux config must carry REQUIRED_APPEND,
    or the harness sees no console. With `reboot=True` a reboot of the guest
    boots it again through PXE, as on a real host, and QEMU ends only when
    the test leaves (a panic then loops too: watch for it with `fail_on`).
    """

    def argv(monitor_path: str) -> list[str]:
        return qemu_argv(
            None,
            None,
            "",
            serial="stdio",
            monitor_path=monitor_path,
            disks=disks,
            nics=nics,
            extra=extra,
            memory=memory,
            reboot=reboot,
        )

    with _started(argv, name) as vm:
        yield vm


@contextlib.contextmanager
def _started(argv_for: Callable[[str], list[str]], name: str) -> Iterator[Vm]:
    """Start QEMU with `argv_for(monitor_path)` under a VM slot; kill it on leaving."""
    if shutil.which(QEMU) is None:
        raise VmError(f"{QEMU} not found; install qemu-system-x86 (scripts/bootstrap does)")
    log_path = artefact_path(name)
    with vm_slot(), tempfile.TemporaryDirectory(prefix="initpy-vm-") as tmp:
        monitor_path = os.path.join(tmp, "monitor.sock")
        argv = argv_for(monitor_path)
        # stderr to a file: a pipe nobody reads could fill and stall QEMU.
        with open(os.path.join(tmp, "stderr"), "w+b") as stderr:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
            vm = Vm(proc, monitor_path, log_path, argv, stderr)
            try:
                yield vm
            except BaseException:
                print(f"VM serial log: {log_path}")
                raise
            finally:
                vm.close()


def run_interactive(
    kernel: str,
    initrd: str,
    append: str,
    *,
    disks: Sequence[str | Sequence[str]] = (),
    nics: Sequence[Nic] = (),
    extra: Sequence[str] = (),
    memory: int = 1024,
) -> int:
    """Boot on this terminal (serial on stdio) under a VM slot; QEMU's exit code.

    For people (scripts/demo): the same rules as `boot()`, but the console is
    the user's terminal. Ctrl-A X leaves QEMU.
    """
    if shutil.which(QEMU) is None:
        raise VmError(f"{QEMU} not found; install qemu-system-x86 (scripts/bootstrap does)")
    with vm_slot(), tempfile.TemporaryDirectory(prefix="initpy-vm-") as tmp:
        argv = qemu_argv(
            kernel,
            initrd,
            append,
            serial="mon:stdio",
            monitor_path=os.path.join(tmp, "monitor.sock"),
            disks=disks,
            nics=nics,
            extra=extra,
            memory=memory,
        )
        proc = subprocess.Popen(argv)
        try:
            return proc.wait()
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
