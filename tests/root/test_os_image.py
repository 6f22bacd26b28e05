"""The OS image on the real kernel, as root, in a mount namespace of its own.

The builder packs a small tree's /usr (initpy.builder.os_image), and the
real kernel seam attaches it to a loop device; then, as mount_os does
(hooks/os_image.py), the squashfs is mounted read-only and an overlay laid
over a /usr that stands for the initramfs's: the image's files win, the
initramfs's show where the image has none, and a write lands in the tmpfs
upper layer, not in either lower one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from initpy.builder import cpio, os_image

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.getuid() != 0, reason="needs root (loop devices, mounts)"),
    pytest.mark.skipif(
        shutil.which("mksquashfs") is None or shutil.which("unshare") is None,
        reason="needs squashfs-tools and util-linux's unshare",
    ),
]
REPO = Path(__file__).resolve().parents[2]

# Runs in the namespace: the seam's attach_loop and mount, mount_os's
# options, then what the overlay shows; the loop device is let go at the end.
IN_NAMESPACE = """
import os, subprocess, sys
from initpy.runtime.kernel import Kernel, MS_RDONLY
image, top = sys.argv[1:]
k = Kernel()
device = k.attach_loop(image)
try:
    k.mkdir(f"{top}/os")
    k.mount(device, f"{top}/os", "squashfs", MS_RDONLY)
    k.mkdir(f"{top}/writes")
    k.mount("tmpfs", f"{top}/writes", "tmpfs", 0, "mode=0755")
    k.mkdir(f"{top}/writes/upper")
    k.mkdir(f"{top}/writes/work")
    k.mount("overlay", f"{top}/usr", "overlay", 0,
            f"lowerdir={top}/os/usr:{top}/usr,upperdir={top}/writes/upper,"
            f"workdir={top}/writes/work")
    usr = f"{top}/usr"
    print("os", open(f"{usr}/bin/tool").read())
    print("both", open(f"{usr}/bin/both").read())
    print("initramfs", open(f"{usr}/lib/initpy/init").read())
    print("owner", os.stat(f"{usr}/share/owned").st_uid)
    open(f"{usr}/local/new", "w").write("written")
    print("upper", open(f"{top}/writes/upper/local/new").read())
    print("readonly", os.access(f"{top}/os/usr/bin/tool", os.W_OK))
    for target in (usr, f"{top}/writes", f"{top}/os"):
        k.umount(target)
finally:
    subprocess.run(["losetup", "-d", device], check=True)
"""


def test_the_builders_image_mounts_and_overlays_usr(tmp_path: Path) -> None:
    entries = [
        cpio.regular("usr/bin/tool", data=b"from the image", perm=0o755),
        cpio.regular("usr/bin/both", data=b"the image's", perm=0o755),
        cpio.Entry("usr/share/owned", 0o100644, data=b"x", uid=4321, gid=4321),
        cpio.directory("usr/local", 0o755),
    ]
    image = os_image.squash(
        entries, cpio.archive(entries, 0), os_image.ImageCompression.ZSTD, 3, 0, None
    )
    (tmp_path / "os.squashfs").write_bytes(image)
    initramfs = tmp_path / "usr"
    (initramfs / "bin").mkdir(parents=True)
    (initramfs / "bin" / "both").write_text("the initramfs's")
    (initramfs / "lib" / "initpy").mkdir(parents=True)
    (initramfs / "lib" / "initpy" / "init").write_text("initpy")
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", IN_NAMESPACE]
        + [str(tmp_path / "os.squashfs"), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert seen == {
        "os": "from the image",
        "both": "the image's",
        "initramfs": "initpy",
        "owner": "4321",
        "upper": "written",
        "readonly": "False",
    }
    assert not (initramfs / "local").exists()  # the write went to the upper layer only
