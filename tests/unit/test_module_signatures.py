"""mkinitrd keeps Debian's module signatures: Secure Boot's lockdown refuses a module without one.

Over the real (cached) Debian kernel: every module of a built initrd is
the kernel's own file, byte for byte, and ends with its signature; a
compressed module is unpacked with the signature inside it; a module
whose signature was cut off is named by the builder.
"""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess

import pytest

from initpy.builder import cpio, kmod
from initpy.runtime import layout
from tests.unit.conftest import run_mkinitrd

pytestmark = pytest.mark.skipif(
    not os.path.exists("/bin/busybox")
    or shutil.which("depmod") is None
    or shutil.which("patchelf") is None
    or shutil.which("zstd") is None,
    reason="busybox-static, kmod, zstd and patchelf are needed: run scripts/bootstrap",
)


def test_every_module_of_a_built_initrd_is_the_kernels_signed_file(
    tmp_path: str, real_kernel: str
) -> None:
    out = os.path.join(tmp_path, "out")
    done = run_mkinitrd(real_kernel, out, "--compress", "none")
    assert done.returncode == 0, done.stderr
    with open(os.path.join(out, "buildos-initrd"), "rb") as f:
        members = {m.path: m for m in cpio.read_newc(f.read())}
    manifest = layout.Manifest.from_json(members[layout.MANIFEST.lstrip("/")].data)
    source = os.path.realpath(os.path.join(real_kernel, "modules"))
    inside = f"usr/lib/modules/{manifest.kernel_version}"
    packed = sorted(p for p in members if p.endswith(".ko"))
    assert len(packed) == len(manifest.modules) > 20, packed
    for module in manifest.modules:
        data = members[f"{inside}/{module.path}"].data
        assert layout.module_is_signed(data), f"{module.name}: its signature is gone"
        assert data == kmod.module_bytes(os.path.join(source, module.path)), module.name
    assert f"{len(packed)} signed" in done.stderr
    assert "carry no signature" not in done.stderr


def test_compressed_modules_keep_their_signature_and_an_unsigned_one_is_named(
    tmp_path: str, real_kernel: str
) -> None:
    source = os.path.realpath(os.path.join(real_kernel, "modules"))
    tree = kmod.ModuleTree.load(source)
    names = ("virtio_rng", "dummy", "veth")
    originals = {n: kmod.module_bytes(os.path.join(source, tree.paths[n])) for n in names}
    top = os.path.join(tmp_path, "lib/modules", tree.version)
    os.makedirs(os.path.join(top, "kernel"))
    with lzma.open(os.path.join(top, "kernel/virtio_rng.ko.xz"), "wb") as f:
        f.write(originals["virtio_rng"])
    subprocess.run(
        ["zstd", "-q", "-o", os.path.join(top, "kernel/dummy.ko.zst")],
        input=originals["dummy"],
        check=True,
    )
    # The ELF without its signature: what a strip, or a rebuild here, leaves.
    cut = originals["veth"][: -len(layout.MODULE_SIGNATURE_MAGIC)]
    with open(os.path.join(top, "kernel/veth.ko"), "wb") as f:
        f.write(cut)
    with open(os.path.join(top, "modules.dep"), "w") as f:
        f.write("kernel/virtio_rng.ko.xz:\nkernel/dummy.ko.zst:\nkernel/veth.ko:\n")
    small = kmod.ModuleTree.load(top)
    selection = kmod.select(small, {n: ["test"] for n in names})
    staged = kmod.stage(small, selection, os.path.join(tmp_path, "stage"))
    for name, path in (("virtio_rng", "kernel/virtio_rng.ko"), ("dummy", "kernel/dummy.ko")):
        with open(os.path.join(staged, path), "rb") as f:
            assert f.read() == originals[name], name
    assert kmod.unsigned(staged, selection) == ["veth"]
