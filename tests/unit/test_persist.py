"""What /state holds cannot stop the boot (issue 9, finding 5).

/state is a disk the init does not trust: read-only, full, with a file
where a folder belongs, a symlink, a FIFO or a 64 MiB "seed". Every one is
a warning, the boot hands off, and the SSH host keys still reach /etc/ssh.
The fake kernel injects the failures a disk gives (EROFS at create, ENOSPC
halfway through a write, a stale temporary file), and write_atomic is the
real seam's code running in the fake root.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from hooks import persist
from initpy.devtools.fake import FakeKernel, HandedOff
from initpy.devtools.walk import fake_ssh_keygen
from initpy.runtime.kernel import Completed, Kernel
from tests.unit.conftest import make_executable, read_report, report_warnings
from tests.unit.storage_boot import boot, commands_run, next_boot, standard_disks

SEED = persist.SEED_PATH
KEYS = [f"ssh_host_{kind}_key{end}" for kind in persist.HOST_KEY_TYPES for end in ("", ".pub")]


@pytest.fixture
def k(kernel: FakeKernel) -> FakeKernel:
    kernel.commands["ssh-keygen"] = fake_ssh_keygen(kernel)
    standard_disks(kernel)
    return kernel


def assert_handed_off_with_host_keys(k: FakeKernel) -> None:
    assert isinstance(boot(k), HandedOff), "\n".join(k.console_lines)
    assert read_report(k)["outcome"] == "handoff"
    for name in KEYS:
        assert os.path.getsize(k.path(f"/etc/ssh/{name}")) > 0, name


def leftovers(k: FakeKernel) -> list[str]:
    return [
        os.path.join(folder, name)
        for folder, _, names in os.walk(k.path("/state"))
        for name in names
        if name.endswith(".initpy-tmp")
    ]


def test_state_initpy_a_regular_file_is_a_warning_not_a_bug(k: FakeKernel) -> None:
    os.makedirs(k.path("/state"), exist_ok=True)
    with open(k.path("/state/initpy"), "w") as f:
        f.write("someone's file\n")
    assert_handed_off_with_host_keys(k)
    # Moved aside whole (state_folders.py); the keys are saved in a fresh folder.
    assert any("/state/initpy was not a folder: moved to" in w for w in report_warnings(k))
    assert open(k.path("/state/initpy.untrusted-1")).read() == "someone's file\n"
    assert "generated and saved ed25519, ecdsa, rsa" in "\n".join(k.console_lines)


def test_a_read_only_state_is_a_warning_and_sshd_still_gets_keys(k: FakeKernel) -> None:
    k.failures["mkdir"] = {
        folder: errno.EROFS for folder in ("/state/initpy", "/state/initpy/reports")
    }
    assert_handed_off_with_host_keys(k)
    assert any("Read-only file system" in w for w in report_warnings(k))
    assert not os.path.exists(k.path("/state/initpy"))


def test_a_state_folder_that_is_a_symlink_is_not_written_through(
    k: FakeKernel, tmp_path: os.PathLike[str]
) -> None:
    elsewhere = os.path.join(str(tmp_path), "elsewhere")
    os.makedirs(elsewhere)
    os.makedirs(k.path("/state"), exist_ok=True)
    os.symlink(elsewhere, k.path("/state/initpy"))
    assert_handed_off_with_host_keys(k)
    assert os.listdir(elsewhere) == []
    assert any("/state/initpy was a symlink to" in w for w in report_warnings(k))
    assert os.readlink(k.path("/state/initpy.untrusted-1")) == elsewhere


def test_a_full_state_keeps_the_old_seed_and_no_temporary_file(k: FakeKernel) -> None:
    assert isinstance(boot(k), HandedOff)
    first_seed = open(k.path(SEED), "rb").read()
    second = next_boot(k)
    second.failures["write"] = {SEED: errno.ENOSPC, f"{persist.HOST_KEY_FOLDER}/x": errno.ENOSPC}
    assert_handed_off_with_host_keys(second)
    assert open(second.path(SEED), "rb").read() == first_seed
    assert leftovers(second) == []
    assert any("No space left on device" in w for w in report_warnings(second))


def test_a_full_state_while_saving_new_keys_still_installs_them(k: FakeKernel) -> None:
    saved = f"{persist.HOST_KEY_FOLDER}/ssh_host_rsa_key"
    k.failures["write"] = {saved: errno.ENOSPC}
    assert_handed_off_with_host_keys(k)
    assert leftovers(k) == []
    assert not os.path.exists(k.path(saved))
    assert any(f"cannot save {saved}" in w for w in report_warnings(k))


def test_a_stale_temporary_file_is_replaced_not_a_failure(k: FakeKernel) -> None:
    k.failures["write"] = {SEED: errno.EEXIST}
    assert_handed_off_with_host_keys(k)
    assert len(open(k.path(SEED), "rb").read()) == persist.SEED_BYTES
    assert leftovers(k) == [] and report_warnings(k) == []


def test_a_64_mib_seed_is_fed_only_its_first_bytes(k: FakeKernel) -> None:
    os.makedirs(k.path("/state/initpy"), mode=0o700)
    with open(k.path(SEED), "wb") as f:
        f.truncate(64 << 20)  # sparse: no 64 MiB on the test machine's disk
    assert_handed_off_with_host_keys(k)
    assert k.syscalls("feed_urandom") == [("feed_urandom", persist.SEED_READ_LIMIT)]
    assert os.path.getsize(k.path(SEED)) == persist.SEED_BYTES


def test_a_symlinked_seed_is_not_followed(k: FakeKernel, tmp_path: os.PathLike[str]) -> None:
    secret = os.path.join(str(tmp_path), "secret")
    with open(secret, "wb") as f:
        f.write(b"not for the kernel's pool\n")
    os.makedirs(k.path("/state/initpy"), mode=0o700)
    os.symlink(secret, k.path(SEED))
    assert_handed_off_with_host_keys(k)
    assert k.syscalls("feed_urandom") == []
    assert any(f"{SEED} was a symlink" in w for w in report_warnings(k))
    assert open(secret, "rb").read() == b"not for the kernel's pool\n"
    assert os.readlink(k.path(f"{SEED}.untrusted-1")) == secret  # moved aside, never followed
    assert not os.path.islink(k.path(SEED))  # a fresh seed, the target untouched


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail a test that blocks (a FIFO opened for reading) instead of hanging the run."""

    def blocked(signo: int, frame: FrameType | None) -> None:
        raise TimeoutError("blocked for 10 s")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_fifo_as_seed_does_not_block_pid1(k: FakeKernel, alarm: None) -> None:
    os.makedirs(k.path("/state/initpy"), mode=0o700)
    os.mkfifo(k.path(SEED))
    assert_handed_off_with_host_keys(k)
    assert any("not a regular file" in w for w in report_warnings(k))


