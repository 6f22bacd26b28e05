"""The fake kernel's files: a folder as the machine's disk, with owners a test sets.

`FakeFiles` is the file half of `FakeKernel` (fake.py): every file call of
the seam (initpy/runtime/files.py) below the fake root, with the scripted
faults (`failures`: mkdir, write). The owners are modelled, not real (the
tests need not run as root): `owners` maps a guest path to its uid and
gid, and a path not in it is root's, as whatever PID 1 makes is. `chown`
sets it, `stat` and `lstat` report it, a rename moves it, and a file
`write_atomic` puts in place is a new file, root's again.
"""

from __future__ import annotations

import errno
import os

from initpy.runtime.kernel import Kernel

# Errors a disk gives in the middle of a write, after part of the data.
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


class FakeFiles(Kernel):
    """The file calls of the fake kernel; FakeKernel holds the fields named here."""

    root: str
    failures: dict[str, dict[str, int]]
    calls: list[tuple[object, ...]]
    block_devices: dict[str, bytes]
    # guest path -> (uid, gid); a path not here is root's
    owners: dict[str, tuple[int, int]]
    _write_fault: int | None

    def path(self, path: str) -> str:
        """The host path of a guest path."""
        if not path.startswith("/"):
            raise ValueError(f"fake kernel: guest paths are absolute, got {path!r}")
        return os.path.join(self.root, path.lstrip("/"))

    def _fail(self, call: str, key: str) -> None:
        err = self.failures.get(call, {}).get(key)
        if err is not None:
            raise OSError(err, f"{call} {key}: {os.strerror(err)}")

    def exists(self, path: str) -> bool:
        return path in self.block_devices or os.path.lexists(self.path(path))

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(self.path(path))

    def is_symlink(self, path: str) -> bool:
        return os.path.islink(self.path(path))

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self.path(path)))

    def read_bytes(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        if path in self.block_devices:
            image = self.block_devices[path]
            return image[offset:] if size < 0 else image[offset : offset + size]
        return super().read_bytes(self.path(path), offset, size)

    def read_text(self, path: str) -> str:
        return super().read_text(self.path(path))

    def read_file(self, path: str, limit: int) -> bytes:
        self.calls.append(("read_file", path, limit))
        return super().read_file(self.path(path), limit)

    def readlink(self, path: str) -> str:
        return os.readlink(self.path(path))

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        fault = self.failures.get("write", {}).get(path)
        if fault is not None and fault not in WRITE_ERRORS:
            self._fail("write", path)
        os.makedirs(os.path.dirname(self.path(path)), exist_ok=True)
        with open(self.path(path), "w", encoding="utf-8") as f:
            f.write(text[: len(text) // 2] if fault is not None else text)
        if fault is not None:  # the disk filled up halfway
            self._fail("write", path)
        os.chmod(self.path(path), mode)

    def write_atomic(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """The real seam's write_atomic in the fake root, with the scripted fault."""
        self.calls.append(("write_atomic", path))
        self._write_fault = self.failures.get("write", {}).get(path)
        if self._write_fault == errno.EEXIST:
            with open(self.path(path) + ".initpy-tmp", "wb") as f:
                f.write(b"left by a power cut\n")
        try:
            super().write_atomic(self.path(path), data, mode)
        finally:
            self._write_fault = None
        self.owners.pop(path, None)  # a new file, made by root

    def _create_new(self, path: str, mode: int) -> int:
        fault = self._write_fault
        if fault is not None and fault not in WRITE_ERRORS and fault != errno.EEXIST:
            raise OSError(fault, f"open {path}: {os.strerror(fault)}")
        return super()._create_new(path, mode)

    def _write_some(self, fd: int, data: memoryview) -> int:
        fault = self._write_fault
        if fault in WRITE_ERRORS:
            if os.lseek(fd, 0, os.SEEK_CUR) > 0 or len(data) < 2:
                raise OSError(fault, f"write: {os.strerror(fault)}")
            return super()._write_some(fd, data[: len(data) // 2])
        return super()._write_some(fd, data)

    def append_text(self, path: str, text: str) -> None:
        super().append_text(self.path(path), text)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self._fail("mkdir", path)
        os.makedirs(self.path(path), mode=mode, exist_ok=True)

    def remove(self, path: str) -> None:
        os.unlink(self.path(path))
        self.owners.pop(path, None)

    def rename(self, src: str, dst: str) -> None:
        self._fail("rename", src)
        os.rename(self.path(src), self.path(dst))
        self._move_owners(src, dst)

    def _move_owners(self, src: str, dst: str) -> None:
        """The owners of `src` and all below it now belong to `dst`; `dst`'s old ones go."""
        below = {p for p in self.owners if p == dst or p.startswith(dst + "/")}
        for gone in below:
            del self.owners[gone]
        for moved in [p for p in self.owners if p == src or p.startswith(src + "/")]:
            self.owners[dst + moved[len(src) :]] = self.owners.pop(moved)

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, self.path(path))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self.path(path), mode)

    def set_mtime(self, path: str, seconds: float) -> None:
        os.utime(self.path(path), (seconds, seconds))

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.calls.append(("chown", path, uid, gid))
        self._fail("chown", path)
        self.owners[path] = (uid, gid)

    def stat(self, path: str) -> os.stat_result:
        return self._owned(path, os.stat(self.path(path)))

    def lstat(self, path: str) -> os.stat_result:
        return self._owned(path, os.lstat(self.path(path)))

    def _owned(self, path: str, found: os.stat_result) -> os.stat_result:
        """`found` with the modelled owner of `path` (root's unless a test or chown set one)."""
        uid, gid = self.owners.get(path, (0, 0))
        fields = tuple(found)
        return os.stat_result((*fields[:4], uid, gid, *fields[6:10]))
