"""What a VM test boots: a fetched kernel's files, and the three files mkinitrd writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KernelFiles:
    folder: Path
    vmlinuz: Path
    modules: Path  # lib/modules/<version>
    vmlinux: Path | None = None  # the uncompressed ELF, when fetch-kernel made one

    @property
    def boot_image(self) -> Path:
        """What QEMU boots fastest: vmlinux (PVH entry, no xz under TCG), else vmlinuz."""
        return self.vmlinux or self.vmlinuz


@dataclass(frozen=True)
class InitrdFiles:
    outdir: Path
    image: Path  # buildos-image, the kernel mkinitrd copied
    initrd: Path  # buildos-initrd
    buildid: Path