def test_a_huge_saved_host_key_is_not_read_whole(k: FakeKernel) -> None:
    folder = k.path(persist.HOST_KEY_FOLDER)
    os.makedirs(folder, mode=0o700)
    for name in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub"):
        with open(os.path.join(folder, name), "wb") as f:
            f.truncate(64 << 20)
    assert_handed_off_with_host_keys(k)
    reads = [c for c in k.syscalls("read_file") if "rsa" in str(c[1])]
    assert reads and all(c[2] == persist.KEY_READ_LIMIT for c in reads)


# -- the real seam's write_atomic, in a temporary folder ----------------------------------


def test_write_atomic_removes_a_planted_symlink_and_never_writes_through_it(
    tmp_path: os.PathLike[str],
) -> None:
    top = str(tmp_path)
    victim = os.path.join(top, "victim")
    with open(victim, "w") as f:
        f.write("precious\n")
    target = os.path.join(top, "random-seed")
    os.symlink(victim, target + ".initpy-tmp")
    Kernel().write_atomic(target, b"fresh", 0o600)
    assert open(victim).read() == "precious\n"
    assert open(target, "rb").read() == b"fresh"
    assert sorted(os.listdir(top)) == ["random-seed", "victim"]


def test_write_atomic_on_a_full_disk_keeps_the_old_file_and_no_temporary(
    kernel: FakeKernel,
) -> None:
    os.makedirs(kernel.path("/state/initpy"))
    kernel.write_atomic("/state/initpy/seed", b"old contents")
    kernel.failures["write"] = {"/state/initpy/seed": errno.ENOSPC}
    with pytest.raises(OSError) as failed:
        kernel.write_atomic("/state/initpy/seed", b"new contents that do not fit")
    assert failed.value.errno == errno.ENOSPC
    assert os.listdir(kernel.path("/state/initpy")) == ["seed"]
    assert open(kernel.path("/state/initpy/seed"), "rb").read() == b"old contents"


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.EIO, errno.EDQUOT])
def test_write_atomic_failures_leave_nothing_behind(kernel: FakeKernel, err: int) -> None:
    kernel.failures["write"] = {"/state/x": err}
    os.makedirs(kernel.path("/state"), exist_ok=True)
    with pytest.raises(OSError) as failed:
        kernel.write_atomic("/state/x", b"data")
    assert failed.value.errno == err
    assert os.listdir(kernel.path("/state")) == []


