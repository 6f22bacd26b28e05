"""The initrd's newc writer: layout, reproducibility, compression."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from initpy.builder import cpio


def _entries() -> list[cpio.Entry]:
    return [
        cpio.regular("a-b", data=b"dash"),
        cpio.regular("a/b", data=b"inside", perm=0o755, mtime=5),
        cpio.regular("a/late", data=b"new", mtime=2_000_000_000),
        cpio.symlink("bin", "usr/bin"),
        cpio.char_device("dev/null", 1, 3, 0o666),
        cpio.directory("tmp", 0o1777),
    ]


def test_members_are_sorted_with_parents_first_and_inodes_renumbered() -> None:
    members = cpio.read_newc(cpio.archive(_entries(), mtime=1000))
    paths = [m.path for m in members]
    assert paths == ["a", "a/b", "a/late", "a-b", "bin", "dev", "dev/null", "tmp"]
    assert [m.ino for m in members] == list(range(1, len(members) + 1))
    by_path = {m.path: m for m in members}
    assert stat.S_ISDIR(by_path["a"].mode) and stat.S_IMODE(by_path["a"].mode) == 0o755
    assert stat.S_IMODE(by_path["tmp"].mode) == 0o1777
    assert by_path["a/b"].data == b"inside" and stat.S_IMODE(by_path["a/b"].mode) == 0o755
    assert by_path["bin"].data == b"usr/bin" and stat.S_ISLNK(by_path["bin"].mode)
    null = by_path["dev/null"]
    assert stat.S_ISCHR(null.mode) and (null.rdevmajor, null.rdevminor) == (1, 3)


def test_mtimes_are_clamped_to_source_date_epoch() -> None:
    by_path = {m.path: m for m in cpio.read_newc(cpio.archive(_entries(), mtime=1000))}
    assert by_path["a/b"].mtime == 5  # older than the epoch: kept
    assert by_path["a/late"].mtime == 1000  # newer: clamped
    assert by_path["a-b"].mtime == 1000  # none: the epoch


def test_owner_fields_are_root_and_nlink_one() -> None:
    raw = cpio.archive([cpio.regular("f", data=b"x")], mtime=0)
    header = raw[:110]
    fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    assert fields[2:5] == [0, 0, 1]  # uid, gid, nlink


def test_same_input_gives_same_bytes_and_epoch_changes_them() -> None:
    one = cpio.archive(_entries(), mtime=1000)
    two = cpio.archive(list(reversed(_entries())), mtime=1000)
    assert one == two
    assert cpio.archive(_entries(), mtime=1001) != one
    assert len(one) % 4 == 0 and one.rstrip(b"\0").endswith(b"TRAILER!!!")


@pytest.mark.parametrize("path", ["/abs", "a/../b", ""])
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(cpio.ArchiveError, match="bad path"):
        cpio.archive([cpio.Entry(path, stat.S_IFREG | 0o644)], 0)


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(cpio.ArchiveError, match="twice"):
        cpio.archive([cpio.regular("x", data=b"1"), cpio.regular("x/", data=b"2")], 0)


def test_concatenated_archives_read_back_as_one() -> None:
    first = cpio.archive([cpio.regular("a", data=b"1")], 0)
    second = cpio.archive([cpio.regular("b", data=b"22")], 0)
    assert [m.path for m in cpio.read_newc(first + second)] == ["a", "b"]


@pytest.mark.parametrize("method", cpio.COMPRESSIONS)
def test_compression_round_trips(method: str) -> None:
    raw = cpio.archive(_entries(), 0)
    packed = cpio.compress(raw, method, level=3 if method == "zstd" else None)
    if method != "none":
        assert packed != raw
    assert cpio.decompress(packed) == raw


def test_unknown_compression_is_refused() -> None:
    with pytest.raises(cpio.ArchiveError, match="unknown compression 'lzo'"):
        cpio.compress(b"x", "lzo")


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [("zstd", ("zstd", None)), ("zstd:3", ("zstd", 3)), ("gzip:1", ("gzip", 1)),
     ("xz:0", ("xz", 0)), ("lz4:12", ("lz4", 12)), ("none", ("none", None))],
)  # fmt: skip
def test_a_compression_may_name_its_level(spec: str, parsed: tuple[str, int | None]) -> None:
    assert cpio.parse_compression(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "says"),
    [("lzo", "unknown compression 'lzo'"), ("zstd:20", "level is 1 to 19"),
     ("zstd:0", "level is 1 to 19"), ("gzip:x", "level is 1 to 9"), ("none:1", "no level")],
)  # fmt: skip
def test_a_bad_compression_or_level_is_refused(spec: str, says: str) -> None:
    with pytest.raises(cpio.ArchiveError, match=says):
        cpio.parse_compression(spec)


def test_levels_are_cached_apart_and_a_low_level_is_bigger(tmp_path: str) -> None:
    raw = cpio.archive(_entries(), 0) * 50
    cache = os.path.join(tmp_path, "c")
    fast = cpio.compress_cached(raw, "zstd", cache, 1)
    best = cpio.compress_cached(raw, "zstd", cache)
    assert len(os.listdir(cache)) == 2
    assert cpio.decompress(fast) == cpio.decompress(best) == raw
    assert fast == cpio.compress(raw, "zstd", 1) and best == cpio.compress(raw, "zstd", 19)


def test_compress_cache_returns_the_same_bytes(tmp_path: str) -> None:
    raw = cpio.archive(_entries(), 0)
    cache = os.path.join(tmp_path, "c")
    first = cpio.compress_cached(raw, "gzip", cache)
    assert len(os.listdir(cache)) == 1
    assert cpio.compress_cached(raw, "gzip", cache) == first == cpio.compress(raw, "gzip")
    assert len(os.listdir(cache)) == 1


def test_tree_keeps_modes_and_symlinks(tmp_path: str) -> None:
    top = os.path.join(tmp_path, "t")
    os.makedirs(os.path.join(top, "bin"))
    script = os.path.join(top, "bin", "run")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(script, 0o750)
    os.symlink("run", os.path.join(top, "bin", "go"))
    entries = {e.path: e for e in cpio.entries_from_tree(top, "/opt")}
    assert stat.S_IMODE(entries["opt/bin/run"].mode) == 0o750
    assert entries["opt/bin/go"].data == b"run"
    members = {m.path: m for m in cpio.read_newc(cpio.archive(entries.values(), 0))}
    assert members["opt/bin/run"].data == b"#!/bin/sh\n"


def test_tree_fifos_and_sockets(tmp_path: str) -> None:
    os.mkfifo(os.path.join(tmp_path, "fifo"))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.path.join(tmp_path, "sock"))
    try:
        entries = {e.path: e for e in cpio.entries_from_tree(str(tmp_path))}
    finally:
        listener.close()
    assert stat.S_ISFIFO(entries["fifo"].mode)
    assert "sock" not in entries  # made by whoever listens, at run time
    members = {m.path: m for m in cpio.read_newc(cpio.archive(entries.values(), 0))}
    assert stat.S_ISFIFO(members["fifo"].mode) and members["fifo"].data == b""


@pytest.mark.skipif(os.getuid() != 0, reason="mknod and chown need root")
def test_tree_device_nodes_and_owners(tmp_path: str) -> None:
    os.mknod(os.path.join(tmp_path, "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    spool = os.path.join(tmp_path, "spool")
    os.mkdir(spool)
    os.chown(spool, 107, 114)
    kept = {e.path: e for e in cpio.entries_from_tree(str(tmp_path), keep_owners=True)}
    members = {m.path: m for m in cpio.read_newc(cpio.archive(kept.values(), 0))}
    assert stat.S_ISCHR(members["null"].mode)
    assert (members["null"].rdevmajor, members["null"].rdevminor) == (1, 3)
    assert (members["spool"].uid, members["spool"].gid) == (107, 114)
    root_owned = cpio.entries_from_tree(str(tmp_path))
    assert {(e.uid, e.gid) for e in root_owned} == {(0, 0)}
