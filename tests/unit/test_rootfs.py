"""mkinitrd --rootfs: what the OS tree gets from initpy, and what it must hold.

initpy.builder.rootfs end to end through mkinitrd.build, with the stand-in
freezer of test_mkinitrd: the kernel's module tree, the hooks' OS
files and unit links, no baked identity; and the build-time refusals (a
tree with another kernel's modules, a tree without a hook's package).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Sequence

import pytest

from initpy.builder import freeze, mkinitrd
from initpy.builder.command import BuildError
from initpy.builder.os_modules import OsModules
from tests.unit.test_mkinitrd import VERSION, build, members, setup

__all__ = ["setup"]  # the fixture, used by name

OS_HOOK = """
from initpy.runtime.hook import Hook, State
from initpy.runtime.osimage import OsFile, OsPackage

def hello(ctx):
    return "hello"

HOOK = Hook(name="{name}", description="a hook with OS files",
            states=(State("{name}_state", hello, "says hello"),),
            os_files=(
                OsFile("/etc/systemd/system/{name}.service", "[Unit]\\n",
                       wanted_by="multi-user.target"),
                OsFile("/usr/lib/initpy/os/{name}", "#!/bin/sh\\n", 0o755),
                OsFile("/etc/{name}.d/{name}.conf", "conf\\n"),
            ),
            os_packages=(OsPackage("{name}-pkg", "/usr/bin/{name}"),))
