"""Choosing, ordering and staging kernel modules (a crafted module tree)."""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess

import pytest

from initpy.builder import kmod


def _tree(top: str) -> str:
    """A lib/modules/9.9-test folder: a needs b (modules.dep), a softdeps c."""
    mods = os.path.join(top, "lib", "modules", "9.9-test")
    os.makedirs(os.path.join(mods, "kernel", "drivers"))
    with open(os.path.join(mods, "kernel/drivers/a-mod.ko"), "wb") as f:
        f.write(b"module a")
    with open(os.path.join(mods, "kernel/drivers/b.ko.xz"), "wb") as f:
        f.write(lzma.compress(b"module b", check=lzma.CHECK_CRC32))
    zst = os.path.join(mods, "kernel/drivers/c.ko.zst")
    with open(zst, "wb") as f:
        f.write(
            subprocess.run(
                ["zstd", "-q", "-c"], input=b"module c", capture_output=True, check=True
            ).stdout
        )
    with open(os.path.join(mods, "kernel/drivers/unused.ko"), "wb") as f:
        f.write(b"unused")
    with open(os.path.join(mods, "modules.dep"), "w") as f:
        f.write(
            "kernel/drivers/a-mod.ko: kernel/drivers/b.ko.xz\n"
            "kernel/drivers/b.ko.xz:\nkernel/drivers/c.ko.zst:\n"
            "kernel/drivers/unused.ko:\n"
        )
    with open(os.path.join(mods, "modules.softdep"), "w") as f:
        f.write("# Soft dependencies\nsoftdep a_mod pre: c post: unused\n")
    with open(os.path.join(mods, "modules.builtin"), "w") as f:
        f.write("kernel/fs/ext4/ext4.ko\n")
    with open(os.path.join(mods, "modules.alias"), "w") as f:
        f.write("alias crc-fast c\nalias pci:v*d* unused\n")
    with open(os.path.join(mods, "modules.order"), "w") as f:
        f.write("kernel/drivers/b.ko\n")
    return mods


def test_dependencies_and_softdeps_come_first(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(_tree(str(tmp_path)))
    selection = kmod.select(tree, {"a-mod": ["network"]})
    assert [m.name for m in selection.modules] == ["c", "b", "a_mod"]
    a = selection.modules[-1]
    assert set(a.deps) == {"b", "c"}
    assert selection.builtin == ()


def test_builtin_and_alias_names(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(_tree(str(tmp_path)))
    selection = kmod.select(tree, {"ext4": ["storage"], "crc_fast": ["storage"]})
    assert selection.builtin == ("ext4",)
    assert [m.name for m in selection.modules] == ["c"]


def test_unknown_module_names_the_hook(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(_tree(str(tmp_path)))
    with pytest.raises(kmod.ModuleError, match=r"'e1000' \(wanted by hook network\)"):
        kmod.select(tree, {"e1000": ["network"]})


def test_missing_modules_dep_says_to_run_depmod(tmp_path: str) -> None:
    os.makedirs(os.path.join(tmp_path, "6.1"))
    with pytest.raises(kmod.ModuleError, match="depmod -b"):
        kmod.ModuleTree.load(os.path.join(tmp_path, "6.1"))


@pytest.mark.skipif(shutil.which("depmod") is None, reason="kmod's depmod is not installed")
def test_stage_decompresses_indexes_and_lists(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(_tree(os.path.join(tmp_path, "src")))
    selection = kmod.select(tree, {"a_mod": ["network"]})
    root = os.path.join(tmp_path, "stage")
    staged = kmod.stage(tree, selection, root)
    assert staged == os.path.join(root, "usr/lib/modules/9.9-test")
    with open(os.path.join(staged, "kernel/drivers/b.ko"), "rb") as f:
        assert f.read() == b"module b"
    with open(os.path.join(staged, "kernel/drivers/c.ko"), "rb") as f:
        assert f.read() == b"module c"
    assert not os.path.exists(os.path.join(staged, "kernel/drivers/unused.ko"))
    assert os.path.exists(os.path.join(staged, "modules.dep"))  # depmod ran on the subset
    assert os.path.exists(os.path.join(staged, "modules.builtin"))
    assert [(m.name, m.path, m.needs) for m in selection.packed()] == [
        ("c", "kernel/drivers/c.ko", ()),
        ("b", "kernel/drivers/b.ko", ()),
        ("a_mod", "kernel/drivers/a-mod.ko", ("c", "b")),
    ]
