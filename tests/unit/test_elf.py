"""ELF reading and library resolution, on host binaries and crafted files."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from initpy.builder import elf

LS = shutil.which("ls") or "/bin/ls"
needs_patchelf = pytest.mark.skipif(
    shutil.which("patchelf") is None, reason="patchelf missing: run scripts/bootstrap"
)


def test_host_ls_names_its_loader_and_libc() -> None:
    info = elf.read(LS)
    assert info.elf_class == 2 and info.little_endian and info.machine == 62  # x86-64
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in info.needed
    assert info.is_dynamic


def test_static_busybox_needs_nothing() -> None:
    if not os.path.exists("/bin/busybox"):
        pytest.skip("busybox-static is not installed")
    info = elf.read("/bin/busybox")
    assert info.interpreter is None and info.needed == () and not info.is_dynamic


def test_resolve_ls_finds_libc_and_the_loader() -> None:
    closure = elf.resolve([LS])
    libc = closure.libraries["libc.so.6"]
    assert os.path.isfile(libc) and not os.path.islink(libc)
    assert closure.wanted_by["libc.so.6"] == LS
    assert closure.interpreters == {os.path.realpath("/lib64/ld-linux-x86-64.so.2")}


def test_not_an_elf_file(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "script")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")
    assert not elf.is_elf(path)
    with pytest.raises(elf.ElfError, match="not an ELF file"):
        elf.read(path)


def test_every_truncation_gives_a_clear_error_not_a_crash() -> None:
    with open(LS, "rb") as f:
        data = f.read()
    errors = 0
    for cut in (*range(0, 200, 3), *range(200, len(data), max(1, len(data) // 300))):
        try:
            elf.parse(data[:cut], f"ls[:{cut}]")
        except elf.ElfError as exc:
            assert f"ls[:{cut}]" in str(exc)
            errors += 1
    assert errors > 50


def test_bad_class_is_reported() -> None:
    with open(LS, "rb") as f:
        data = bytearray(f.read(4096))
    data[4] = 7
    with pytest.raises(elf.ElfError, match="class 7"):
        elf.parse(bytes(data), "crafted")


def test_dynamic_entry_past_the_end_is_reported() -> None:
    # An ELF header whose one program header is PT_DYNAMIC pointing past the file.
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", elf.PT_DYNAMIC, 0, 10_000, 0, 0, 64, 64, 8)
    with pytest.raises(elf.ElfError, match="truncated ELF file"):
        elf.parse(header + phdr, "crafted")


@needs_patchelf
def test_missing_library_names_it_and_the_binary(tmp_path: str) -> None:
    binary = os.path.join(tmp_path, "tool")
    shutil.copy(LS, binary)
    subprocess.run(["patchelf", "--add-needed", "libnope.so.9", binary], check=True)
    with pytest.raises(elf.ElfError, match=r"tool: needs libnope\.so\.9"):
        elf.resolve([binary])


@needs_patchelf
def test_origin_runpath_is_honoured(tmp_path: str) -> None:
    os.makedirs(os.path.join(tmp_path, "bin"))
    os.makedirs(os.path.join(tmp_path, "lib"))
    binary = os.path.join(tmp_path, "bin", "tool")
    shutil.copy(LS, binary)
    libc = elf.resolve([LS]).libraries["libc.so.6"]
    shutil.copy(libc, os.path.join(tmp_path, "lib", "libprivate.so.1"))
    # Two calls: patchelf 0.14 garbles the RUNPATH when both are done in one.
    subprocess.run(["patchelf", "--add-needed", "libprivate.so.1", binary], check=True)
    subprocess.run(["patchelf", "--set-rpath", "$ORIGIN/../lib", binary], check=True)
    info = elf.read(binary)
    assert info.runpath == ("$ORIGIN/../lib",)
    closure = elf.resolve([binary])
    assert closure.libraries["libprivate.so.1"] == os.path.join(tmp_path, "lib", "libprivate.so.1")
