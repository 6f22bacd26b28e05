"""The rescue tools: what an operator needs at the rescue shell.

Owns no state: it only declares, for mkinitrd, the binaries every initrd
carries. The static busybox is /bin/sh and every applet (mkinitrd links
them, below any --rootfs file of the same name); the others are the disk
tools the buildos spec names for preparing the state and machines disks.
Their libraries come along through mkinitrd's ELF resolution.
"""

from __future__ import annotations

from initpy.runtime.hook import Hook

HOOK = Hook(
    name="rescue_tools",
    description="static busybox (/bin/sh and applets) and the disk tools for the rescue shell",
    binaries=("busybox", "mkfs.btrfs", "mkfs.ext4", "fdisk", "hdparm", "blkid", "btrfs"),
)
