"""What a hook gives the OS after the hand-off, and what it needs there.

Part of the hook contract (initpy.runtime.hook: `Hook.os_files`,
`Hook.os_packages`), in a module of its own because PID 1 only imports
them with the hooks and never reads them: the builder writes and checks
them over a `--rootfs` tree (initpy.builder.rootfs, docs/os.md).
"""

from __future__ import annotations

from initpy.runtime.layout import LIB
from initpy.runtime.record import frozen

# Where hooks put the programs their OS units run (OsFile paths): initpy's
# own folder of the image, not /usr/local, which is the operator's.
OS_PROGRAMS = f"{LIB}/os"


@frozen
class OsFile:
    """A file a hook puts into the OS that systemd runs after the hand-off.

    What the booted host needs from a hook (its units, their scripts, a
    config the host cannot work without) comes with the hook, not with the
    OS tree: mkinitrd writes it over the `--rootfs` tree, and never without
    one (a busybox initrd has no systemd to read it). A unit with
    `wanted_by` is enabled as `systemctl enable` would: a link in
    /etc/systemd/system/TARGET.wants.
    """

    path: str  # absolute, in the OS
    text: str
    mode: int = 0o644
    wanted_by: str | None = None


@frozen
class OsPackage:
    """A Debian package the OS must hold for a hook's work after the hand-off.

    mkinitrd looks for `path`, a file the package installs, in the
    `--rootfs` tree, and names the package when it is missing: at build
    time, not as a failed unit at boot.
    """

    name: str
    path: str
