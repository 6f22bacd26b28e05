"""Superblock probes (hooks.storage.labels) and uevent parsing (hooks.storage.blockdev).

Superblocks are built byte by byte here, at the offsets the filesystems'
own headers give, and checked against real ones made by mkfs on small
image files where the tools exist. Truncated and garbage superblocks must
give "no filesystem", never an exception.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid as uuidlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hooks.storage.blockdev import parse_uevent
from hooks.storage.labels import PROBE_BYTES, Superblock, probe, probe_all

# -- crafted images ------------------------------------------------------------------


def _put(image: bytearray, offset: int, data: bytes) -> None:
    if len(image) < offset + len(data):
        image.extend(b"\0" * (offset + len(data) - len(image)))
    image[offset : offset + len(data)] = data


def ext_image(
    label: str,
    *,
    kind: str = "ext4",
    uuid: str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    size: int = 4096,
) -> bytes:
    image = bytearray(size)
    sb = 1024
    _put(image, sb + 24, struct.pack("<I", 2))  # log block size: 4 KiB
    _put(image, sb + 56, struct.pack("<H", 0xEF53))
    compat = 0x4 if kind in ("ext3", "ext4") else 0  # has_journal
    incompat = 0x2 | (0x40 | 0x200 if kind == "ext4" else 0)  # filetype (+ extents, flex_bg)
    _put(image, sb + 92, struct.pack("<III", compat, incompat, 0x1))
    _put(image, sb + 104, uuidlib.UUID(uuid).bytes)
    _put(image, sb + 120, label.encode()[:16])
    return bytes(image)


def btrfs_image(
    label: str,
    *,
    fsid: str = "11111111-2222-3333-4444-555555555555",
    devid: int = 1,
    num_devices: int = 1,
    size: int = PROBE_BYTES,
) -> bytes:
    image = bytearray(size)
    sb = 0x10000
    _put(image, sb + 0x20, uuidlib.UUID(fsid).bytes)
    _put(image, sb + 0x40, b"_BHRfS_M")
    _put(image, sb + 0x88, struct.pack("<Q", num_devices))
    _put(image, sb + 0xC9, struct.pack("<Q", devid))
    _put(image, sb + 0x12B, label.encode())
    return bytes(image[:size]) if size >= 0x10000 + 0x12B + 256 else bytes(image)


def xfs_image(label: str) -> bytes:
    image = bytearray(4096)
    _put(image, 0, b"XFSB" + struct.pack(">I", 4096))
    _put(image, 32, uuidlib.UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee").bytes)
    _put(image, 108, label.encode()[:12])
    return bytes(image)


def vfat_image(label: str, *, fat32: bool = False) -> bytes:
    image = bytearray(4096)
    _put(image, 0, b"\xeb\x3c\x90mkfs.fat")
    _put(image, 11, struct.pack("<HB", 512, 4))
    padded = label.encode().ljust(11)[:11]
    if fat32:
        _put(image, 67, bytes.fromhex("78563412") + padded + b"FAT32   ")
    else:
        _put(image, 39, bytes.fromhex("78563412") + padded + b"FAT16   ")
    _put(image, 510, b"\x55\xaa")
    return bytes(image)


def mbr_image() -> bytes:
    """A partition table: 0x55AA like a FAT boot sector, but no BPB."""
    image = bytearray(4096)
    _put(image, 446, bytes([0x80, 0, 2, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 8192))
    _put(image, 510, b"\x55\xaa")
    return bytes(image)


def reader(image: bytes):  # type: ignore[no-untyped-def]
    def read(offset: int, size: int) -> bytes:
        return image[offset : offset + size]

    return read


# -- crafted superblocks ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ext2", "ext3", "ext4"])
def test_ext_family_and_label(kind: str) -> None:
    found = probe(reader(ext_image("buildos.state", kind=kind)))
    assert found == Superblock(kind, "buildos.state", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")


def test_ext_label_of_the_full_sixteen_bytes_has_no_terminator() -> None:
    found = probe(reader(ext_image("abcdefghijklmnop")))
    assert found is not None and found.label == "abcdefghijklmnop"


def test_btrfs_members_share_fsid_and_differ_by_devid() -> None:
    one = probe(reader(btrfs_image("buildos.machines", devid=1, num_devices=2)))
    two = probe(reader(btrfs_image("buildos.machines", devid=2, num_devices=2)))
    assert one is not None and two is not None
    assert (one.fstype, one.label, one.num_devices) == ("btrfs", "buildos.machines", 2)
    assert one.uuid == two.uuid == "11111111-2222-3333-4444-555555555555"
    assert (one.devid, two.devid) == (1, 2)


def test_btrfs_with_a_corrupt_device_count_is_not_a_filesystem() -> None:
    assert probe(reader(btrfs_image("x", num_devices=0))) is None
    assert probe(reader(btrfs_image("x", devid=0))) is None


def test_xfs_and_vfat() -> None:
    assert probe(reader(xfs_image("scratch"))) == Superblock(
        "xfs", "scratch", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    )
    assert probe(reader(vfat_image("EFI"))) == Superblock("vfat", "EFI", "1234-5678")
    assert probe(reader(vfat_image("BOOT32", fat32=True))) == Superblock(
        "vfat", "BOOT32", "1234-5678"
    )
    no_name = probe(reader(vfat_image("NO NAME")))
    assert no_name is not None and no_name.label == ""


def test_a_partition_table_is_not_a_fat_filesystem() -> None:
    assert probe(reader(mbr_image())) is None


def test_a_blank_disk_has_no_filesystem() -> None:
    assert probe_all(reader(bytes(PROBE_BYTES))) == []


def test_two_signatures_are_both_reported_btrfs_first() -> None:
    image = bytearray(btrfs_image("new"))
    image[:4096] = ext_image("old")
    found = probe_all(reader(bytes(image)))
    assert [(s.fstype, s.label) for s in found] == [("btrfs", "new"), ("ext4", "old")]


def test_a_label_that_is_not_utf8_is_replaced_not_fatal() -> None:
    image = bytearray(ext_image(""))
    image[1024 + 120 : 1024 + 124] = b"\xff\xfe\x00\x00"
    found = probe(reader(bytes(image)))
    assert found is not None and found.label == "\ufffd\ufffd"


# -- truncated and garbage ---------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        ext_image("buildos.state"),
        btrfs_image("buildos.machines"),
        xfs_image("x"),
        vfat_image("X"),
        vfat_image("Y", fat32=True),
    ],
    ids=["ext4", "btrfs", "xfs", "vfat16", "vfat32"],
)
def test_every_truncation_of_a_superblock_is_never_a_crash(image: bytes) -> None:
    # Cut at every byte around the fields the probes read.
    sb = 0x10000 if image[0x10040:0x10048] == b"_BHRfS_M" else 0
    for cut in range(sb, min(len(image), sb + 0x12B + 257)):
        found = probe_all(reader(image[:cut]))
        assert all(isinstance(s, Superblock) for s in found)


def test_a_truncated_btrfs_superblock_is_no_filesystem() -> None:
    assert probe(reader(btrfs_image("buildos.machines")[: 0x10000 + 0x100])) is None


def test_an_unreadable_device_is_no_filesystem() -> None:
    def broken(offset: int, size: int) -> bytes:
        raise OSError(5, "Input/output error")

    assert probe_all(broken) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=8192), st.sampled_from([0, 1024, 0x10000]))
def test_garbage_is_never_a_crash(garbage: bytes, where: int) -> None:
    image = bytearray(PROBE_BYTES)
    image[where : where + len(garbage)] = garbage
    probe_all(reader(bytes(image)))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_garbage_after_a_valid_magic_is_never_a_crash(garbage: bytes) -> None:
    for base in (ext_image("a"), btrfs_image("b"), xfs_image("c"), vfat_image("D")):
        image = bytearray(base)
        at = 0x10000 + 0x48 if len(base) > 0x10000 else (1024 + 58 if base[1080] else 4)
        image[at : at + len(garbage)] = garbage
        probe_all(reader(bytes(image)))
        probe_all(reader(bytes(image[: at + len(garbage) // 2])))


# -- real superblocks made by mkfs --------------------------------------------------------


MKFS = {
    "ext4": (["mkfs.ext4", "-q", "-F", "-L", "buildos.state"], 16, ("ext4", "buildos.state")),
    "ext2": (["mkfs.ext2", "-q", "-F", "-L", "old"], 16, ("ext2", "old")),
    "btrfs": (
        ["mkfs.btrfs", "-q", "-f", "-L", "buildos.machines"],
        128,
        ("btrfs", "buildos.machines"),
    ),
    "xfs": (["mkfs.xfs", "-q", "-f", "-L", "scratch"], 320, ("xfs", "scratch")),
    "vfat": (["mkfs.vfat", "-n", "ESP"], 64, ("vfat", "ESP")),
}


@pytest.mark.parametrize("name", sorted(MKFS))
def test_real_mkfs_images_match_blkid(name: str, tmp_path: os.PathLike[str]) -> None:
    argv, mib, expected = MKFS[name]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed (scripts/bootstrap installs it)")
    image = os.path.join(str(tmp_path), f"{name}.img")
    with open(image, "wb") as f:
        f.truncate(mib << 20)
    subprocess.run([*argv, image], check=True, capture_output=True)
    with open(image, "rb") as f:
        head = f.read(PROBE_BYTES)
    found = probe(reader(head))
    assert found is not None and (found.fstype, found.label) == expected
    if shutil.which("blkid"):
        blkid = subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "UUID", image], capture_output=True, text=True
        ).stdout.strip()
        assert found.uuid.lower() == blkid.lower()


def test_real_two_device_btrfs(tmp_path: os.PathLike[str]) -> None:
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("mkfs.btrfs is not installed")
    images = [os.path.join(str(tmp_path), f"m{i}.img") for i in (1, 2)]
    for image in images:
        with open(image, "wb") as f:
            f.truncate(128 << 20)
    subprocess.run(
        [
            "mkfs.btrfs",
            "-q",
            "-f",
            "-L",
            "buildos.machines",
            "-d",
            "single",
            "-m",
            "raid1",
            *images,
        ],
        check=True,
        capture_output=True,
    )
    found = []
    for image in images:
        with open(image, "rb") as f:
            found.append(probe(reader(f.read(PROBE_BYTES))))
    assert [(s.devid, s.num_devices) for s in found if s] == [(1, 2), (2, 2)]
    assert found[0] is not None and found[1] is not None and found[0].uuid == found[1].uuid


# -- uevents --------------------------------------------------------------------------------


def test_a_kernel_uevent_is_parsed() -> None:
    message = (
        b"add@/devices/pci0000:00/0000:00:04.0/virtio1/block/vda\0ACTION=add\0"
        b"DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1/block/vda\0SUBSYSTEM=block\0"
        b"MAJOR=254\0MINOR=0\0DEVNAME=vda\0DEVTYPE=disk\0SEQNUM=812\0"
    )
    event = parse_uevent(message)
    assert event is not None
    assert (event.action, event.subsystem, event.properties["DEVNAME"]) == ("add", "block", "vda")
    assert event.devpath.endswith("/block/vda")


def test_udevs_own_messages_and_garbage_are_not_uevents() -> None:
    assert parse_uevent(b"libudev\0\xfe\xed\xca\xfe") is None
    assert parse_uevent(b"") is None
    event = parse_uevent(b"change@/x\0\xff\xfe=\x00NOEQUALS\0")
    assert event is not None and event.action == "change" and event.subsystem == ""
