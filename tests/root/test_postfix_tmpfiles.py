"""The services hook's tmpfiles.d entry, run by the real systemd-tmpfiles, as root.

The image's tree skips postfix's start-up check (os/customize's quick-start),
which is what makes the queue's `hold` and `trace` folders; without `hold`
`postqueue -p` fails and the monitor could not tell whether its mail had
left before it reboots. tests/vm/test_fullos.py sees the queue empty from
the monitor's own sandbox on the booted image.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hooks.services import os_files as services_os

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.getuid() != 0, reason="needs root (chown to postfix)"),
]


def test_postfixs_missing_queue_folders_are_made_by_systemd_tmpfiles(tmp_path: Path) -> None:
    """The image's tree skips postfix's start-up check, which makes `hold` and
    `trace`; without `hold` postqueue -p fails. The real systemd-tmpfiles,
    given the shipped file, makes both, postfix's and 0700, and leaves the
    queue's other folders as they were."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\npostfix:x:107:113::/:/bin/false\n"
    )
    (tmp_path / "etc/group").write_text("root:x:0:\npostfix:x:113:\n")
    deferred = tmp_path / "var/spool/postfix/deferred"
    deferred.mkdir(parents=True)
    (deferred / "kept").write_text("a queued mail")
    conf = tmp_path / services_os.POSTFIX_TMPFILES.lstrip("/")
    conf.parent.mkdir(parents=True)
    conf.write_text(services_os.POSTFIX_TMPFILES_TEXT)
    subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={tmp_path}", str(conf)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for folder in ("hold", "trace"):
        made = (tmp_path / "var/spool/postfix" / folder).stat()
        assert (made.st_uid, made.st_gid, made.st_mode & 0o7777) == (107, 0, 0o700), folder
    assert (deferred / "kept").read_text() == "a queued mail"
