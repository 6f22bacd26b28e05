"""The fleet cannot loop silently (issue 12, acceptance 4 and 5).

4. Three failed boots in a row with initpy.rescue=reboot on one state disk
   (each reboot ends QEMU under -no-reboot; the next boot takes the same
   disk): the fourth stays in rescue, with the history on the console.
5. A rescue after the network is up mails its report to the test's SMTP
   sink, reached through QEMU's guestfwd (one sink process per connection,
   tests/harness/smtp_sink.py, writing each message to a folder).

Both use the standard test initrd and its cheapest failures: no NIC (find_nics
fails after /state is mounted) for 4, an initpy.exec that does not exist (the
hand-off fails after `network`) for 5.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.harness import smtp_sink
from tests.harness.disks import state_and_machines
from tests.harness.qemu import BootArgs, Nic
from tests.harness.scenario import FULL_BOOT_MAC, full_boot_args

from .conftest import BootVm

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 240
SHELL_TIMEOUT = 60
ADMIN = "admin@example.org"


def test_the_fourth_failed_boot_in_a_row_stays_in_rescue(boot_vm: BootVm, tmp_path: Path) -> None:
    disks: list[str | list[str]] = list(state_and_machines(tmp_path))
    append = ["initpy.rescue=reboot", "initpy.timeout.carrier=1"]
    took = []
    for number in (1, 2, 3):
        with boot_vm(BootArgs(append=list(append), disks=list(disks))) as vm:
            vm.expect(r"initpy: rescue: find_nics: no Ethernet interface found", BOOT_TIMEOUT)
            vm.expect(
                rf"initpy: rescue: failed boots in a row: {number} \(a rescue stays in the "
                r"shell after 3: initpy.max_failed_boots\)",
                SHELL_TIMEOUT,
            )
            vm.expect(r"reboot: Restarting system", SHELL_TIMEOUT)
            assert vm.wait_exit(SHELL_TIMEOUT) == 0
            took.append(vm.seconds)
    with boot_vm(BootArgs(append=list(append), disks=list(disks))) as vm:
        vm.expect(
            r"initpy: rescue: 4 boots in a row have failed \(more than "
            r"initpy.max_failed_boots=3\): staying in rescue instead of rebooting",
            BOOT_TIMEOUT,
        )
        for ago in ("this boot", "1 boot ago", "2 boots ago", "3 boots ago"):
            vm.expect(
                rf"initpy: rescue: history: {ago}: find_nics: no Ethernet interface found",
                SHELL_TIMEOUT,
            )
        vm.expect(re.escape("(initpy rescue) # "), SHELL_TIMEOUT)
        vm.send("cat /state/initpy/failed_boots")
        vm.expect(r"^4$", SHELL_TIMEOUT, re.M)
        took.append(vm.seconds)
        print(f"loop guard: boots took {', '.join(f'{t:.0f} s' for t in took)}")
        vm.leave_rescue_shell(SHELL_TIMEOUT)


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
