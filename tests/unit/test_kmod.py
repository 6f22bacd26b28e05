"""Choosing, ordering and staging kernel modules (a crafted module tree)."""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess

import pytest

from initpy.builder import drivers, kmod


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


# -- drivers: generic, host-only, --driver; the index and the firmware ---------------


def _elf_with_modinfo(modinfo: bytes) -> bytes:
    """A minimal ELF64 whose only section besides the names is .modinfo."""
    import struct

    names = b"\0.modinfo\0.shstrtab\0"
    header_size, entry = 64, 64
    modinfo_at = header_size
    names_at = modinfo_at + len(modinfo)
    shoff = names_at + len(names)
    head = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    head += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, entry, 3, 2)
    sections = bytes(entry)
    for name, offset, size in ((1, modinfo_at, len(modinfo)), (10, names_at, len(names))):
        sections += struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, offset, size, 0, 0, 1, 0)
    return head + modinfo + names + sections


def _driver_tree(top: str) -> str:
    mods = os.path.join(top, "9.9-hw")
    files = {
        "kernel/drivers/net/ethernet/intel/e1000/e1000.ko": _elf_with_modinfo(
            b"license=GPL\0firmware=e1000/fw.bin\0firmware=e1000/absent.bin\0"
        ),
        "kernel/drivers/ata/ahci.ko": b"ahci",
        "kernel/drivers/ata/libata.ko": b"libata",
        "kernel/drivers/scsi/scsi_mod.ko": b"scsi",
        "kernel/drivers/scsi/sd_mod.ko": b"sd",
        "kernel/drivers/scsi/lpfc/lpfc.ko": b"lpfc",  # SAN: left out of generic
        "kernel/drivers/gpu/drm/vga.ko": b"vga",  # not a NIC or storage
        "kernel/lib/crc64-rocksoft.ko": b"crc64",
        "kernel/crypto/crc64_rocksoft_generic.ko": b"crc64g",
        "kernel/lib/crc-t10dif.ko": b"t10",
        "kernel/arch/x86/crypto/crct10dif-pclmul.ko": b"pclmul",
        "kernel/crypto/crct10dif_generic.ko": b"t10g",
    }
    for path, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(mods, path)), exist_ok=True)
        with open(os.path.join(mods, path), "wb") as f:
            f.write(data)
    with open(os.path.join(mods, "modules.dep"), "w") as f:
        f.write(
            "kernel/drivers/net/ethernet/intel/e1000/e1000.ko:\n"
            "kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libata.ko "
            "kernel/drivers/scsi/scsi_mod.ko\n"
            "kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko\n"
            "kernel/drivers/scsi/scsi_mod.ko:\n"
            "kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko "
            "kernel/lib/crc-t10dif.ko kernel/lib/crc64-rocksoft.ko\n"
            "kernel/drivers/scsi/lpfc/lpfc.ko: kernel/drivers/scsi/scsi_mod.ko\n"
            "kernel/drivers/gpu/drm/vga.ko:\n"
            "kernel/lib/crc64-rocksoft.ko:\nkernel/crypto/crc64_rocksoft_generic.ko:\n"
            "kernel/lib/crc-t10dif.ko:\nkernel/arch/x86/crypto/crct10dif-pclmul.ko:\n"
            "kernel/crypto/crct10dif_generic.ko:\n"
        )
    with open(os.path.join(mods, "modules.softdep"), "w") as f:
        f.write("softdep crc_t10dif pre: crct10dif\n")
    with open(os.path.join(mods, "modules.alias"), "w") as f:
        f.write(
            "alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n"
            "alias pci:v*d*sv*sd*bc01sc06i01* ahci\n"
            "alias scsi:t-0x00* sd_mod\n"
            "alias pci:v000010DFd*sv*sd*bc*sc*i* lpfc\n"
            "alias crct10dif crct10dif_pclmul\n"
            "alias crct10dif crct10dif_generic\n"
            "alias crypto-crc64-rocksoft crc64_rocksoft_generic\n"
        )
    with open(os.path.join(mods, "modules.builtin"), "w") as f:
        f.write("kernel/drivers/nvme/host/nvme.ko\n")
    with open(os.path.join(mods, "modules.builtin.modinfo"), "wb") as f:
        f.write(b"nvme.alias=pci:v*d*sv*sd*bc01sc08i02*\0nvme.license=GPL\0")
    return mods


