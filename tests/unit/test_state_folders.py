"""The init's folders on /state arrive with a hostile owner or mode (issue 19, acceptance 5).

A state disk whose /state/initpy is 0777 and owned by the build user (uid
1100) may hold a `failed_boots` count or an SSH host key that user planted.
The driver, as soon as /state is mounted, moves every entry of the init's
tree that someone other than root could have written aside
(`NAME.untrusted-N`, kept, never used) and starts afresh; a loose but
root-owned folder is only tightened to 0700. Each change is a warning in
the report. The fake kernel models owners (fake_files.py); the root tier
(tests/root/test_state_folders.py) does the same on a real ext4.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from hooks import persist
from initpy.devtools.fake import FakeKernel, HandedOff
from initpy.devtools.walk import fake_ssh_keygen
from initpy.runtime import state_folders
from initpy.runtime.failed_boots import COUNT_PATH
from tests.unit.conftest import read_report, report_warnings
from tests.unit.storage_boot import boot, next_boot, standard_disks

BUILD = (1100, 1100)
PLANTED_KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nplanted\n-----END OPENSSH PRIVATE KEY-----\n"
KEYS = persist.HOST_KEY_FOLDER
ED25519 = f"{KEYS}/ssh_host_ed25519_key"


def write(k: FakeKernel, path: str, data: bytes, mode: int = 0o600) -> None:
    os.makedirs(os.path.dirname(k.path(path)), exist_ok=True)
    with open(k.path(path), "wb") as f:
        f.write(data)
    os.chmod(k.path(path), mode)


def folder(k: FakeKernel, path: str, mode: int) -> None:
    os.makedirs(k.path(path), exist_ok=True)
    os.chmod(k.path(path), mode)


def read(k: FakeKernel, path: str) -> bytes:
    with open(k.path(path), "rb") as f:
        return f.read()


def prepared(kernel: FakeKernel) -> FakeKernel:
    kernel.commands["ssh-keygen"] = fake_ssh_keygen(kernel)
    standard_disks(kernel)
    return kernel


def test_a_folder_the_build_user_owns_is_moved_aside_whole_and_never_used(
    kernel: FakeKernel,
) -> None:
    k = prepared(kernel)
    folder(k, "/state/initpy", 0o777)
    folder(k, KEYS, 0o777)
    k.owners.update({"/state/initpy": BUILD, KEYS: BUILD})
    write(k, COUNT_PATH, b"7\n", 0o666)
    write(k, ED25519, PLANTED_KEY, 0o666)
    write(k, ED25519 + ".pub", b"ssh-ed25519 AAAAplanted build@evil\n", 0o666)
    assert isinstance(boot(k), HandedOff)
    # Kept whole, byte for byte, beside the fresh folder; nothing of it was used.
    aside = "/state/initpy.untrusted-1"
    assert read(k, f"{aside}/failed_boots") == b"7\n"
    assert read(k, f"{aside}/ssh/ssh_host_ed25519_key") == PLANTED_KEY
    assert read(k, "/etc/ssh/ssh_host_ed25519_key") != PLANTED_KEY
    assert b"planted" not in read(k, ED25519)
    assert read(k, COUNT_PATH) == b"0\n"  # this boot counted from 0, and reached the hand-off
    fresh = k.lstat("/state/initpy")
    assert (fresh.st_uid, stat.S_IMODE(fresh.st_mode)) == (0, 0o700)
    assert stat.S_IMODE(k.lstat(KEYS).st_mode) == 0o700
    report = read_report(k)
    assert report["state_folders"] == [
        f"/state/initpy: owned by uid 1100, not root; moved to {aside}"
    ]
    assert any(
        w.startswith(f"state: /state/initpy was owned by uid 1100, not root: moved to {aside}")
        for w in report_warnings(k)
    )


def test_hostile_files_in_a_good_folder_are_moved_aside_one_by_one(kernel: FakeKernel) -> None:
    k = prepared(kernel)
    folder(k, "/state/initpy", 0o700)
    folder(k, KEYS, 0o700)
    write(k, COUNT_PATH, b"9\n")
    k.owners[COUNT_PATH] = BUILD  # a count the build user wrote
    write(k, ED25519, PLANTED_KEY, 0o620)  # root's, but group-writable
    write(k, ED25519 + ".pub", b"ssh-ed25519 AAAAplanted\n")
    os.symlink("/etc/shadow", k.path(f"{KEYS}/ssh_host_ecdsa_key"))
    os.mkfifo(k.path(f"{KEYS}/ssh_host_rsa_key"))
    write(k, "/state/other", b"the operator's\n")
    os.link(k.path("/state/other"), k.path(f"{KEYS}/ssh_host_rsa_key.pub"))
    assert isinstance(boot(k), HandedOff)
    moved = {
        COUNT_PATH: "owned by uid 1100, not root",
        ED25519: "writable by group or others (mode 0620)",
        f"{KEYS}/ssh_host_ecdsa_key": "a symlink to '/etc/shadow'",
        f"{KEYS}/ssh_host_rsa_key": "not a regular file or folder",
        f"{KEYS}/ssh_host_rsa_key.pub": "a file with 2 hard links",
    }
    changes = read_report(k)["state_folders"]
    assert isinstance(changes, list)
    for path, problem in moved.items():
        assert any(c.startswith(f"{path}: {problem}") for c in changes), (path, changes)
        assert k.exists(f"{path}.untrusted-1")
    assert read(k, f"{COUNT_PATH}.untrusted-1") == b"9\n"
    assert os.readlink(k.path(f"{KEYS}/ssh_host_ecdsa_key.untrusted-1")) == "/etc/shadow"
    assert read(k, "/state/other") == b"the operator's\n"  # never touched
    assert b"planted" not in read(k, "/etc/ssh/ssh_host_ed25519_key")
    assert read(k, COUNT_PATH) == b"0\n"


def test_a_loose_root_folder_is_tightened_and_state_itself_is_only_warned_about(
    kernel: FakeKernel,
) -> None:
    k = prepared(kernel)
    folder(k, "/state", 0o777)
    folder(k, "/state/initpy/reports", 0o755)
    os.chmod(k.path("/state/initpy"), 0o750)
    assert isinstance(boot(k), HandedOff)
    assert stat.S_IMODE(k.lstat("/state/initpy").st_mode) == 0o700
    assert stat.S_IMODE(k.lstat("/state/initpy/reports").st_mode) == 0o700
    assert stat.S_IMODE(k.lstat("/state").st_mode) == 0o777  # the operator's: not changed
    assert read_report(k)["state_folders"] == [
        "/state/initpy: mode 0750 -> 0700",
        "/state/initpy/reports: mode 0755 -> 0700",
    ]
    assert any(
        w.startswith("state: /state is owned by uid 0 with mode 0777") for w in report_warnings(k)
    )


def test_each_boot_moves_aside_to_the_next_free_name(kernel: FakeKernel) -> None:
    k = prepared(kernel)
    folder(k, "/state/initpy", 0o777)
    assert isinstance(boot(k), HandedOff)
    second = next_boot(k)
    os.chmod(second.path("/state/initpy"), 0o777)  # planted again after the first boot
    second.owners["/state/initpy"] = BUILD
    assert isinstance(boot(second), HandedOff)
    assert second.exists("/state/initpy.untrusted-1") and second.exists("/state/initpy.untrusted-2")
    assert stat.S_IMODE(second.lstat("/state/initpy").st_mode) == 0o700


def test_a_folder_that_cannot_be_moved_aside_is_refused_at_every_use(kernel: FakeKernel) -> None:
    """A read-only rename fails: then nothing is read from it or written into it."""
    k = prepared(kernel)
    folder(k, "/state/initpy", 0o777)
    k.owners["/state/initpy"] = BUILD
    write(k, COUNT_PATH, b"7\n", 0o666)
    k.owners[COUNT_PATH] = BUILD
    k.failures["rename"] = {"/state/initpy": errno.EROFS}
    assert isinstance(boot(k), HandedOff)
    assert read(k, COUNT_PATH) == b"7\n"  # neither read (no 8) nor reset
    assert sorted(os.listdir(k.path("/state/initpy"))) == ["failed_boots"]
    assert k.syscalls("feed_urandom") == []
    text = "\n".join(report_warnings(k))
    assert "cannot be moved aside" in text
    assert "failed boots: cannot keep the count" in text
    assert "host keys cannot be kept on /state" in text


def test_own_folder_moves_aside_what_stands_in_its_way_or_refuses_it(
    kernel: FakeKernel,
) -> None:
    said: list[str] = []
    folder(kernel, "/state/initpy", 0o700)
    write(kernel, KEYS, b"a file where the folder belongs\n")
    state_folders.own_folder(kernel, KEYS, said.append)
    assert kernel.is_dir(KEYS) and stat.S_IMODE(kernel.lstat(KEYS).st_mode) == 0o700
    assert read(kernel, f"{KEYS}.untrusted-1") == b"a file where the folder belongs\n"
    assert said == [
        f"state: {KEYS} was not a folder: moved to {KEYS}.untrusted-1, kept but never used; "
        f"a new one is made (look at it, then delete it: rm -r {KEYS}.untrusted-1)"
    ]
    kernel.owners[KEYS] = BUILD
    kernel.failures["rename"] = {KEYS: errno.EROFS}
    with pytest.raises(OSError, match="owned by uid 1100"):
        state_folders.own_folder(kernel, KEYS, said.append)
    assert "cannot be moved aside" in said[-1]
