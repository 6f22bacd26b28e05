"""A real ext4 state disk whose init folders the build user owns (issue 19, acceptance 5).

The image is made by mkfs.ext4 -d from a folder laid out as an attacker
with the build user's uid (1100) would leave it: /state/initpy and its ssh
folder 0777 and owned by 1100, a planted count and host key, a planted
symlink; or /state/initpy itself a symlink to /etc. A child process, in a
mount namespace of its own, loop-mounts it at /state of a tmpfs root whose
/etc is a folder of the test, chroots there, and runs the real code the
driver runs once /state is mounted (`state_folders.secure`, then the loop
guard's `count_this_boot`, then the report's copy on /state) through the
real Kernel. It prints what it finds under /state afterwards: every
entry's type, owner, mode, link target or first bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.getuid() != 0, reason="needs root (mount namespace, loop, chroot)"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("unshare", "mkfs.ext4", "mount")),
        reason="needs unshare, mkfs.ext4 and mount",
    ),
]

REPO = Path(__file__).resolve().parents[2]
BUILD = 1100
PLANTED_KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nplanted\n-----END OPENSSH PRIVATE KEY-----\n"

CHILD = r"""
import json, os, stat, subprocess, sys, tempfile
from initpy.runtime import failed_boots, state_folders
from initpy.runtime.kernel import Kernel
from initpy.runtime.report import Report

image, etc = sys.argv[1:3]
root = tempfile.mkdtemp()
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", root], check=True)
for name in ("state", "etc", "run"):
    os.mkdir(f"{root}/{name}")
subprocess.run(["mount", "--bind", etc, f"{root}/etc"], check=True)
subprocess.run(["mount", "-o", "loop", image, f"{root}/state"], check=True)
os.chroot(root)
os.chdir("/")
kernel = Kernel(watch_orphans=False)
report = Report(kernel)
changed = state_folders.secure(kernel, report.warn)
count = failed_boots.count_this_boot(kernel, report)
report.write(state_mounted=True)
tree = {}
for folder, names, files in os.walk("/state"):
    for name in names + files:
        path = os.path.join(folder, name)
        found = os.lstat(path)
        entry = {"uid": found.st_uid, "mode": stat.S_IMODE(found.st_mode)}
        if stat.S_ISLNK(found.st_mode):
            entry["link"] = os.readlink(path)
        elif stat.S_ISREG(found.st_mode):
            with open(path, "rb") as f:
                entry["text"] = f.read(200).decode("ascii", "replace")
        else:
            entry["folder"] = True
        tree[path] = entry
print("RESULT " + json.dumps(
    {"changed": changed, "count": count, "warnings": report.warnings, "tree": tree}
))
"""


def make_image(tmp_path: Path, source: Path) -> Path:
    image = tmp_path / "state.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "buildos.state", "-d", str(source), str(image)],
        check=True,
    )
    return image


def run_state_code(tmp_path: Path, image: Path) -> tuple[dict[str, object], Path]:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "shadow").write_text("root:*:1::::::\n")
    child = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", CHILD]
        + [str(image), str(etc)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.returncode == 0, child.stderr
    line = next(ln for ln in child.stdout.splitlines() if ln.startswith("RESULT "))
    result: dict[str, object] = json.loads(line.removeprefix("RESULT "))
    print(child.stdout)
    return result, etc


def tree_of(result: dict[str, object]) -> dict[str, dict[str, object]]:
    tree = result["tree"]
    assert isinstance(tree, dict)
    return tree


def test_a_folder_owned_by_the_build_user_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    source = tmp_path / "source"
    keys = source / "initpy" / "ssh"
    keys.mkdir(parents=True)
    (source / "initpy" / "failed_boots").write_text("7\n")
    (keys / "ssh_host_ed25519_key").write_bytes(PLANTED_KEY)
    (source / "initpy" / "reports").symlink_to("/etc")
    (source / "operator.txt").write_text("the operator's own file\n")
    for path in (source / "initpy", keys, *keys.iterdir(), source / "initpy" / "failed_boots"):
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
        os.chown(path, BUILD, BUILD)
    os.lchown(source / "initpy" / "reports", BUILD, BUILD)
    result, etc = run_state_code(tmp_path, make_image(tmp_path, source))
    tree = tree_of(result)
    aside = "/state/initpy.untrusted-1"
    # Everything planted is kept as it came, beside the init's fresh folder.
    assert tree[aside] == {"uid": BUILD, "mode": 0o777, "folder": True}
    assert tree[f"{aside}/failed_boots"]["text"] == "7\n"
    assert tree[f"{aside}/ssh/ssh_host_ed25519_key"]["text"] == PLANTED_KEY.decode()
    assert tree[f"{aside}/reports"]["link"] == "/etc"
    assert tree["/state/operator.txt"]["text"] == "the operator's own file\n"
    # The fresh folder is root's alone; the planted count was not read (1, not 8).
    assert tree["/state/initpy"] == {"uid": 0, "mode": 0o700, "folder": True}
    assert tree["/state/initpy/reports"] == {"uid": 0, "mode": 0o700, "folder": True}
    assert tree["/state/initpy/failed_boots"] == {"uid": 0, "mode": 0o600, "text": "1\n"}
    assert "/state/initpy/reports/report.json.0" in tree
    assert result["count"] == 1
    assert result["changed"] == [f"/state/initpy: owned by uid 1100, not root; moved to {aside}"]
    warnings = result["warnings"]
    assert isinstance(warnings, list)
    assert any(
        f"/state/initpy was owned by uid 1100, not root: moved to {aside}" in w for w in warnings
    )
    assert sorted(os.listdir(etc)) == ["shadow"]  # nothing written through the planted link


def test_a_state_folder_that_is_a_symlink_to_etc_is_moved_aside(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "initpy").symlink_to("/etc")
    result, etc = run_state_code(tmp_path, make_image(tmp_path, source))
    tree = tree_of(result)
    assert tree["/state/initpy.untrusted-1"]["link"] == "/etc"
    assert tree["/state/initpy"] == {"uid": 0, "mode": 0o700, "folder": True}
    assert tree["/state/initpy/failed_boots"]["text"] == "1\n"
    assert sorted(os.listdir(etc)) == ["shadow"]
    assert (etc / "shadow").read_text() == "root:*:1::::::\n"
    warnings = result["warnings"]
    assert isinstance(warnings, list)
    assert any("/state/initpy was a symlink to '/etc': moved to" in w for w in warnings)
