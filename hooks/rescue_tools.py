"""The rescue tools: what an operator needs at the rescue shell.

Owns no state: it only declares, for mkinitrd, the binaries every initrd
carries: the disk tools the buildos spec names for preparing the state and
machines disks. Busybox, /bin/sh and every applet, mkinitrd puts into
every initrd itself (Debian's busybox package, or --busybox; the applets
below any --rootfs file of the same name).
Their libraries come along through mkinitrd's ELF resolution.
"""

from __future__ import annotations

from initpy.runtime.hook import Hook

HOOK = Hook(
    name="rescue_tools",
    description="the disk tools for the rescue shell (busybox, /bin/sh, comes with every initrd)",
    binaries=("mkfs.btrfs", "mkfs.ext4", "fdisk", "hdparm", "blkid", "btrfs"),
)
