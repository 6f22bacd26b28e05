"""initpy-monitor's look at a new toolchain before it reboots onto it.

A new checksums file reboots the host, and the next boot's initpy-toolchain
runs what it lists. If a listed file were missing or did not match its sum,
that boot would fail at "verify" and the host would come up without an
agent: the reboot would have lost a working toolchain for a broken one. So
before the monitor reboots, `examine` fetches every listed file with the
bootstrap's own `fetch_verified` (the same caps and deadline) into a
private folder of the monitor's runtime directory, checks each sha256, and
removes the folder again. Nothing it fetches is run.

Its answer is one of three:

- the checksums and every listed file: the reboot may go on;
- `Refused`, a verdict on the checksums file (it does not parse, a listed
  file is missing or larger than the cap, or its sum differs): the
  monitor mails the admin once and keeps running what it runs;
- `FetchError` (or `OSError` for the folder): the network or the host
  failed, not the file; a failed poll, to be tried again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from initpy.host.checksums import (
    FILE_DEADLINE,
    FILE_LIMIT,
    Checksums,
    ChecksumsError,
    Mismatch,
    fetch_verified,
    parse_checksums,
)
from initpy.host.fetch import FetchError, NotFound, TooLong

# Below the monitor's RuntimeDirectory=, so only its uid can read or write it.
FOLDER_NAME = "toolchain-check"


class Refused(Exception):
    """The checksums file cannot be booted onto; the text names the file and the problem."""


def examine(
    body: bytes,
    url: str,
    run_dir: str,
    timeout: float,
    limit: int = FILE_LIMIT,
    deadline: float = FILE_DEADLINE,
    progress: Callable[[], None] | None = None,
) -> Checksums:
    """The parsed checksums file at `url`, every listed file fetched and verified.

    `progress` is called as each file's bytes arrive (the monitor's
    watchdog: a 1 GiB file may take half an hour).

    Refused for a verdict on the file; FetchError or OSError for a failure
    that another poll may not have.
    """
    try:
        checksums = parse_checksums(body, url)
    except ChecksumsError as exc:
        raise Refused(f"the checksums file does not parse: {exc}") from None
    folder = os.path.join(run_dir, FOLDER_NAME)
    # A monitor killed half-way (RuntimeDirectoryPreserve=restart) left one.
    shutil.rmtree(folder, ignore_errors=True)
    os.mkdir(folder, 0o700)
    try:
        for listed in checksums.files:
            file_url = checksums.url_of(url, listed)
            try:
                fetch_verified(file_url, listed, folder, timeout, limit, deadline, progress)
            except (NotFound, TooLong) as exc:
                raise Refused(f"{listed.name} at {file_url}: {exc}") from None
            except FetchError as exc:
                raise FetchError(f"{listed.name} at {file_url}: {exc}") from None
            except Mismatch as exc:
                raise Refused(str(exc)) from None
            # Each file is gone before the next comes, so /run holds one at a time.
            os.unlink(os.path.join(folder, listed.filename))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return checksums
