"""The OS's share of the kernel's modules (mkinitrd --rootfs, --os-modules).

initpy.builder.os_modules on a crafted module tree: the classes a build
host never loads go, what a kept module needs comes back (modules.dep and
both kinds of softdep), depmod indexes the kept set; the table keeps every
class a build host's hardware may need; and end to end through mkinitrd.
"""

from __future__ import annotations

import os
import shutil

import pytest

from initpy.builder import kmod, os_modules
from initpy.builder.os_modules import OsModules
from tests.unit.test_mkinitrd import VERSION, build, members, setup
from tests.unit.test_rootfs import tree

__all__ = ["setup"]  # the fixture, used by name

needs_depmod = pytest.mark.skipif(shutil.which("depmod") is None, reason="no kmod depmod")

# name -> path in the crafted tree
MODULES = {
    "e1000e": "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
    "hwmon_x": "kernel/drivers/hwmon/hwmon_x.ko",
    "uvc": "kernel/drivers/usb/misc/uvc.ko",  # kept, needs videodev (media)
    "videodev": "kernel/drivers/media/v4l2-core/videodev.ko",
    "tuner": "kernel/drivers/media/tuners/tuner.ko",
    "iio_post": "kernel/drivers/iio/iio_post.ko",  # e1000e's post: softdep
    "snd_hda": "kernel/sound/pci/hda/snd_hda.ko",
    "snd_core": "kernel/sound/core/snd_core.ko",
    "amdgpu": "kernel/drivers/gpu/drm/amd/amdgpu/amdgpu.ko",
    "ast": "kernel/drivers/gpu/drm/ast/ast.ko",
}


def crafted(top: str) -> str:
    mods = os.path.join(top, "lib", "modules", VERSION)
    for name, path in MODULES.items():
        os.makedirs(os.path.dirname(os.path.join(mods, path)), exist_ok=True)
        with open(os.path.join(mods, path), "wb") as f:
            f.write(f"module {name}".encode())
    deps = {"uvc": ["videodev"], "snd_hda": ["snd_core"]}
    with open(os.path.join(mods, "modules.dep"), "w") as f:
        for name, path in MODULES.items():
            f.write(f"{path}: {' '.join(MODULES[d] for d in deps.get(name, []))}\n")
    with open(os.path.join(mods, "modules.softdep"), "w") as f:
        f.write("# Soft dependencies\nsoftdep e1000e post: iio_post\n")
    return mods


def test_the_dropped_classes_go_and_what_kept_modules_need_comes_back(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(crafted(str(tmp_path)))
    choice = os_modules.choose(tree, always=["snd_hda"])
    assert choice.kept == {
        "e1000e",
        "hwmon_x",
        "ast",
        "uvc",
        "videodev",  # modules.dep: uvc needs it
        "iio_post",  # a post: softdep, which modprobe loads too
        "snd_hda",  # the init packs it: the OS's index must name it
        "snd_core",
    }
    assert choice.dropped == {"media": ("tuner",), "3D GPU": ("amdgpu",)}
    assert choice.pulled == ("iio_post", "snd_core", "videodev")


@needs_depmod
def test_stage_indexes_exactly_the_kept_modules(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(crafted(os.path.join(tmp_path, "src")))
    choice = os_modules.choose(tree)
    staged = os_modules.stage(tree, choice, os.path.join(tmp_path, "stage"))
    index = kmod.ModuleTree.load(staged)
    kept = {"e1000e", "hwmon_x", "ast", "uvc", "videodev", "iio_post"}
    assert set(index.paths) == choice.kept == kept
    assert {index.paths[n] for n in index.paths} == {MODULES[n] for n in choice.kept}
    for name in choice.kept:
        assert os.path.isfile(os.path.join(staged, MODULES[name]))
    assert not os.path.exists(os.path.join(staged, MODULES["tuner"]))
    assert os.path.isfile(os.path.join(staged, "modules.dep.bin"))  # what modprobe reads


# What a real build host's hardware may need, as Debian's kernels name it.
BUILD_HOST_NEEDS = (
    "kernel/drivers/net/ethernet/intel/igb/igb.ko",
    "kernel/drivers/net/ethernet/mellanox/mlx5/core/mlx5_core.ko",
    "kernel/drivers/net/usb/r8152.ko",
    "kernel/drivers/net/phy/realtek.ko",
    "kernel/drivers/ata/ahci.ko",
    "kernel/drivers/scsi/sd_mod.ko",
    "kernel/drivers/scsi/megaraid/megaraid_sas.ko",
    "kernel/drivers/nvme/host/nvme.ko",
    "kernel/drivers/md/raid1.ko",
    "kernel/drivers/md/dm-crypt.ko",
    "kernel/fs/btrfs/btrfs.ko",
    "kernel/fs/xfs/xfs.ko",
    "kernel/fs/fat/vfat.ko",
    "kernel/fs/overlayfs/overlay.ko",
    "kernel/fs/squashfs/squashfs.ko",
    "kernel/fs/nfs/nfs.ko",
    "kernel/drivers/block/loop.ko",
    "kernel/drivers/usb/host/xhci-pci.ko",
    "kernel/drivers/usb/storage/usb-storage.ko",
    "kernel/drivers/hid/usbhid/usbhid.ko",
    "kernel/arch/x86/kvm/kvm-intel.ko",
    "kernel/drivers/vhost/vhost_net.ko",
    "kernel/drivers/net/tun.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/net/bridge/bridge.ko",
    "kernel/net/netfilter/nf_tables.ko",
    "kernel/net/netfilter/nft_masq.ko",
    "kernel/crypto/xxhash_generic.ko",
    "kernel/drivers/hwmon/coretemp.ko",
    "kernel/drivers/watchdog/iTCO_wdt.ko",
    "kernel/drivers/gpu/drm/ast/ast.ko",
    "kernel/drivers/gpu/drm/mgag200/mgag200.ko",
)


@pytest.mark.parametrize("path", BUILD_HOST_NEEDS)
def test_what_a_build_host_may_need_is_in_no_dropped_class(path: str) -> None:
    assert os_modules.dropped_class(path) is None


def test_the_build_host_share_is_the_default_and_all_keeps_every_module(
    setup: dict[str, str],
) -> None:
    mods = setup["modules"]
    os.makedirs(os.path.join(mods, "kernel/sound/core"))
    with open(os.path.join(mods, "kernel/sound/core/snd.ko"), "wb") as f:
        f.write(b"module snd")
    with open(os.path.join(mods, "modules.dep"), "a") as f:
        f.write("kernel/sound/core/snd.ko:\n")
    root = tree(setup, "usr/bin/true")
    sound = f"usr/lib/modules/{VERSION}/kernel/sound/core/snd.ko"
    result = build(setup, "out", rootfs=root)
    files = members(result)
    assert sound not in files
    assert f"usr/lib/modules/{VERSION}/kernel/b.ko" in files
    assert [n for n in result.notes if n.startswith("os modules: 2 of 3 kept")]
    assert "sound 1" in next(n for n in result.notes if n.startswith("os modules"))
    assert sound in members(build(setup, "out-all", rootfs=root, os_modules=OsModules.ALL))
