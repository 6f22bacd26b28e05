"""The real uevent wait on this machine: a loop device with a label appears late.

In the VM tests the virtio disks are already there when find_disks runs,
so the uevent path (a NETLINK_KOBJECT_UEVENT socket, a rescan on each
block event) is proven here instead: root attaches a labelled ext4 image
to a loop device half a second after the wait began, and the wait must
see it through a uevent, not a poll.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from hooks.storage.blockdev import BlockDevice, wait_for_devices
from initpy.runtime.kernel import Kernel

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.getuid() != 0, reason="needs root (losetup)"),
    pytest.mark.skipif(
        shutil.which("losetup") is None or shutil.which("mkfs.ext4") is None,
        reason="needs losetup and mkfs.ext4",
    ),
]


def test_a_late_loop_device_is_seen_through_a_uevent(tmp_path: Path) -> None:
    image = tmp_path / "late.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    label = f"initpy-test-{os.getpid()}"[:16]
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, str(image)], check=True)
    attached: list[str] = []

    def attach() -> None:
        attached.append(
            subprocess.run(
                ["losetup", "-f", "--show", "-r", str(image)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )

    def present(devices: list[BlockDevice]) -> bool:
        return any(d.label == label for d in devices)

    timer = threading.Timer(0.5, attach)
    timer.start()
    try:
        waited = wait_for_devices(Kernel(), present, 30.0)
    finally:
        timer.join()
        for device in attached:
            subprocess.run(["losetup", "-d", device], check=False)
    assert waited.satisfied and not waited.polled
    assert waited.uevents > 0
    found = [d for d in waited.devices if d.label == label]
    assert [d.path for d in found] == attached
    assert found[0].fstype == "ext4" and found[0].size_bytes == 32 << 20