def test_the_generic_set_is_nics_and_storage_without_san(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(_driver_tree(str(tmp_path)))
    generic = drivers.generic_drivers(tree)
    assert set(generic) == {"e1000", "ahci", "libata", "scsi_mod", "sd_mod"}
    assert generic["e1000"] == "Ethernet NIC"


def test_host_only_takes_what_the_build_machines_devices_ask_for(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(_driver_tree(str(tmp_path)))
    devices = [("pci/0000:00:02.0", "pci:v00008086d0000100Esv1sd2bc02sc00i00")]
    assert drivers.host_drivers(tree, devices, loaded=["sd_mod"]) == {
        "e1000": "Ethernet NIC for pci/0000:00:02.0",
        "sd_mod": "SCSI disk, loaded on the build machine",
    }


def test_host_only_reads_the_build_machines_sysfs(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(_driver_tree(str(tmp_path)))
    sys_root = os.path.join(tmp_path, "sys")
    device = os.path.join(sys_root, "bus/pci/devices/0000:00:04.0")
    os.makedirs(device)
    with open(os.path.join(device, "modalias"), "w") as f:
        f.write("pci:v00008086d00002922sv1sd2bc01sc06i01\n")
    chosen = drivers.choose_drivers(
        tree, drivers.Drivers.HOST, sys_root=sys_root, proc_modules=os.path.join(tmp_path, "none")
    )
    assert chosen == {"ahci": "SATA/PATA controller for pci/0000:00:04.0"}


def test_a_scsi_host_driver_brings_the_disk_driver_and_crypto_softdeps(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(_driver_tree(str(tmp_path)))
    chosen = drivers.choose_drivers(tree, drivers.Drivers.NONE, extra=["ahci"])
    selection = kmod.select(tree, {}, chosen)
    names = selection.names()
    assert "sd_mod" in names  # ahci alone finds disks nobody could read
    sd = next(m for m in selection.modules if m.name == "sd_mod")
    assert not sd.optional and "crc_t10dif" in sd.deps
    t10 = next(m for m in selection.modules if m.name == "crc_t10dif")
    # Every module of the softdep's alias, optional: one may refuse the CPU.
    assert set(t10.optional) == {"crct10dif_pclmul", "crct10dif_generic"}
    rocksoft = next(m for m in selection.modules if m.name == "crc64_rocksoft")
    assert rocksoft.optional == ("crc64_rocksoft_generic",)
    assert all(m.hooks == () for m in selection.modules)


def test_an_unknown_driver_says_how_to_find_one(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(_driver_tree(str(tmp_path)))
    with pytest.raises(kmod.ModuleError, match="--driver e1001") as failure:
        drivers.choose_drivers(tree, drivers.Drivers.NONE, extra=["e1001"])
    assert "modprobe -S 9.9-hw -R MODALIAS" in (failure.value.hint or "")


def test_the_index_holds_the_packed_and_built_in_drivers_only(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(_driver_tree(str(tmp_path)))
    selection = kmod.select(tree, {}, {"e1000": "--driver"})
    index = kmod.alias_index(tree, selection)
    assert set(index.modules_for("pci:v00008086d0000100Esv1sd2bc02sc00i00")) == {"e1000"}
    assert set(index.modules_for("pci:v1d2sv3sd4bc01sc08i02")) == {"nvme"}  # built in
    assert index.modules_for("pci:v00008086d00002922sv1sd2bc01sc06i01") == {}  # not packed
    assert index.builtin == {"nvme"}


def test_firmware_the_drivers_declare_is_found_or_listed(tmp_path: str) -> None:
    tree = kmod.ModuleTree.load(_driver_tree(str(tmp_path)))
    selection = kmod.select(tree, {}, {"e1000": "--driver"})
    firmware_dir = os.path.join(tmp_path, "firmware")
    os.makedirs(os.path.join(firmware_dir, "e1000"))
    with open(os.path.join(firmware_dir, "e1000/fw.bin.zst"), "wb") as f:
        f.write(b"fw")
    found = kmod.firmware(tree, selection, firmware_dir)
    assert found.present == {"e1000/fw.bin.zst": os.path.join(firmware_dir, "e1000/fw.bin.zst")}
    assert found.missing == {"e1000/absent.bin": "e1000"}