"""


def os_hook(setup: dict[str, str], name: str) -> None:
    with open(os.path.join(setup["hooks"], f"{name}.py"), "w") as f:
        f.write(OS_HOOK.format(name=name))


def tree(setup: dict[str, str], *files: str) -> str:
    """A small Debian-like tree (merged /usr) holding `files`."""
    root = os.path.join(setup["top"], "rootfs")
    os.makedirs(os.path.join(root, "usr", "lib"), exist_ok=True)
    os.makedirs(os.path.join(root, "etc", "systemd", "system"), exist_ok=True)
    if not os.path.lexists(os.path.join(root, "lib")):
        os.symlink("usr/lib", os.path.join(root, "lib"))
    for path in files:
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "w") as f:
            f.write(f"baked {path}\n")
    return root


def test_the_os_gets_the_module_tree_the_hooks_files_and_no_identity(
    setup: dict[str, str],
) -> None:
    os_hook(setup, "relay")
    root = tree(
        setup,
        "usr/bin/relay",
        "etc/machine-id",
        "var/lib/dbus/machine-id",
        "etc/ssh/ssh_host_ed25519_key",
        "etc/ssh/sshd_config",
    )
    files = members(build(setup, "out", rootfs=root, os_modules=OsModules.ALL))
    modules = f"usr/lib/modules/{VERSION}"
    # With --os-modules all, the whole tree, not only what the hooks asked for
    # (b.ko is a's dependency, the index is the kernel's): udev and modprobe
    # work after the hand-off. The build host's share: tests/unit/test_os_modules.py.
    assert files[f"{modules}/modules.dep"].data == b"kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n"
    assert files[f"{modules}/modules.builtin"].data == b"kernel/fs/ext4/ext4.ko\n"
    assert f"{modules}/kernel/b.ko" in files
    unit = files["etc/systemd/system/relay.service"]
    assert unit.data == b"[Unit]\n"
    assert files["etc/systemd/system/multi-user.target.wants/relay.service"].data == (
        b"/etc/systemd/system/relay.service"
    )
    script = files["usr/lib/initpy/os/relay"]
    assert stat.S_IMODE(script.mode) == 0o755 and script.data == b"#!/bin/sh\n"
    # A folder the tree lacks comes with the file.
    assert stat.S_ISDIR(files["etc/relay.d"].mode)
    assert files["etc/relay.d/relay.conf"].data == b"conf\n"
    assert files["etc/machine-id"].data == b""
    assert files["var/lib/dbus/machine-id"].data == b"/etc/machine-id"
    assert "etc/ssh/ssh_host_ed25519_key" not in files
    assert files["etc/ssh/sshd_config"].data == b"baked etc/ssh/sshd_config\n"


def test_without_a_rootfs_no_os_file_and_no_full_module_tree(setup: dict[str, str]) -> None:
    os_hook(setup, "relay")
    files = members(build(setup, "out"))
    assert not [p for p in files if p.startswith(("etc/systemd", "usr/lib/initpy/os"))]
    assert "etc/machine-id" not in files
    # The initrd's own modules are what the hooks named (a, with b), as before.
    assert sorted(p for p in files if p.endswith(".ko")) == [
        f"usr/lib/modules/{VERSION}/kernel/a.ko",
        f"usr/lib/modules/{VERSION}/kernel/b.ko",
    ]


def test_a_tree_with_another_kernels_modules_is_refused(setup: dict[str, str]) -> None:
    root = tree(setup, "usr/lib/modules/6.1.0-13-amd64/modules.dep")
    with pytest.raises(BuildError) as caught:
        build(setup, "out", rootfs=root)
    assert "modules of kernel 6.1.0-13-amd64" in caught.value.message
    assert f"initrd is for {VERSION}" in caught.value.message
    assert f"rm -rf {root}/usr/lib/modules/6.1.0-13-amd64" in caught.value.hint


def test_a_tree_with_the_same_kernels_modules_is_packed(setup: dict[str, str]) -> None:
    root = tree(setup, f"usr/lib/modules/{VERSION}/modules.dep")
    files = members(build(setup, "out", rootfs=root, os_modules=OsModules.ALL))
    # mkinitrd's copy of the kernel's tree wins over the tree's own.
    assert files[f"usr/lib/modules/{VERSION}/modules.dep"].data.startswith(b"kernel/a.ko")


def test_a_tree_without_a_hooks_package_is_named_at_build_time(setup: dict[str, str]) -> None:
    os_hook(setup, "relay")
    os_hook(setup, "sink")
    root = tree(setup, "usr/bin/sink")
    with pytest.raises(BuildError) as caught:
        build(setup, "out", rootfs=root)
    assert caught.value.message == (
        f"--rootfs {root} lacks the package(s) relay-pkg (for hook relay)"
    )
    assert f"chroot {root} apt-get install relay-pkg" in caught.value.hint
    assert "mmdebstrap --include=relay-pkg" in caught.value.hint
    assert "--hooks" in caught.value.hint


def test_two_hooks_may_not_ship_the_same_os_file(setup: dict[str, str]) -> None:
    os_hook(setup, "relay")
    with open(os.path.join(setup["hooks"], "relay.py")) as f:
        text = f.read()
    with open(os.path.join(setup["hooks"], "copy.py"), "w") as f:
        f.write(text.replace('name="relay"', 'name="copy"').replace("relay_state", "copy_state"))
    root = tree(setup, "usr/bin/relay")
    with pytest.raises(
        BuildError, match=r"hooks copy and relay both put /etc/systemd/system/relay.service"
    ):
        build(setup, "out", rootfs=root)


def test_a_tree_that_cannot_work_fails_before_the_freeze(setup: dict[str, str]) -> None:
    os_hook(setup, "relay")

    def freezer(hook_files: Sequence[str]) -> freeze.Frozen:
        raise AssertionError("frozen before the tree was checked")

    options = mkinitrd.Options(
        kernel=setup["kernel"],
        modules=setup["modules"],
        outdir=os.path.join(setup["top"], "out"),
        base_hooks_dir=None,
        hook_dirs=(setup["hooks"],),
        rootfs=tree(setup),
        os_image=mkinitrd.ImageCompression.NONE,  # the test's hooks have no os_image
    )
    with pytest.raises(BuildError, match=r"lacks the package\(s\) relay-pkg"):
        mkinitrd.build(options, freezer=freezer)
    missing = os.path.join(setup["top"], "no-such-tree")
    with pytest.raises(BuildError, match=rf"--rootfs {missing}: not a folder"):
        mkinitrd.build(dataclasses.replace(options, rootfs=missing), freezer=freezer)
