"""The fleet cannot loop silently, nor stay in rescue for good (issue 12,
acceptance 4 and 5; issue 19, acceptance 6).

4/6. Failed boots in a row with initpy.rescue=reboot on one state disk, in
   one QEMU that reboots as a host does: the third (initpy.max_failed_boots=2)
   stays in rescue, with the history on the console; after the guard's short
   retry (initpy.guard_retry=20s) without input the host boots again by
   itself, and that boot, now good, resets the count.
5. A rescue after the network is up mails its report to the test's SMTP
   sink, reached through QEMU's guestfwd (one sink process per connection,
   tests/harness/smtp_sink.py, writing each message to a folder).

Both use the standard test initrd and its cheapest failures: no NIC (find_nics
fails after /state is mounted; the fix is a NIC hot-plugged through the QEMU
monitor) for 4/6, an initpy.exec that does not exist (the hand-off fails after
`network`) for 5.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.harness import qemu, smtp_sink
from tests.harness.guest_output import read_sections
from tests.harness.images import InitrdFiles
from tests.harness.qemu import Nic
from tests.harness.scenario import FULL_BOOT_MAC, GUEST_PATH, full_boot_args

from .conftest import BootVm

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 240
SHELL_TIMEOUT = 60
ADMIN = "admin@example.org"
RESCUE_LINE = r"initpy: rescue: "
RETRY = 20  # initpy.guard_retry, seconds
TYPED_AFTER = 15  # seconds after the stay line that the test types in the shell
# The kernel moves a tty's atime (what the idle wait watches) in 8 s steps.
ATIME_GRANULARITY = 8


def test_the_guard_keeps_the_host_then_retries_and_a_good_boot_resets_the_count(
    vm_initrd: InitrdFiles, tmp_path: Path
) -> None:
    """One QEMU that reboots as a host does (no -no-reboot): no NIC, so find_nics
    fails after /state is mounted; the third failure in a row stays in rescue with
    the history. A command typed in the shell restarts the guard's 20 s wait; a NIC
    hot-plugged meanwhile (the operator's fix, as a rolled-back image would be) is
    there when the idle retry reboots, and that boot reaches the hand-off and
    resets the count, with nobody at the console."""
    args = full_boot_args(tmp_path)
    args.nics = []
    args.append += [
        "initpy.rescue=reboot",
        "initpy.timeout.carrier=1",
        "initpy.max_failed_boots=2",
        f"initpy.guard_retry={RETRY}s",
    ]
    with qemu.boot(
        vm_initrd.image, vm_initrd.initrd, args, name="fleet-guard-retry", reboot=True
    ) as vm:
        took = []
        for number in (1, 2):
            vm.expect(r"initpy: rescue: find_nics: no Ethernet interface found", BOOT_TIMEOUT)
            vm.expect(
                rf"initpy: rescue: failed boots in a row: {number} \(a rescue stays in the "
                r"shell after 2: initpy.max_failed_boots\)",
                SHELL_TIMEOUT,
            )
            vm.expect(r"reboot: Restarting system", SHELL_TIMEOUT)
            took.append(vm.seconds)
        vm.expect(
            r"initpy: rescue: 3 boots in a row have failed \(more than "
            r"initpy.max_failed_boots=2\): staying in rescue instead of rebooting",
            BOOT_TIMEOUT,
        )
        for ago in ("this boot", "1 boot ago", "2 boots ago"):
            vm.expect(
                rf"initpy: rescue: history: {ago}: find_nics: no Ethernet interface found",
                SHELL_TIMEOUT,
            )
        stayed = vm.expect(
            rf"initpy: rescue: the boot is retried after {RETRY} s without input on the "
            r"console \(at uptime \d+ s if nobody types; each key pressed restarts the wait\)",
            SHELL_TIMEOUT,
        )
        stayed_at = vm.seconds_at(stayed.start())
        vm.expect(re.escape("(initpy rescue) # "), SHELL_TIMEOUT)
        # Someone types well into the wait: the retry must come a full wait later
        # (less the tty's atime granularity of 8 s), not RETRY s after the stay.
        time.sleep(max(0.0, stayed_at + TYPED_AFTER - vm.seconds))
        typed_at = vm.seconds
        vm.send("cat /state/initpy/failed_boots")
        vm.expect(r"^3\r?$", SHELL_TIMEOUT, re.M)
        # The fix arrives while the host waits: a NIC on QEMU's restricted network.
        vm.monitor("netdev_add user,id=net0,restrict=on")
        vm.monitor(f"device_add virtio-net-pci,netdev=net0,mac={FULL_BOOT_MAC},id=nic0")
        retried = vm.expect(
            rf"initpy: rescue: no input on the console for {RETRY} s: retrying the boot "
            r"\(initpy.guard_retry\)",
            SHELL_TIMEOUT,
        )
        retried_at = vm.seconds_at(retried.start())
        vm.expect(r"reboot: Restarting system", SHELL_TIMEOUT)
        took.append(vm.seconds)
        print(
            f"loop guard: failed boots at {', '.join(f'{t:.0f} s' for t in took)}; stayed at "
            f"{stayed_at:.0f} s, typed at {typed_at:.0f} s, retried at {retried_at:.0f} s"
        )
        assert retried_at - typed_at >= RETRY - ATIME_GRANULARITY, (typed_at, retried_at)
        assert retried_at - stayed_at >= TYPED_AFTER + RETRY - ATIME_GRANULARITY
        # The retry's boot: the NIC is there, the boot hands off, the count is 0.
        vm.expect(rf"initpy: handoff: exec {GUEST_PATH}", BOOT_TIMEOUT, fail_on=RESCUE_LINE)
        sections = read_sections(vm, BOOT_TIMEOUT)
        report = json.loads(sections["report"])
        assert report["outcome"] == "handoff" and report["failed_boots"] == 0
        assert vm.wait_exit(SHELL_TIMEOUT) == 0  # vmcheck powers off


def test_a_rescue_after_the_network_mails_its_report(boot_vm: BootVm, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    args = full_boot_args(tmp_path, exec_path="/nonexistent")
    # The relay is an address on QEMU's user network; guestfwd runs one
    # sink process per connection (restrict=on leaves explicit forwards be).
    relay = smtp_sink.SINK_ADDRESS
    args.nics = [Nic.user("net0", mac=FULL_BOOT_MAC, options=smtp_sink.guestfwd(inbox))]
    args.append += [
        "initpy.rescue=reboot",
        f"buildos.smtp_relay={relay}",
        f"buildos.admin_email={ADMIN}",
    ]
    with boot_vm(args) as vm:
        vm.expect(r"initpy: rescue: handoff: hand-off failed: /nonexistent", BOOT_TIMEOUT)
        vm.expect(rf"initpy: rescue: mailing the report to {ADMIN} through {relay}", SHELL_TIMEOUT)
        sent_at = vm.seconds
        line = vm.expect(
            rf"initpy: rescue: (report mailed to {ADMIN}|cannot mail the report.*) \(",
            SHELL_TIMEOUT,
        )
        assert "report mailed" in line.group(0), line.group(0)
        print(f"rescue mail: {vm.seconds - sent_at:.1f} s of wall time from the console line")
        vm.expect(r"reboot: Restarting system", SHELL_TIMEOUT)
        assert vm.wait_exit(SHELL_TIMEOUT) == 0
    deadline = time.monotonic() + 10
    while not smtp_sink.read_mail(inbox) and time.monotonic() < deadline:
        time.sleep(0.2)
    (message,) = smtp_sink.read_mail(inbox)
    assert message["To"] == ADMIN
    assert "hand-off failed" in str(message["Subject"])
    attached = next(p for p in message.walk() if p.get_filename() == "report.json")
    report = json.loads(attached.get_payload(decode=True))  # type: ignore[arg-type]
    assert report["outcome"] == "rescue"
    assert report["reason"].startswith("handoff: hand-off failed: /nonexistent")
    # The network was up: bridges (which provides `network`) had run.
    assert any(s["name"] == "bridges" and s["result"] == "ok" for s in report["states"])
