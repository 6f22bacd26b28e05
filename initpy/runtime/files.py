"""Part of the kernel seam: the machine's files, as PID 1 reads and writes them.

`Files` holds every file call of the seam: reads (with `read_file` for a
disk the init does not trust: no symlink, no FIFO, a size limit), the
atomic writes to /state, folders, links, owners and modes (`lstat` tells a
link from its target, and a file's owner as the disk brought it). `Kernel`
(kernel.py) inherits it; callers go through the Kernel, and the fake kernel
overrides these methods over its folder (initpy/devtools/fake_files.py).

A leaf: the standard library only.
"""

from __future__ import annotations

import errno
import os
import stat


class Files:
    """The file calls of the kernel seam (a part of `Kernel`)."""

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def is_symlink(self, path: str) -> bool:
        return os.path.islink(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def read_bytes(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        """Read a file or block device; a short read returns what there is."""
        with open(path, "rb", buffering=0) as f:
            if offset:
                f.seek(offset)
            return f.read() if size < 0 else f.read(size)

    def read_text(self, path: str) -> str:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def read_file(self, path: str, limit: int) -> bytes:
        """At most `limit` bytes of a regular file that is not a symlink.

        For files on a disk the init does not trust (/state): a symlink
        could point anywhere, a FIFO would block PID 1, a huge file would
        fill its memory. Each is an OSError instead.
        """
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{path}: not a regular file")
            chunks: list[bytes] = []
            left = limit
            while left > 0:
                chunk = os.read(fd, left)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file in place (for /proc, /sys and files in the RAM root)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        if not path.startswith(("/proc/", "/sys/")):
            os.chmod(path, mode)

    def write_atomic(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Replace a file so that a power cut leaves the old or the new one.

        The data goes to a temporary file in the same folder, is fsync'ed,
        renamed over the target, and the folder is fsync'ed. The temporary
        file is created afresh (O_EXCL, O_NOFOLLOW): whatever sits at its
        path, a leftover of a power cut or a symlink planted on the disk,
        is removed, never written through. On any failure (ENOSPC, EIO) it
        is removed again, and the target keeps its old contents.
        """
        folder = os.path.dirname(path) or "."
        tmp = f"{path}.initpy-tmp"
        fd = self._create_new(tmp, mode)
        try:
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[self._write_some(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _create_new(self, path: str, mode: int) -> int:
        """A new, empty file at `path` (see write_atomic); the fake injects EROFS here."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(path, flags, mode)
        except FileExistsError:
            os.unlink(path)  # a file or a symlink: the link itself goes, not its target
            return os.open(path, flags, mode)

    def _write_some(self, fd: int, data: memoryview) -> int:
        """One write(2); the fake injects ENOSPC here, after part of the data."""
        return os.write(fd, data)

    def append_text(self, path: str, text: str) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)

    def remove(self, path: str) -> None:
        os.unlink(path)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, path)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(path, uid, gid)

    def set_mtime(self, path: str, seconds: float) -> None:
        os.utime(path, (seconds, seconds))

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def lstat(self, path: str) -> os.stat_result:
        """The file itself, not what a symlink points to: its type, owner and mode."""
        return os.lstat(path)