def test_the_fake_injects_mkdir_failures(kernel: FakeKernel) -> None:
    kernel.failures["mkdir"] = {"/state/initpy": errno.EROFS}
    with pytest.raises(OSError) as failed:
        kernel.mkdir("/state/initpy")
    assert failed.value.errno == errno.EROFS


# -- the host keys off the critical path (issue 13) ---------------------------------------


def _calls_index(k: FakeKernel, name: str) -> list[int]:
    return [i for i, c in enumerate(k.calls) if c[0] == name]


def test_new_host_keys_are_made_in_the_background_and_in_etc_ssh_before_the_hand_off(
    k: FakeKernel,
) -> None:
    """restore_state only starts the generators; host_keys joins them before the exec."""
    assert_handed_off_with_host_keys(k)
    lines = "\n".join(k.console_lines)
    assert "generating ed25519, ecdsa, rsa in the background" in lines
    assert "host keys: generated and saved ed25519, ecdsa, rsa" in lines
    assert [c[1] for c in k.syscalls("spawn_daemon")] == [
        "initpy-keygen-quick",
        "initpy-keygen-slow",
    ]
    keygens = [
        i for i, c in enumerate(k.calls) if c[0] == "run" and str(c[1]).startswith("('ssh-keygen'")
    ]
    joins, execs = _calls_index(k, "join_daemon"), _calls_index(k, "execve")
    # No key is made in restore_state itself; every one is in place before the exec.
    assert len(joins) == 2 and joins[0] < keygens[0] and keygens[-1] < execs[0]
    assert k.joinable == {}
    for kind in persist.HOST_KEY_TYPES:
        name = f"ssh_host_{kind}_key"
        saved = open(k.path(f"{persist.HOST_KEY_FOLDER}/{name}"), "rb").read()
        assert open(k.path(f"/etc/ssh/{name}"), "rb").read() == saved
    # The drop-ins are for a hand-off to systemd only.
    assert not os.path.exists(k.path(persist.UNIT_DIR))


def test_with_systemd_next_rsa_goes_on_past_the_hand_off_and_sshd_waits_for_it(
    k: FakeKernel,
) -> None:
    make_executable(k, "/lib/systemd/systemd")
    assert isinstance(boot(k), HandedOff), "\n".join(k.console_lines)
    lines = "\n".join(k.console_lines)
    assert "generated and saved ed25519, ecdsa" in lines
    assert "still generating rsa (after the hand-off; sshd waits for it)" in lines
    for kind in ("ed25519", "ecdsa"):
        assert os.path.getsize(k.path(f"/etc/ssh/ssh_host_{kind}_key")) > 0
    assert not os.path.exists(k.path("/etc/ssh/ssh_host_rsa_key"))
    done = f"{persist.KEYGEN_FOLDER}/slow.done"
    for unit in persist.SSHD_UNITS:
        dropin = open(k.path(f"{persist.UNIT_DIR}/{unit}.d/{persist.DROPIN_NAME}")).read()
        assert f"[ ! -e {done} ]" in dropin and dropin.startswith("#")
    # After the exec, the RSA generator (a child systemd inherits) finishes its work.
    assert not os.path.exists(k.path(done))
    [pid] = k.joinable
    assert k.join_daemon(pid) == 0
    assert os.path.exists(k.path(done))
    private = open(k.path("/etc/ssh/ssh_host_rsa_key"), "rb").read()
    assert private == open(k.path(f"{persist.HOST_KEY_FOLDER}/ssh_host_rsa_key"), "rb").read()


def test_restored_keys_start_no_generator(k: FakeKernel) -> None:
    assert isinstance(boot(k), HandedOff)
    second = next_boot(k)
    assert_handed_off_with_host_keys(second)
    assert second.syscalls("spawn_daemon") == []
    assert "no host key to generate" in "\n".join(second.console_lines)


def test_a_joinable_daemon_is_joined_not_reaped(tmp_path: os.PathLike[str]) -> None:
    """The reaper leaves a joinable daemon's status to join_daemon (real fork)."""
    k = Kernel(watch_orphans=False)
    out = os.path.join(str(tmp_path), "out")

    def work() -> None:
        with open(out, "w") as f:
            f.write("done")

    def broken() -> None:
        raise RuntimeError("a bug in the generator")

    pid = k.spawn_daemon("initpy-test", work, joinable=True)
    failing = k.spawn_daemon("initpy-test", broken, joinable=True)
    for _ in range(3):
        assert pid not in k.reap_orphans() and failing not in k.reap_orphans()
    assert k.join_daemon(pid) == 0
    assert k.join_daemon(failing) == 1
    assert open(out).read() == "done"


