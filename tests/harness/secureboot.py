"""Secure Boot in QEMU: OVMF with Microsoft's keys, Debian's signed shim and GRUB on an ESP.

For tests/vm/test_secureboot.py. The chain is the one a Debian machine
boots: the firmware checks shim (signed by Microsoft's UEFI CA), shim
checks GRUB and GRUB asks shim to check the kernel (both signed by
Debian), and the kernel, in lockdown, checks every module. Nothing of it
is installed on the build machine:

- `signed_loaders()`: shim-signed and grub-efi-amd64-signed, fetched with
  `apt-get download` and unpacked with `dpkg-deb -x` into
  ~/.cache/initpy/secureboot/<versions>/ (as scripts/fetch-kernel does);
- `esp()`: a folder laid out as an EFI system partition, which QEMU
  shows the guest as a FAT disk (`fat:` vvfat): EFI/BOOT/BOOTX64.EFI is
  shim, grubx64.efi beside it, EFI/debian/grub.cfg (where Debian's signed
  GRUB, built with that prefix, reads its config), the kernel and initrd;
- `with_unsigned_module()`: an initrd in which one packed module has lost
  its signature (a second archive appended, which the kernel unpacks over
  the first), for the test that lockdown refuses it;
- `firmware_args()`: OVMF's Secure Boot build (SMM, q35) with a private
  copy of the variables that have Microsoft's keys enrolled (Debian's
  `ovmf`, which scripts/bootstrap installs).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from initpy.builder import cpio
from initpy.runtime.layout import MODULE_SIGNATURE_MAGIC, module_is_signed

from .qemu_rules import REQUIRED_APPEND

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
PACKAGES = ("shim-signed", "grub-efi-amd64-signed")
SHIM = "usr/lib/shim/shimx64.efi.signed"
GRUB = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
# Where the signed (non-network) GRUB looks for its config on the ESP.
GRUB_CFG = "EFI/debian/grub.cfg"
CACHE = Path(os.environ.get("INITPY_CACHE", Path.home() / ".cache" / "initpy")) / "secureboot"
# A PE file's certificate table: the 5th data directory of the optional header.
_CERT_DIRECTORY = 4


def _candidate(package: str) -> str:
    out = subprocess.run(
        ["apt-cache", "policy", package], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                return version
    raise RuntimeError(f"apt-cache has no candidate for {package}; run apt-get update")


def signed_loaders() -> tuple[Path, Path]:
    """Debian's signed shim and GRUB (shimx64.efi, grubx64.efi), from the cache."""
    key = "_".join(f"{p}_{_candidate(p)}" for p in PACKAGES).replace("~", "-").replace("+", "-")
    dest = CACHE / key
    if not (dest / ".complete").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE, prefix=".fetch.") as tmp:
            subprocess.run(
                ["apt-get", "download", "-q", *(f"{p}={_candidate(p)}" for p in PACKAGES)],
                cwd=tmp,
                capture_output=True,
                check=True,
            )
            root = Path(tmp) / "root"
            for deb in sorted(Path(tmp).glob("*.deb")):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            shutil.copyfile(root / SHIM, dest / "shimx64.efi")
            shutil.copyfile(root / GRUB, dest / "grubx64.efi")
            (dest / ".complete").touch()
    return dest / "shimx64.efi", dest / "grubx64.efi"


def pe_signature_size(path: Path) -> int:
    """Bytes of the Authenticode signatures a PE file carries (0: unsigned)."""
    data = path.read_bytes()
    if data[:2] != b"MZ":
        return 0
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    if data[pe : pe + 4] != b"PE\0\0":
        return 0
    (magic,) = struct.unpack_from("<H", data, pe + 24)
    directories = pe + 24 + (112 if magic == 0x20B else 96)
    _, size = struct.unpack_from("<II", data, directories + 8 * _CERT_DIRECTORY)
    return int(size)


def strip_module_signature(data: bytes) -> bytes:
    """A signed module's ELF without its signature: what a strip or a local rebuild leaves."""
    if not module_is_signed(data):
        raise ValueError("the module carries no signature to strip")
    # struct module_signature: algo, hash, id_type, signer_len, key_id_len,
    # pad[3], then the signature's length (big-endian u32) just before the magic.
    info_end = len(data) - len(MODULE_SIGNATURE_MAGIC)
    (sig_len,) = struct.unpack(">I", data[info_end - 4 : info_end])
    return data[: info_end - 12 - sig_len]


def with_unsigned_module(
    initrd: Path, out: Path, inside: str, module: Path, compression: str
) -> Path:
    """`initrd` (compressed with `compression`), plus a part that replaces `inside` by
    `module` without its signature.

    The part is compressed the same way and appended as mkinitrd joins its
    own parts: the kernel unpacks it over the first. (After lz4's legacy
    frames the kernel reads only more lz4 frames, not a plain archive.)
    """
    unsigned = strip_module_signature(module.read_bytes())
    part = cpio.archive([cpio.regular(inside, data=unsigned, perm=0o644)], 0)
    out.write_bytes(initrd.read_bytes() + cpio.compress(part, compression))
    return out


def esp(folder: Path, kernel: Path, initrd: Path, append: Sequence[str]) -> Path:
    """Lay out an EFI system partition in `folder` that boots `kernel` with `initrd`."""
    shim, grub = signed_loaders()
    boot = folder / "EFI" / "BOOT"
    boot.mkdir(parents=True)
    shutil.copyfile(shim, boot / "BOOTX64.EFI")
    shutil.copyfile(grub, boot / "grubx64.efi")
    shutil.copyfile(kernel, folder / "vmlinuz")
    shutil.copyfile(initrd, folder / "initrd")
    words = [
        w for w in REQUIRED_APPEND if not any(a.split("=")[0] == w.split("=")[0] for a in append)
    ]
    cfg = folder / GRUB_CFG
    cfg.parent.mkdir(parents=True)
    cfg.write_text(
        "set timeout=0\n"
        "search --no-floppy --file --set=root /vmlinuz\n"
        f"linux /vmlinuz {' '.join([*words, *append])}\n"
        "initrd /initrd\n"
        "boot\n"
    )
    return folder


def firmware_args(workdir: Path, esp_folder: Path) -> list[str]:
    """QEMU's arguments: OVMF with Secure Boot enforced, booting the ESP first."""
    return [
        *secure_firmware(workdir),
        "-drive",
        f"if=none,id=esp,format=raw,readonly=on,file=fat:{esp_folder}",
        "-device",
        "virtio-blk-pci,drive=esp,bootindex=0",
    ]


def secure_firmware(workdir: Path) -> list[str]:
    """QEMU's arguments: OVMF with Secure Boot enforced (a network boot needs no more)."""
    missing = [str(p) for p in (OVMF_CODE, OVMF_VARS) if not p.exists()]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} missing: install Debian's ovmf (scripts/bootstrap)"
        )
    variables = workdir / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, variables)
    return [
        # OVMF's Secure Boot build keeps its variables in SMM, out of the OS's reach.
        "-machine",
        "q35,smm=on",
        "-global",
        "driver=cfi.pflash01,property=secure,value=on",
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={variables}",
    ]
