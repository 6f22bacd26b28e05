"""The harness's own rules, checked without booting: the QEMU command line it builds.

These run in every tier (no `vm` marker): they cost milliseconds and guard
the machine's limits (no unrestricted networking, TCG by default, the
console the harness reads, the slot lock).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.harness import qemu, qemu_rules


def _argv(
    *,
    nics: Sequence[qemu.Nic] = (),
    disks: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    return qemu_rules.qemu_argv(
        "vmlinuz",
        "initrd",
        "initpy.debug",
        serial="stdio",
        monitor_path="/tmp/m.sock",
        nics=nics,
        disks=disks,
        extra=extra,
    )


def test_argv_is_tcg_without_default_devices_and_with_the_console(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INITPY_QEMU_ACCEL", raising=False)
    argv = _argv()
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "-nodefaults" in argv and "-no-reboot" in argv
    append = argv[argv.index("-append") + 1].split()
    assert {"console=ttyS0", "panic=-1", "initpy.debug"} <= set(append)


def test_accel_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITPY_QEMU_ACCEL", "kvm")
    argv = _argv()
    assert argv[argv.index("-accel") + 1] == "kvm"


def test_a_given_console_is_kept() -> None:
    argv = qemu_rules.qemu_argv("k", "i", "console=ttyS0,115200", serial="stdio", monitor_path="m")
    append = argv[argv.index("-append") + 1].split()
    assert [w for w in append if w.startswith("console=")] == ["console=ttyS0,115200"]


def test_allowed_nics_and_disks_become_arguments() -> None:
    argv = _argv(
        nics=[
            qemu.Nic.user("net0", mac="52:54:00:12:34:56", options="hostname=h1"),
            qemu.Nic.socket_link("net1", "/tmp/l.sock", listen=True),
            qemu.Nic.tap("net2", "tap-initpy0"),
        ],
        disks=["/tmp/state.img"],
    )
    joined = " ".join(argv)
    assert "-netdev user,id=net0,restrict=on,hostname=h1" in joined
    assert "-device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56" in joined
    assert "stream,id=net1,server=on,addr.type=unix,addr.path=/tmp/l.sock" in joined
    assert "tap,id=net2,ifname=tap-initpy0,script=no,downscript=no" in joined
    assert "-drive file=/tmp/state.img,if=virtio,format=raw" in joined


def test_a_network_boot_takes_no_kernel_and_may_reboot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INITPY_QEMU_ACCEL", raising=False)
    nic = qemu.Nic.user("net0", mac="52:54:00:12:34:56", options="tftp=/srv/t,bootfile=pxelinux.0")
    argv = qemu_rules.qemu_argv(
        None, None, "", serial="stdio", monitor_path="m", nics=[nic], reboot=True
    )
    assert argv[argv.index("-boot") + 1] == "n"
    assert argv[argv.index("-accel") + 1] == f"tcg,tb-size={qemu_rules.REBOOT_TB_SIZE_MIB}"
    assert not {"-kernel", "-initrd", "-append", "-no-reboot"} & set(argv)
    assert "user,id=net0,restrict=on,tftp=/srv/t,bootfile=pxelinux.0" in argv
    # The command line is the boot loader's to give, never a second one here.
    with pytest.raises(ValueError, match="boot loader"):
        qemu_rules.qemu_argv(None, None, "console=ttyS0", serial="stdio", monitor_path="m")
    with pytest.raises(ValueError, match="boot loader"):
        qemu_rules.qemu_argv(None, "initrd", "", serial="stdio", monitor_path="m")
    # A firmware boot from its disk (OVMF's ESP) has no kernel either.
    argv = qemu_rules.qemu_argv(None, None, "", serial="stdio", monitor_path="m", boot="c")
    assert argv[argv.index("-boot") + 1] == "c"
    assert not {"-kernel", "-initrd", "-append"} & set(argv)


@pytest.mark.parametrize(
    "netdev",
    [
        "user,id=n0",  # not restricted: the guest could reach out
        "user,id=n0,restrict=off",
        "socket,id=n0,mcast=230.0.0.1:1234",  # multicast
        "stream,id=n0,server=off,addr.type=inet,addr.host=10.0.0.1,addr.port=1",
        "tap,id=n0,ifname=t0,script=/etc/qemu-ifup",  # a script that changes the host
        "bridge,id=n0,br=br0",
    ],
)
def test_forbidden_networks_are_refused(netdev: str) -> None:
    with pytest.raises(ValueError):
        _argv(nics=[qemu.Nic(netdev, "virtio-net-pci,netdev=n0")])


@pytest.mark.parametrize("extra", [["-nic", "user"], ["-net", "user"], ["-netdev", "user,id=x"]])
def test_extra_arguments_cannot_add_a_network(extra: list[str]) -> None:
    with pytest.raises(ValueError):
        _argv(extra=extra)


def test_slots_allow_two_vms_and_no_third(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    locks = tuple(os.path.join(os.fspath(tmp_path), f"slot{i}.lock") for i in range(2))
    monkeypatch.setattr(qemu, "SLOT_LOCKS", locks)
    with qemu.vm_slot() as first, qemu.vm_slot() as second:
        assert {first, second} == {0, 1}
        held = []
        for path in locks:  # a third process would find both taken
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
            finally:
                os.close(fd)
        assert held == [True, True]
        with pytest.raises(qemu.VmError, match="no free VM slot"):
            with qemu.vm_slot(timeout=0.3):
                pass


def test_console_text_is_timed_as_it_arrives(tmp_path: os.PathLike[str]) -> None:
    # Any process stands in for QEMU: the Vm reads its stdout as the console.
    proc = subprocess.Popen(
        ["sh", "-c", "echo first; read line; echo second"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    log = Path(os.fspath(tmp_path)) / "console.log"
    with open(log.with_suffix(".err"), "w+b") as stderr:
        vm = qemu.Vm(proc, "unused.sock", log, ["sh"], stderr)
        try:
            first = vm.expect("first", 10)
            vm.send("go")
            second = vm.expect("second", 10)
            assert vm.wait_exit(10) == 0
            # The second line cannot have come before the first was read and answered.
            assert vm.seconds_at(first.start()) <= vm.seconds_at(second.start())
            with pytest.raises(ValueError, match="not arrived"):
                vm.seconds_at(len(vm.console) + 1)
        finally:
            vm.close()
