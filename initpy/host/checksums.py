"""The toolchain's checksums file: reading `buildos.toolchain_url`'s `sha256sum` lines,
and fetching a file it lists with its sha256 checked (`fetch_verified`).

The file is the shape of build2's `toolchain.sha256`: one line per file,
`<64 hex digits> <space or *><name>` (what `sha256sum` and `sha256sum -b`
print), the names relative to the checksums file's own folder. It lists
the install script (the one name ending in `.sh`, build2's
`build2-install-X.sh`) and the source archive it builds
(`build2-toolchain-X.tar.xz`); every listed file is fetched, and verified
before anything runs.

A name is a relative path of plain components (letters, digits, `.`, `_`,
`+`, `-`, not starting with a dot): no absolute path, no `..`, no empty
component, no backslash or control character. The files land in one flat
folder under their last component, so two names with the same last
component are refused as duplicates: nothing a server lists can write
outside that folder or replace another listed file.

`fetch_verified` is the one way a listed file is fetched, by
initpy-toolchain before it runs anything and by initpy-monitor before it
reboots onto a new toolchain: streamed to disk within `FILE_LIMIT` bytes
and `FILE_DEADLINE` seconds, hashed as it comes, `Mismatch` when its sum is
not the listed one.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from initpy.host.fetch import fetch, fetch_to_file

# A real toolchain.sha256 is under 2 KiB; a file this long is not one.
CHECKSUMS_LIMIT = 65536
MAX_FILES = 64
FILE_LIMIT = 1 << 30  # build2's source archive is about 30 MB
FILE_DEADLINE = 1800.0
_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.*)")
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
INSTALL_SCRIPT_SUFFIX = ".sh"


class ChecksumsError(ValueError):
    """The checksums file cannot be used; the text names the line and the fix."""


class Mismatch(ChecksumsError):
    """A listed file's sha256 is not the one the checksums file gives."""


@dataclass(frozen=True)
class Listed:
    """One file the checksums file lists."""

    name: str  # as listed, relative to the checksums file's folder
    sha256: str  # lower-case hex

    @property
    def filename(self) -> str:
        """The name it is stored under: the last component."""
        return self.name.rpartition("/")[2]


@dataclass(frozen=True)
class Checksums:
    """A parsed checksums file, and the sha256 of its bytes (the toolchain's identity)."""

    files: tuple[Listed, ...]
    key: str

    @property
    def install_script(self) -> Listed:
        (script,) = (f for f in self.files if f.filename.endswith(INSTALL_SCRIPT_SUFFIX))
        return script

    def url_of(self, checksums_url: str, listed: Listed) -> str:
        """Where a listed file is: its name relative to the checksums file's URL.

        Not urljoin: it leaves a tftp:// URL's path alone.
        """
        parts = urllib.parse.urlsplit(checksums_url)
        folder = parts.path.rpartition("/")[0]
        path = f"{folder}/{urllib.parse.quote(listed.name)}"
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def fetch_checksums(url: str, timeout: float) -> bytes:
    """The checksums file at `url`: longer than a build id file may be."""
    return fetch(url, timeout, CHECKSUMS_LIMIT)


def parse_checksums(body: bytes, source: str = "the checksums file") -> Checksums:
    """The listed files, or ChecksumsError naming the first bad line and the fix."""
    if len(body) > CHECKSUMS_LIMIT:
        raise ChecksumsError(f"{source}: {len(body)} bytes, more than {CHECKSUMS_LIMIT}")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise ChecksumsError(f"{source}: not ASCII text; expected sha256sum's output") from None
    files: list[Listed] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source} line {number} ({line[:100]!r})"
        match = _LINE.fullmatch(line)
        if match is None:
            raise ChecksumsError(
                f"{where}: not '<64 hex digits>  <name>'; write it with sha256sum (or sha256sum -b)"
            )
        digest, name = match[1].lower(), match[2]
        _check_name(name, where)
        stored = name.rpartition("/")[2]
        if stored in seen:
            raise ChecksumsError(
                f"{where}: {stored!r} is listed again (first on line {seen[stored]}); "
                "list each file once"
            )
        seen[stored] = number
        files.append(Listed(name, digest))
    if not files:
        raise ChecksumsError(f"{source}: lists no file; expected an install script and an archive")
    if len(files) > MAX_FILES:
        raise ChecksumsError(f"{source}: lists {len(files)} files, more than {MAX_FILES}")
    scripts = [f.name for f in files if f.filename.endswith(INSTALL_SCRIPT_SUFFIX)]
    if len(scripts) != 1:
        raise ChecksumsError(
            f"{source}: lists {len(scripts)} files ending in {INSTALL_SCRIPT_SUFFIX} "
            f"({', '.join(scripts) or 'none'}); expected exactly one install script "
            "(build2-install-X.sh)"
        )
    return Checksums(tuple(files), hashlib.sha256(body).hexdigest())


def _check_name(name: str, where: str) -> None:
    if name.startswith("/"):
        raise ChecksumsError(
            f"{where}: {name!r} is an absolute path; list names relative to the checksums file"
        )
    for component in name.split("/"):
        if component in ("", ".", ".."):
            raise ChecksumsError(
                f"{where}: {name!r} has {'an empty' if not component else repr(component)} "
                "component; list plain "
                "names relative to the checksums file's folder"
            )
        if not _COMPONENT.fullmatch(component):
            raise ChecksumsError(
                f"{where}: {component!r} is not a plain file name (letters, digits, . _ + -, "
                "not starting with a dot)"
            )


def fetch_verified(
    url: str,
    listed: Listed,
    folder: str,
    timeout: float,
    limit: int = FILE_LIMIT,
    deadline: float = FILE_DEADLINE,
    progress: Callable[[], None] | None = None,
) -> str:
    """Fetch `listed` from `url` (`Checksums.url_of`) into `folder` under its
    file name and check its sha256; the file's path. `progress`: called as
    the bytes arrive (fetch_to_file).

    FetchError when it cannot be fetched (TooLong past `limit`, NotFound
    when the server has no such file), Mismatch when its sum differs.
    """
    path = os.path.join(folder, listed.filename)
    digest = fetch_to_file(url, path, limit, timeout, deadline, progress)
    if digest != listed.sha256:
        raise Mismatch(
            f"{listed.name} at {url} has sha256 {digest}, but the checksums file says "
            f"{listed.sha256}"
        )
    return path
