"""Raw disk images for the VM tests, made on the host without root.

mkfs.ext4 and mkfs.btrfs format image files directly (no loop device), so
a test can hand QEMU a labelled state disk, a btrfs machines disk, a
multi-device btrfs, or a blank disk, each a sparse file in its tmp_path.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

# Big enough for btrfs's minimum (about 114 MiB with default profiles), and
# sparse: a fresh image costs a few MiB of real space.
DEFAULT_MIB = 256


def blank(path: Path, mib: int = DEFAULT_MIB) -> str:
    """A sparse, all-zero image: a disk with nothing on it."""
    with open(path, "wb") as f:
        f.truncate(mib << 20)
    return str(path)


def _mkfs(argv: Sequence[str]) -> None:
    if shutil.which(argv[0]) is None:
        raise AssertionError(f"{argv[0]} is not installed; scripts/bootstrap installs it")
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def ext4(path: Path, label: str, mib: int = 64, contents: Path | None = None) -> str:
    """An ext4 image with `label`, holding a copy of the `contents` folder if given."""
    blank(path, mib)
    extra = ["-d", str(contents)] if contents is not None else []
    _mkfs(["mkfs.ext4", "-q", "-F", "-L", label, *extra, str(path)])
    return str(path)


HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")


def state_contents(folder: Path) -> Path:
    """A /state tree with SSH host keys already saved, as after a host's first boot.

    Generating a 3072-bit RSA key takes about 20 s under TCG; boots that
    are not about the first boot start from here (made on the host, fast).
    """
    keys = folder / "initpy" / "ssh"
    keys.mkdir(parents=True, exist_ok=True)
    keys.parent.chmod(0o700)
    keys.chmod(0o700)
    for kind in HOST_KEY_TYPES:
        key = keys / f"ssh_host_{kind}_key"
        if not key.exists():
            _mkfs(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "root@buildos", "-f", str(key)])
        key.chmod(0o600)
        key.with_suffix(".pub").chmod(0o600)
    return folder


def btrfs(paths: Sequence[Path], label: str, mib: int = DEFAULT_MIB) -> list[str]:
    """One btrfs over one or more images (metadata single on one, raid1 on more)."""
    for path in paths:
        blank(path, mib)
    profile = ["-d", "single", "-m", "single" if len(paths) == 1 else "raid1"]
    _mkfs(["mkfs.btrfs", "-q", "-f", "-L", label, *profile, *map(str, paths)])
    return [str(p) for p in paths]


def state_and_machines(folder: Path, host_keys: bool = True) -> list[str]:
    """The standard pair: an ext4 buildos.state and a btrfs buildos.machines.

    With `host_keys`, /state already holds SSH host keys (a host's second
    and later boots); without, the boot generates them (the first boot).
    """
    contents = state_contents(folder / "state-tree") if host_keys else None
    return [
        ext4(folder / "state.img", "buildos.state", contents=contents),
        *btrfs([folder / "machines.img"], "buildos.machines"),
    ]
