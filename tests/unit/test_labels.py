"""Superblock probes (hooks.storage.labels).

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

from hooks.storage.labels import (
    BTRFS_SUPERBLOCK,
    EXT_SUPERBLOCK,
    PROBE_BYTES,
    PROBES,
    SWAP_MAGICS,
    Probe,
    Superblock,
    _btrfs,
    _ext,
    _swap,
    _u16,
    _u32,
    _vfat,
    _xfs,
    probe,
    probe_all,
)

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


# -- each probe fuzzed on its own -------------------------------------------------------
#
# probe_all() catches struct.error, ValueError and IndexError so that one
# broken probe cannot stop a boot; that would also hide a probe's bug from a
# test. These call every probe directly, and check what it returns against
# the layout its docstring gives, not only that nothing escaped.


def documented_label(raw: bytes, pad: bytes = b"\0") -> str:
    """labels._text as documented: up to the first NUL, padding stripped, lenient UTF-8."""
    return raw.split(b"\0", 1)[0].rstrip(pad).decode("utf-8", errors="replace")


def dashed(raw: bytes) -> str:
    return str(uuidlib.UUID(bytes=raw))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=PROBE_BYTES), st.data())
def test_every_probe_on_any_bytes_returns_none_or_a_superblock(
    garbage: bytes, data: st.DataObject
) -> None:
    # Random bytes, at random lengths, with the signatures' places sometimes overwritten
    # by the real magic so that the probes get past their first check.
    image = bytearray(garbage)
    for offset, magic in data.draw(
        st.lists(
            st.sampled_from(
                [
                    (EXT_SUPERBLOCK + 56, b"\x53\xef"),
                    (0x10040, b"_BHRfS_M"),
                    (0, b"XFSB"),
                    (510, b"\x55\xaa"),
                    (4086, b"SWAPSPACE2"),
                ]
            ),
            max_size=5,
        )
    ):
        if offset + len(magic) <= len(image):
            image[offset : offset + len(magic)] = magic
    for parse in PROBES:
        found = parse(bytes(image))
        assert found is None or (
            isinstance(found, Superblock) and isinstance(found.label, str) and found.fstype
        )


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1024, max_size=1024), st.integers(0, 6))
def test_ext_probe_reads_label_uuid_and_family_where_ext_keeps_them(
    sb: bytes, log_block_size: int
) -> None:
    image = bytearray(EXT_SUPERBLOCK) + bytearray(sb)
    base = EXT_SUPERBLOCK
    image[base + 56 : base + 58] = struct.pack("<H", 0xEF53)
    image[base + 24 : base + 28] = struct.pack("<I", log_block_size)
    image[base + 96] &= ~0x08  # not an external journal
    compat, incompat, ro_compat = struct.unpack_from("<III", image, base + 92)
    if incompat & ~0x16 or ro_compat & ~0x07:
        family = "ext4"
    elif compat & 0x04:
        family = "ext3"
    else:
        family = "ext2"
    found = _ext(bytes(image))
    assert found == Superblock(
        family,
        documented_label(bytes(image[base + 120 : base + 136])),
        dashed(bytes(image[base + 104 : base + 120])),
    )


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1024, max_size=1024))
def test_ext_probe_refuses_a_wrong_magic_an_absurd_block_size_or_a_journal_device(
    sb: bytes,
) -> None:
    image = bytearray(EXT_SUPERBLOCK) + bytearray(sb)
    base = EXT_SUPERBLOCK
    magic, log_block_size = _u16(bytes(image), base + 56), _u32(bytes(image), base + 24)
    journal_device = _u32(bytes(image), base + 96) & 0x08
    if magic != 0xEF53 or log_block_size > 6 or journal_device:
        assert _ext(bytes(image)) is None
    image[base + 56 : base + 58] = b"\x00\x00"
    assert _ext(bytes(image)) is None


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0x12B + 256, max_size=0x12B + 256), st.integers(1, 65536), st.integers(1))
def test_btrfs_probe_reads_label_fsid_and_device_numbers(
    sb: bytes, num_devices: int, devid: int
) -> None:
    devid = devid % (1 << 64) or 1
    image = bytearray(BTRFS_SUPERBLOCK) + bytearray(sb)
    base = BTRFS_SUPERBLOCK
    image[base + 0x40 : base + 0x48] = b"_BHRfS_M"
    image[base + 0x88 : base + 0x90] = struct.pack("<Q", num_devices)
    image[base + 0xC9 : base + 0xD1] = struct.pack("<Q", devid)
    assert _btrfs(bytes(image)) == Superblock(
        "btrfs",
        documented_label(bytes(image[base + 0x12B : base + 0x12B + 256])),
        dashed(bytes(image[base + 0x20 : base + 0x30])),
        devid=devid,
        num_devices=num_devices,
    )
    # A wrong magic, or a member count or number no btrfs has, is no btrfs.
    for offset, value in ((0x40, b"_BHRfS_N"), (0x88, bytes(8)), (0xC9, bytes(8))):
        broken = bytearray(image)
        broken[base + offset : base + offset + len(value)] = value
        assert _btrfs(bytes(broken)) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=120, max_size=512), st.integers(9, 16))
def test_xfs_probe_reads_label_and_uuid_big_endian(head: bytes, log_size: int) -> None:
    image = bytearray(head)
    image[0:8] = b"XFSB" + struct.pack(">I", 1 << log_size)
    assert _xfs(bytes(image)) == Superblock(
        "xfs", documented_label(bytes(image[108:120])), dashed(bytes(image[32:48]))
    )
    image[4:8] = struct.pack(">I", (1 << log_size) + 1)  # not a power of two
    assert _xfs(bytes(image)) is None
    image[0:8] = b"XFSC" + struct.pack(">I", 1 << log_size)
    assert _xfs(bytes(image)) is None


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=512, max_size=512),
    st.sampled_from([512, 1024, 2048, 4096]),
    st.integers(0, 7),
    st.sampled_from([b"FAT32   ", b"FAT12   ", b"FAT16   ", b"FAT     "]),
)
def test_vfat_probe_reads_the_boot_sectors_label_and_volume_id(
    head: bytes, sector: int, log_cluster: int, kind: bytes
) -> None:
    image = bytearray(head)
    image[0] = 0xEB
    image[11:14] = struct.pack("<HB", sector, 1 << log_cluster)
    image[510:512] = b"\x55\xaa"
    if kind == b"FAT32   ":
        image[82:90] = kind
        label, volume_id = bytes(image[71:82]), bytes(image[67:71])
    else:
        if image[82:87] == b"FAT32":
            image[82] = 0
        image[54:62] = kind
        label, volume_id = bytes(image[43:54]), bytes(image[39:43])
    text = documented_label(label, b" ")
    serial = volume_id[::-1].hex().upper()
    assert _vfat(bytes(image)) == Superblock(
        "vfat", "" if text == "NO NAME" else text, f"{serial[:4]}-{serial[4:]}"
    )
    image[510] = 0x54  # no boot signature
    assert _vfat(bytes(image)) is None


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=512, max_size=512), st.sampled_from(SWAP_MAGICS))
def test_swap_probe_reads_label_and_uuid_after_the_bootbits(header: bytes, magic: bytes) -> None:
    image = bytearray(1024) + bytearray(header) + bytearray(4096 - 1024 - 512)
    image[4086:4096] = magic
    assert _swap(bytes(image)) == Superblock(
        "swap",
        documented_label(bytes(image[1024 + 28 : 1024 + 44])),
        dashed(bytes(image[1024 + 12 : 1024 + 28])),
    )
    image[4095] ^= 0xFF
    assert _swap(bytes(image)) is None


@pytest.mark.parametrize(
    "image",
    [
        ext_image("s"),
        btrfs_image("m"),
        xfs_image("x"),
        vfat_image("V"),
        vfat_image("W", fat32=True),
    ],
    ids=["ext4", "btrfs", "xfs", "vfat16", "vfat32"],
)
def test_a_probe_of_a_cut_superblock_is_none_below_the_fields_it_reads(image: bytes) -> None:
    full = [p(image) for p in PROBES]
    assert sum(f is not None for f in full) == 1
    parse = PROBES[[f is not None for f in full].index(True)]
    needs: dict[Probe, int] = {
        _ext: EXT_SUPERBLOCK + 264,
        _btrfs: BTRFS_SUPERBLOCK + 0x12B + 256,
        _xfs: 120,
    }
    for cut in range(needs.get(parse, 512)):
        assert parse(image[:cut]) is None, cut


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
