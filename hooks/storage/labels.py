"""Filesystem superblock probes: which filesystem a block device holds, and its label.

The storage states find `buildos.state` and `buildos.machines*` by label.
There is no udevd in the initrd, so nothing fills udev's database, and the
tools that read it (lsblk, blkinfo, pyudev) show no labels at all
(docs/storage.md has the evidence). The labels live in the filesystems'
own superblocks, at fixed offsets, so this module reads them directly, as
booster's blkinfo.go and util-linux's libblkid do.

A probe takes a `read(offset, size)` function (through the kernel seam, so
tests feed crafted bytes) and never raises on bad input: a truncated or
garbage superblock is "no filesystem", never a crash, because any disk
plugged into a build host, including a broken one, is read at boot.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from initpy.runtime.record import frozen

# read(offset, size) -> at most `size` bytes (fewer at the end of the device).
Reader = Callable[[int, int], bytes]

# The region every probe needs lies in the first 68 KiB (btrfs's primary
# superblock ends at 64 KiB + 4 KiB), so one read serves all of them.
PROBE_BYTES = 0x10000 + 0x1000

EXT_SUPERBLOCK = 1024
EXT_MAGIC = 0xEF53
# ext feature bits (from e2fsprogs' ext2_fs.h) that tell ext2, ext3 and ext4 apart.
_EXT3_FEATURE_COMPAT_HAS_JOURNAL = 0x0004
_EXT3_FEATURE_INCOMPAT_JOURNAL_DEV = 0x0008
_EXT2_FEATURE_INCOMPAT_SUPP = 0x0002 | 0x0010  # filetype, meta_bg
_EXT3_FEATURE_INCOMPAT_SUPP = _EXT2_FEATURE_INCOMPAT_SUPP | 0x0004  # + recover
_EXT2_FEATURE_RO_COMPAT_SUPP = 0x0001 | 0x0002 | 0x0004  # sparse_super, large_file, btree_dir

BTRFS_SUPERBLOCK = 0x10000
BTRFS_MAGIC = b"_BHRfS_M"

XFS_MAGIC = b"XFSB"

SWAP_MAGICS = (b"SWAPSPACE2", b"SWAP-SPACE")


@frozen
class Superblock:
    """What a device's superblock says about the filesystem on it."""

    fstype: str  # "ext2", "ext3", "ext4", "btrfs", "xfs", "vfat", "swap"
    label: str  # "" when the filesystem has none
    uuid: str  # the filesystem's UUID (vfat: its volume id), "" if unknown
    # btrfs only: a multi-device filesystem's members share `uuid` (the
    # fsid); each has its own `devid`, and all know `num_devices`.
    devid: int = 0
    num_devices: int = 1


def probe(read: Reader) -> Superblock | None:
    """The filesystem on a device, or None (empty, unknown or unreadable).

    When more than one signature is found (a disk reformatted without
    wiping), the first of btrfs, xfs, ext, vfat, swap wins; `probe_all`
    lists them all so the caller can tell the operator.
    """
    found = probe_all(read)
    return found[0] if found else None


def probe_all(read: Reader) -> list[Superblock]:
    """Every filesystem signature on a device; never raises."""
    try:
        head = read(0, PROBE_BYTES)
    except OSError:
        return []
    found: list[Superblock] = []
    for parse in PROBES:
        # Each probe is fuzzed on its own (tests/unit/test_labels.py), where
        # this does not hide an exception; at boot, one broken probe must not
        # stop the others.
        try:
            superblock = parse(head)
        except (struct.error, ValueError, IndexError):  # pragma: no cover - belt and braces
            superblock = None
        if superblock is not None:
            found.append(superblock)
    return found


# -- helpers ---------------------------------------------------------------------


def _text(raw: bytes, pad: bytes = b"\0") -> str:
    """A label field: NUL- (or space-) padded bytes, decoded leniently."""
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    return raw.rstrip(pad).decode("utf-8", errors="replace")


