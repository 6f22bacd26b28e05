"""The real initrd boots in QEMU as PID 1 (issue 3): the three boot scenarios.

a. the whole boot walks every state and hands off to the guest program,
   which is PID 1 with a clean environment and powers off;
b. a failure gives a rescue shell that runs commands, and leaving it
   reboots (QEMU ends: -no-reboot);
c. initpy.break=STATE stops in a shell before STATE, and leaving it
   continues the boot to the hand-off.

Each asserts on what the guest prints on its serial console; the logs are
under artifacts/vm/.
"""

from __future__ import annotations

import json
import re

import pytest

from initpy.runtime.driver import load_registry
from initpy.runtime.hook import HANDOFF
from tests.harness import qemu
from tests.harness.guest_output import key_values, read_sections, report
from tests.harness.qemu import BootArgs
from tests.harness.scenario import GUEST_PATH

from .conftest import BootVm

pytestmark = pytest.mark.vm

# Under TCG the frozen init needs 10-30 s to reach the hand-off; these bound
# a hang, they do not measure speed (benchmarks/boot_time.py does).
BOOT_TIMEOUT = 240
SHELL_TIMEOUT = 60
# A word the shell must compute: the echo of what we typed does not contain it.
PROBE = "echo vm-probe-$((6 * 7))"
PROBE_ANSWER = "vm-probe-42"
RESCUE_LINE = r"initpy: rescue: .*"


def boot_order(hook_names: list[str]) -> tuple[str, ...]:
    """Every state of the boot, in order, for the hooks mkinitrd packed."""
    return load_registry([str(qemu.REPO / "hooks")], hook_names).order


def assert_handed_off(vm: qemu.Vm) -> tuple[tuple[str, ...], dict[str, str]]:
    """The guest program ran as PID 1, clean, with a report of a whole boot.

    Returns the boot's states in order and the guest's sections.
    """
    vm.expect(
        rf"initpy: {HANDOFF}: exec {re.escape(GUEST_PATH)}", BOOT_TIMEOUT, fail_on=RESCUE_LINE
    )
    sections = read_sections(vm, BOOT_TIMEOUT)
    pid1 = key_values(sections["pid1"], ":")
    assert key_values(sections["pid1"], "=")["shell_pid"] == "1", sections["pid1"]
    assert pid1["Pid"] == "1" and pid1["PPid"] == "0", sections["pid1"]
    assert pid1["Name"] == "initpy-vmcheck", sections["pid1"]

    env = key_values(sections["env"], "=")
    leaked = [k for k in env if k.startswith(("LD_LIBRARY_PATH", "_PYI", "_MEI", "PYTHON"))]
    assert not leaked, f"the frozen init leaked {leaked} into the hand-off: {env}"
    assert env.get("PATH"), env

    boot = report(sections, vm)
    assert boot["outcome"] == "handoff"
    assert boot["reason"] is None
    # The report is written just before the exec, so the hand-off state itself
    # is not in it yet; every state before it is, in order, and ok.
    order = boot_order(json.loads(sections["hooks"])["hooks"])
    assert [s["name"] for s in boot["states"]] == list(order[:-1])
    assert [s for s in boot["states"] if s["result"] != "ok"] == []
    assert order[-1] == HANDOFF
    return order, sections


def test_whole_boot_hands_off_to_pid1(boot_vm: BootVm, full_boot: BootArgs) -> None:
    # Words for init (issue 9): a bare word the kernel does not know, and
    # one after `--`; the kernel gives both to PID 1, which hands them on.
    full_boot.append += ["splash", "--", "single"]
    with boot_vm(full_boot) as vm:
        order, sections = assert_handed_off(vm)
        assert sections["args"].split() == ["argc=2", "arg=splash", "arg=single"], sections
        command_line = report(sections, vm)["command_line"]
        assert command_line["init_argv"] == ["splash", "single"], command_line
        assert command_line["init_args"] == ["single"], command_line
        # Every state printed its `initpy: <state>: ok` line, in order (the
        # kernel log echoes each line once more: keep the first of each).
        lines = re.findall(r"^(?:\[[ \d.]+\] )?initpy: (\w+): ok in \d+ ms", vm.console, re.M)
        assert list(dict.fromkeys(lines)) == list(order[:-1])
        vm.expect(r"reboot: Power down", SHELL_TIMEOUT)
        assert vm.wait_exit(SHELL_TIMEOUT) == 0


