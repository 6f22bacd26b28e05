"""The VM arguments of the whole boot, in one place for tests, demo and benchmark.

`full_boot_args(workdir)` is what a boot needs for every hook to succeed:
command-line words, disks and NICs. Storage and network hooks add theirs
here, each in its marked block; scenario (a) of tests/vm/test_boot.py,
scripts/demo and benchmarks/boot_time.py all boot with it.
"""

from __future__ import annotations

from pathlib import Path

from .qemu_rules import BootArgs, Nic

GUEST_PROGRAM = Path(__file__).parent / "guest" / "vmcheck"
GUEST_PATH = "/usr/bin/initpy-vmcheck"
FULL_BOOT_MAC = "52:54:00:12:34:56"


def full_boot_args(workdir: Path, exec_path: str = GUEST_PATH, host_keys: bool = True) -> BootArgs:
    """The whole boot: `workdir` is a scratch folder for disk images and sockets."""
    args = BootArgs(append=[f"initpy.exec={exec_path}"])
    # -- storage: an ext4 buildos.state (SSH host keys already saved, as on
    # any boot but a host's first) and a btrfs buildos.machines disk.
    from .disks import state_and_machines

    args.disks += state_and_machines(workdir, host_keys)
    # -- network: one NIC on QEMU's restricted user network, whose DHCP
    # server answers (no router or DNS offered to the guest's use: restrict).
    args.nics.append(Nic.user("net0", mac=FULL_BOOT_MAC))
    return args
