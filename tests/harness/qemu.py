"""The QEMU driver of the VM test tier: boot a kernel and initrd under a machine-wide slot.

`boot(kernel, initrd, args)` is a context manager that starts one
`qemu-system-x86_64` with the serial console on pipes, the human monitor on
a unix socket, and returns a `Vm` (tests/harness/machine.py) that drives
the guest. On leaving, QEMU is killed by its own PID, whatever happened.

Rules of this machine that the harness enforces, so that no test can break
them by accident:
- at most two VMs run at once on the whole machine (2 cores; a third VM
  only slows the other two): every boot takes one of two flock slots,
  /tmp/initpy-vm-slot0.lock and slot1.lock, shared by every process;
- the command line's rules (networks, TCG, the required kernel words) are
  in tests/harness/qemu_rules.py, which every boot goes through.

Every boot's serial log is kept as artifacts/vm/<name>.log.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .machine import Vm, VmError
from .qemu_rules import QEMU, BootArgs, Nic, qemu_argv

# The names a test or benchmark needs, beside boot(): one import of qemu.
__all__ = [
    "ARTIFACTS",
    "QEMU",
    "REPO",
    "BootArgs",
    "Nic",
    "Vm",
    "VmError",
    "boot",
    "firmware_boot",
    "network_boot",
    "run_interactive",
    "vm_slot",
    "keeping_slot",
]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("INITPY_ARTIFACTS", REPO / "artifacts")) / "vm"
SLOT_LOCKS = ("/tmp/initpy-vm-slot0.lock", "/tmp/initpy-vm-slot1.lock")


@contextlib.contextmanager
def vm_slot(timeout: float = 3600) -> Iterator[int]:
    """Hold one of the two machine-wide VM slots, waiting until one is free.

    Inside `keeping_slot`, the slot kept is reused: its boots run one at a time.
    """
    if _kept:
        yield _kept[-1]
        return
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


# The slot a series of boots keeps (keeping_slot); empty: each boot waits for one.
_kept: list[int] = []


@contextlib.contextmanager
def keeping_slot(timeout: float = 3600) -> Iterator[int]:
    """Hold one VM slot for a series of boots of this process (a benchmark's rounds).

    On a busy machine a boot that queues for a slot each time may wait for
    many other VMs between two rounds; keeping one slot, the rounds follow
    each other and still never run more than one VM of ours at a time.
    """
    with vm_slot(timeout) as number:
        _kept.append(number)
        try:
            yield number
        finally:
            _kept.pop()


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


@contextlib.contextmanager
def boot(
    kernel: str | os.PathLike[str],
    initrd: str | os.PathLike[str],
    args: BootArgs,
    *,
    name: str = "vm",
    reboot: bool = False,
) -> Iterator[Vm]:
    """Boot `kernel` with `initrd` and `args` in QEMU, holding a machine-wide VM slot.

    The log goes to artifacts/vm/<name>.log. QEMU is killed on leaving.
    `reboot=True`: a guest's reboot boots it again in the same QEMU.
    """

    def argv(monitor_path: str) -> list[str]:
        return _argv(os.fspath(kernel), os.fspath(initrd), args, "stdio", monitor_path, reboot)

    with _started(argv, name) as vm:
        yield vm


def _argv(
    kernel: str,
    initrd: str,
    args: BootArgs,
    serial: str,
    monitor_path: str,
    reboot: bool = False,
) -> list[str]:
    """The one place a BootArgs becomes QEMU's command line."""
    return qemu_argv(
        kernel,
        initrd,
        " ".join(args.append),
        serial=serial,
        monitor_path=monitor_path,
        disks=args.disks,
        nics=args.nics,
        extra=args.extra,
        memory=args.memory,
        reboot=reboot,
    )


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
def firmware_boot(args: BootArgs, *, name: str = "vm") -> Iterator[Vm]:
    """Boot from a disk through the firmware in `args.extra`, holding a machine-wide VM slot.

    For OVMF and its ESP (tests/harness/secureboot.py): the boot loader on
    the disk gives the kernel its command line, so `args.append` must be
    empty and REQUIRED_APPEND is in the loader's config.
    """

    def argv(monitor_path: str) -> list[str]:
        return qemu_argv(
            None,
            None,
            " ".join(args.append),
            serial="stdio",
            monitor_path=monitor_path,
            disks=args.disks,
            nics=args.nics,
            extra=args.extra,
            memory=args.memory,
            boot="c",
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


def run_interactive(kernel: str, initrd: str, args: BootArgs) -> int:
    """Boot on this terminal (serial on stdio) under a VM slot; QEMU's exit code.

    For people (scripts/demo): the same rules as `boot()`, but the console is
    the user's terminal. Ctrl-A X leaves QEMU.
    """
    if shutil.which(QEMU) is None:
        raise VmError(f"{QEMU} not found; install qemu-system-x86 (scripts/bootstrap does)")
    with vm_slot(), tempfile.TemporaryDirectory(prefix="initpy-vm-") as tmp:
        argv = _argv(kernel, initrd, args, "mon:stdio", os.path.join(tmp, "monitor.sock"))
        proc = subprocess.Popen(argv)
        try:
            return proc.wait()
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