def test_failure_gives_a_rescue_shell_and_exit_reboots(
    boot_vm: BootVm, full_boot: BootArgs
) -> None:
    # The whole boot, but the hand-off target does not exist.
    full_boot.append = [w for w in full_boot.append if not w.startswith("initpy.exec=")]
    full_boot.append.append("initpy.exec=/nonexistent")
    with boot_vm(full_boot) as vm:
        vm.expect(
            r"initpy: rescue: handoff: hand-off failed: /nonexistent: not found", BOOT_TIMEOUT
        )
        vm.expect(r"initpy: rescue: fix: .*initpy\.exec=PATH")
        vm.expect(r"initpy: rescue: starting /bin/sh")
        # Typing before the prompt works too (the tty buffers it), but waiting
        # for it proves the shell is the one reading.
        vm.expect(re.escape("(initpy rescue) # "), SHELL_TIMEOUT)
        vm.send(PROBE)
        vm.expect(rf"^{PROBE_ANSWER}$", SHELL_TIMEOUT, re.M)
        # The report is there for the operator, and says why.
        vm.send('grep -c \'"outcome": "rescue"\' /run/initpy/report.json')
        vm.expect(r"^1$", SHELL_TIMEOUT, re.M)
        vm.leave_rescue_shell(SHELL_TIMEOUT)


def test_an_idle_rescue_shell_reboots_the_host(boot_vm: BootVm) -> None:
    """initpy.rescue_timeout: a headless host does not sit in a shell forever (issue 9)."""
    idle = 3
    # No disks and no wait for them: find_disks fails at once, the cheapest rescue.
    args = BootArgs(append=["initpy.timeout.disks=0", f"initpy.rescue_timeout={idle}"])
    with boot_vm(args) as vm:
        vm.expect(r"initpy: rescue: find_disks: ", BOOT_TIMEOUT)
        vm.expect(re.escape("(initpy rescue) # "), SHELL_TIMEOUT)
        prompt_at = vm.seconds
        vm.expect(rf"initpy: rescue: the shell was idle for {idle} s; rebooting", SHELL_TIMEOUT)
        assert vm.seconds - prompt_at >= idle - 1  # nobody typed; it waited its time
        vm.expect(r"reboot: Restarting system", SHELL_TIMEOUT)
        assert vm.wait_exit(SHELL_TIMEOUT) == 0


def test_ctrl_alt_del_at_the_rescue_shell_reboots_cleanly(boot_vm: BootVm) -> None:
    """Ctrl-Alt-Del is SIGINT to PID 1 (the init turned the kernel's CAD off): a clean reboot.

    Before issue 9 CPython's KeyboardInterrupt broke out of the shell's wait
    and a second shell started; with CAD on, the kernel would reboot at
    once without a sync and without this line.
    """
    args = BootArgs(append=["initpy.timeout.disks=0"])
    with boot_vm(args) as vm:
        vm.expect(r"initpy: rescue: find_disks: ", BOOT_TIMEOUT)
        vm.expect(re.escape("(initpy rescue) # "), SHELL_TIMEOUT)
        vm.monitor("sendkey ctrl-alt-delete")
        vm.expect(r"initpy: rescue: SIGINT \(Ctrl-Alt-Del\): rebooting cleanly", SHELL_TIMEOUT)
        vm.expect(r"reboot: Restarting system", SHELL_TIMEOUT)
        assert vm.wait_exit(SHELL_TIMEOUT) == 0
        assert vm.console.count("(initpy rescue) # ") == 1  # no second shell


def test_break_gives_a_shell_and_the_boot_continues(boot_vm: BootVm, full_boot: BootArgs) -> None:
    # load_modules: the modules hook is in every initrd; the state runs
    # after the break, so it shows the boot truly continues.
    state = "load_modules"
    full_boot.append.append(f"initpy.break={state}")
    with boot_vm(full_boot) as vm:
        vm.expect(
            rf"initpy: break: before {state}; leave the shell", BOOT_TIMEOUT, fail_on=RESCUE_LINE
        )
        vm.expect(re.escape(f"(initpy break before {state}) # "), SHELL_TIMEOUT)
        vm.send(PROBE)
        vm.expect(rf"^{PROBE_ANSWER}$", SHELL_TIMEOUT, re.M)
        vm.send("exit")
        vm.expect(
            rf"initpy: break: shell left with status 0; continuing with {state}", SHELL_TIMEOUT
        )
        vm.expect(rf"initpy: {state}: ok", BOOT_TIMEOUT)
        assert_handed_off(vm)
        vm.expect(r"reboot: Power down", SHELL_TIMEOUT)
        assert vm.wait_exit(SHELL_TIMEOUT) == 0
