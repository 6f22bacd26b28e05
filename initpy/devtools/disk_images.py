"""Disk images for the fake machine: just the superblock bytes the probes read.

Dev tools only (the walk and the unit tests); never in an initrd.
"""

from __future__ import annotations

import struct

from hooks.storage.labels import (
    BTRFS_MAGIC,
    BTRFS_SUPERBLOCK,
    EXT_MAGIC,
    EXT_SUPERBLOCK,
    PROBE_BYTES,
)


def minimal_image(
    fstype: str, label: str, fsid: bytes = b"\x01" * 16, devid: int = 1, num_devices: int = 1
) -> bytes:
    """The first bytes of a device holding an empty ext4 or btrfs with `label`.

    Only what the probes read is filled in: enough for the fake kernel's
    disks, not a mountable filesystem.
    """
    if fstype == "ext4":
        image = bytearray(EXT_SUPERBLOCK + 1024)
        struct.pack_into("<H", image, EXT_SUPERBLOCK + 56, EXT_MAGIC)
        struct.pack_into("<III", image, EXT_SUPERBLOCK + 92, 0x4, 0x2 | 0x40, 0x1)
        image[EXT_SUPERBLOCK + 104 : EXT_SUPERBLOCK + 120] = fsid
        image[EXT_SUPERBLOCK + 120 : EXT_SUPERBLOCK + 136] = label.encode()[:16].ljust(16, b"\0")
        return bytes(image)
    if fstype == "btrfs":
        image = bytearray(PROBE_BYTES)
        sb = BTRFS_SUPERBLOCK
        image[sb + 0x20 : sb + 0x30] = fsid
        image[sb + 0x40 : sb + 0x48] = BTRFS_MAGIC
        struct.pack_into("<Q", image, sb + 0x88, num_devices)
        struct.pack_into("<Q", image, sb + 0xC9, devid)
        raw = label.encode()[:255]
        image[sb + 0x12B : sb + 0x12B + len(raw)] = raw
        return bytes(image)
    raise ValueError(f"minimal_image: {fstype} is not made here (ext4, btrfs)")
