"""`initpy-monitor --check`: one poll of the build id and the toolchain, said, nothing done.

The operator's question "what would the monitor do now?", answered with the
monitor's own reading and judging of each URL (initpy.host.monitor's poll:
the build id first, then the toolchain's checksums file, examined by
initpy.host.toolchain_check when it is not this boot's). It mails nothing,
reboots nothing, and verifies a new toolchain's files in a temporary folder
of its own, not in the running monitor's runtime directory.

Exit statuses (docs/toolchain.md, docs/fleet.md):

- 0: unchanged: the running build and toolchain (or nothing to compare the
  toolchain with: the file would become the baseline);
- 1: a URL did not answer (unreachable, or a malformed build id), or there
  is nothing to poll;
- 2: changed: another build, or another toolchain whose files all match:
  the monitor would mail the admin and reboot;
- 3: refused: another toolchain file that does not parse, or whose listed
  file is missing or does not match: the monitor would mail once and not
  reboot.
"""

from __future__ import annotations

import hashlib
import tempfile
from enum import IntEnum

from initpy.host import toolchain_check
from initpy.host.checksums import ChecksumsError, fetch_checksums, parse_checksums
from initpy.host.fetch import FetchError, fetch, parse_build_id
from initpy.host.settings import Settings


class Verdict(IntEnum):
    """--check's exit status."""

    UNCHANGED = 0
    UNREACHABLE = 1
    CHANGED = 2
    REFUSED = 3


def check(
    settings: Settings, running_id: str | None, running_key: str | None, timeout: float
) -> int:
    """Poll each URL once, print what the monitor would do; the Verdict as exit status."""
    print(f"running build: {running_id or 'unknown'}")
    polls_build = settings.buildid_url is not None and running_id is not None
    if not polls_build and settings.toolchain_url is None:
        print("not polling: " + ("no buildos.buildid_url" if running_id else "no running id"))
        return Verdict.UNREACHABLE
    if polls_build:
        assert settings.buildid_url is not None
        verdict = _build_id(settings.buildid_url, running_id, timeout)
        if verdict != Verdict.UNCHANGED:
            return verdict  # the monitor acts on the build id before it reads the toolchain
    if settings.toolchain_url is None:
        return Verdict.UNCHANGED
    return _toolchain(settings.toolchain_url, running_key, timeout)


def _build_id(url: str, running_id: str | None, timeout: float) -> Verdict:
    try:
        new_id = parse_build_id(fetch(url, timeout))
    except (FetchError, ValueError) as exc:
        print(f"{url}: {exc}: the monitor would log it and wait longer")
        return Verdict.UNREACHABLE
    print(f"{url}: {new_id}")
    if new_id == running_id:
        print("the same build: nothing to do")
        return Verdict.UNCHANGED
    print("another build: the monitor would mail the admin and reboot")
    return Verdict.CHANGED


def _toolchain(url: str, running_key: str | None, timeout: float) -> Verdict:
    print(f"running toolchain: {running_key or 'none recorded'}")
    try:
        body = fetch_checksums(url, timeout)
    except FetchError as exc:
        print(f"{url}: {exc}: unreachable; the monitor would log it and wait longer")
        return Verdict.UNREACHABLE
    key = hashlib.sha256(body).hexdigest()
    print(f"{url}: checksums sha256 {key}")
    if key == running_key:
        print("the same toolchain: nothing to do")
        return Verdict.UNCHANGED
    try:
        if running_key is None:
            parse_checksums(body, url)
        else:
            with tempfile.TemporaryDirectory(prefix="initpy-monitor-check-") as folder:
                toolchain_check.examine(body, url, folder, timeout)
    except ChecksumsError as exc:
        return _refused(f"the checksums file does not parse: {exc}")
    except toolchain_check.Refused as exc:
        return _refused(str(exc))
    except (FetchError, OSError) as exc:
        print(f"{exc}: unreachable; the monitor would log it and wait longer")
        return Verdict.UNREACHABLE
    if running_key is None:
        print("no toolchain recorded for this boot: the monitor would take this file as its own")
        return Verdict.UNCHANGED
    print("another toolchain, every file matches: the monitor would mail the admin and reboot")
    return Verdict.CHANGED


def _refused(problem: str) -> Verdict:
    print(f"refused: {problem}; the monitor would mail the admin once and not reboot")
    return Verdict.REFUSED