def _uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _u16(buf: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", buf, offset)[0])


def _u32(buf: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", buf, offset)[0])


def _u64(buf: bytes, offset: int) -> int:
    return int(struct.unpack_from("<Q", buf, offset)[0])


# -- the probes: each takes the first PROBE_BYTES of a device ---------------------


def _ext(head: bytes) -> Superblock | None:
    """ext2/3/4: superblock at 1024; magic at +56, uuid at +104, label at +120."""
    sb = head[EXT_SUPERBLOCK : EXT_SUPERBLOCK + 1024]
    if len(sb) < 264 or _u16(sb, 56) != EXT_MAGIC:
        return None
    log_block_size = _u32(sb, 24)
    if log_block_size > 6:  # blocks above 64 KiB: not a real ext superblock
        return None
    compat, incompat, ro_compat = _u32(sb, 92), _u32(sb, 96), _u32(sb, 100)
    if incompat & _EXT3_FEATURE_INCOMPAT_JOURNAL_DEV:
        return None  # an external journal, not a mountable filesystem
    # As libblkid: any feature ext3 lacks makes it ext4; a journal makes ext3.
    if incompat & ~_EXT3_FEATURE_INCOMPAT_SUPP or ro_compat & ~_EXT2_FEATURE_RO_COMPAT_SUPP:
        fstype = "ext4"
    elif compat & _EXT3_FEATURE_COMPAT_HAS_JOURNAL:
        fstype = "ext3"
    else:
        fstype = "ext2"
    return Superblock(fstype, _text(sb[120:136]), _uuid(sb[104:120]))


def _btrfs(head: bytes) -> Superblock | None:
    """btrfs: superblock at 64 KiB; magic at +0x40, fsid at +0x20, label at +0x12b.

    The device item (devid, this member's own identity) starts at +0xc9,
    and num_devices at +0x88 says how many members the filesystem has.
    """
    sb = head[BTRFS_SUPERBLOCK : BTRFS_SUPERBLOCK + 0x1000]
    if len(sb) < 0x12B + 256 or sb[0x40:0x48] != BTRFS_MAGIC:
        return None
    num_devices = _u64(sb, 0x88)
    devid = _u64(sb, 0xC9)
    if not 1 <= num_devices <= 65536 or not 1 <= devid:
        return None  # corrupt: a btrfs has at least one member, numbered from 1
    return Superblock(
        "btrfs",
        _text(sb[0x12B : 0x12B + 256]),
        _uuid(sb[0x20:0x30]),
        devid=devid,
        num_devices=num_devices,
    )


def _xfs(head: bytes) -> Superblock | None:
    """xfs: superblock at 0, big-endian; magic "XFSB", uuid at 32, label at 108."""
    if len(head) < 120 or head[0:4] != XFS_MAGIC:
        return None
    block_size = int(struct.unpack_from(">I", head, 4)[0])
    if block_size < 512 or block_size > 65536 or block_size & (block_size - 1):
        return None
    return Superblock("xfs", _text(head[108:120]), _uuid(head[32:48]))


def _vfat(head: bytes) -> Superblock | None:
    """FAT12/16/32: a boot sector with a sane BIOS parameter block.

    A partition table (MBR) also ends in 0x55AA, so the BPB and the
    "FAT" type string must both be right; the label is the boot sector's
    (mkfs.fat writes the same one into the root folder).
    """
    if len(head) < 512 or head[510:512] != b"\x55\xaa" or head[0] not in (0xEB, 0xE9):
        return None
    bytes_per_sector = _u16(head, 11)
    sectors_per_cluster = head[13]
    if bytes_per_sector not in (512, 1024, 2048, 4096):
        return None
    if sectors_per_cluster == 0 or sectors_per_cluster & (sectors_per_cluster - 1):
        return None
    if head[82:87] == b"FAT32":
        label, volume_id = head[71:82], head[67:71]
    elif head[54:59] in (b"FAT12", b"FAT16", b"FAT  "):
        label, volume_id = head[43:54], head[39:43]
    else:
        return None
    text = _text(label, b" ")
    if text == "NO NAME":
        text = ""
    serial = volume_id[::-1].hex().upper()
    return Superblock("vfat", text, f"{serial[:4]}-{serial[4:]}")


def _swap(head: bytes) -> Superblock | None:
    """Linux swap (4 KiB pages): magic at 4096-10, label at 1024+28."""
    if len(head) < 4096 or head[4086:4096] not in SWAP_MAGICS:
        return None
    return Superblock(
        "swap", _text(head[1024 + 28 : 1024 + 44]), _uuid(head[1024 + 12 : 1024 + 28])
    )


# A probe: the first PROBE_BYTES of a device (or fewer) -> its superblock or None.
Probe = Callable[[bytes], Superblock | None]
# In the order probe() prefers them when a device carries several signatures.
PROBES: tuple[Probe, ...] = (_btrfs, _xfs, _ext, _vfat, _swap)