# -- /state: seed and host keys ------------------------------------------------------------------


def _state_files(k: FakeKernel) -> dict[str, bytes]:
    found = {}
    top = k.path("/state")
    for folder, _, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, top)] = f.read()
    return found


def test_first_boot_generates_keys_and_a_seed_second_boot_restores(k: FakeKernel) -> None:
    boot(k)
    first = _state_files(k)
    keys = {n for n in first if n.startswith("initpy/ssh/")}
    assert keys == {
        f"initpy/ssh/ssh_host_{t}_key{e}" for t in ("ed25519", "ecdsa", "rsa") for e in ("", ".pub")
    }
    for name in keys:
        assert os.stat(k.path(f"/state/{name}")).st_mode & 0o777 == 0o600
    assert os.stat(k.path("/etc/ssh/ssh_host_ed25519_key")).st_mode & 0o777 == 0o600
    assert os.stat(k.path("/etc/ssh/ssh_host_ed25519_key.pub")).st_mode & 0o777 == 0o644
    assert len(first["initpy/random-seed"]) == 512
    assert not os.path.exists(k.path("/dev/urandom"))  # nothing saved yet to feed
    assert len([argv for argv in commands_run(k) if argv[0] == "ssh-keygen"]) == 3

    second = next_boot(k)
    boot(second)
    again = _state_files(second)
    assert [argv for argv in commands_run(second) if argv[0] == "ssh-keygen"] == []
    assert {n: again[n] for n in keys} == {n: first[n] for n in keys}
    with open(second.path("/dev/urandom"), "rb") as f:
        assert f.read() == first["initpy/random-seed"]  # the old seed fed to the kernel
    assert again["initpy/random-seed"] != first["initpy/random-seed"]
    with open(second.path("/etc/ssh/ssh_host_rsa_key"), "rb") as f:
        assert f.read() == first["initpy/ssh/ssh_host_rsa_key"]
    assert "host keys: restored ed25519, ecdsa, rsa" in " ".join(second.console_lines)


def test_every_write_to_state_is_atomic_and_only_in_its_own_folder(k: FakeKernel) -> None:
    os.makedirs(k.path("/state/precious"), exist_ok=True)
    with open(k.path("/state/precious/data"), "w") as f:
        f.write("the operator's\n")
    os.makedirs(k.path("/build/machines/vm1"), exist_ok=True)
    with open(k.path("/build/machines/vm1/disk.img"), "w") as f:
        f.write("a machine\n")
    before = _state_files(k)
    boot(k)
    after = _state_files(k)
    assert after["precious/data"] == before["precious/data"]
    assert all(n.startswith("initpy/") for n in set(after) - set(before))
    atomic = {c[1] for c in k.syscalls("write_atomic")}
    for name in set(after) - set(before):
        assert f"/state/{name}" in atomic
    with open(k.path("/build/machines/vm1/disk.img")) as f:
        assert f.read() == "a machine\n"
    assert not any(str(c[1]).startswith("/build/machines") for c in k.syscalls("chown"))
    # No mkfs, wipefs or rm was ever run.
    assert not [argv for argv in commands_run(k) if argv[0] != "ssh-keygen"]


def test_a_half_saved_key_pair_is_completed_not_replaced(k: FakeKernel) -> None:
    os.makedirs(k.path("/state/initpy/ssh"))
    private = "-----BEGIN OPENSSH PRIVATE KEY-----\nold\n-----END OPENSSH PRIVATE KEY-----\n"
    for suffix, text in (("", private), (".pub", "ssh-ed25519 OLD\n")):
        with open(k.path(f"/state/initpy/ssh/ssh_host_ed25519_key{suffix}"), "w") as f:
            f.write(text)
    boot(k)
    generated = [a[a.index("-t") + 1] for a in commands_run(k) if a[0] == "ssh-keygen"]
    assert generated == ["ecdsa", "rsa"]
    with open(k.path("/etc/ssh/ssh_host_ed25519_key.pub")) as f:
        assert f.read() == "ssh-ed25519 OLD\n"


def test_a_failing_ssh_keygen_is_a_warning_not_a_rescue(k: FakeKernel) -> None:
    k.commands["ssh-keygen"] = Completed(("ssh-keygen",), 127, "", "not found")
    assert isinstance(boot(k), HandedOff)
    assert any(
        "warning: host_keys: cannot generate the rsa key" in line for line in k.console_lines
    )
    assert "host keys: FAILED ed25519, ecdsa, rsa" in "\n".join(k.console_lines)
    assert os.path.exists(k.path("/state/initpy/random-seed"))
