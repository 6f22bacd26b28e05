"""The UEFI side of the PXE layout: shim, Debian's signed network GRUB, and its configs.

Beside pxelinux (BIOS), `pxe-layout` writes what a UEFI client boots:

```
TFTPDIR/shimx64.efi                    Debian shim-signed (the DHCP boot file for UEFI)
TFTPDIR/grubx64.efi                    Debian grub-efi-amd64-signed's grubnetx64.efi
TFTPDIR/grub/grub.cfg                  the chooser: sources the host's own file
TFTPDIR/grub/grub.cfg-01-<mac>         per --mac (grub.cfg-default without --mac)
TFTPDIR/grub/x86_64-efi/http.mod       Debian grub-efi-amd64-bin, for --http-base
```

**Why these names** (read from the binaries, docs/fleet.md): shim loads
`grubx64.efi` from the folder it was fetched from. Debian's signed network
GRUB has the prefix `/grub` built in and an embedded config that runs
`source $prefix/grub.cfg`, so it reads `(tftp,SERVER)/grub/grub.cfg` and
nothing else by itself: the chooser takes the booting NIC's MAC
(`$net_default_mac`, lower case with colons) apart with `regexp` and sources
`grub.cfg-01-<mac with dashes>` (else grub.cfg-default), the name upstream
GRUB's own network search uses, so the per-MAC choice is pxelinux's
`01-<mac>`. Each file names itself in $buildos_config, which the chooser
tests and echoes (GRUB 2.06's `test -e` is false for every TFTP file).

**The command line.** GRUB's `linux` hands its arguments to the kernel
joined by spaces, an argument holding a space wrapped in double quotes, and
a backslash, single or double quote inside escaped with a backslash, which
the kernel keeps. Each argument is written in single quotes, so GRUB's
lexer expands no `$` and splits at no `;`; a value holding a backslash or
a single quote cannot be carried and is refused. The line GRUB will build
is read back with the boot's tokenizer, as for pxelinux.

**HTTP.** Debian's signed network image has `tftp` but no `http` module
(its 95 modules are listed in docs/fleet.md); with `--http-base` the config
loads http.mod from the same Debian GRUB build, so the kernel and initrd
come over HTTP and TFTP carries only shim, GRUB and the configs. Under
Secure Boot the signed GRUB refuses `insmod http` ("prohibited by secure
boot policy", seen under OVMF: docs/fleet.md), so HTTP is for hosts with
Secure Boot off; with it on, the kernel and initrd travel by TFTP.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from initpy.builder import debfiles
from initpy.builder.command import BuildError
from initpy.runtime import cmdline

GRUB_DIR = "grub"
# What the UEFI client needs, and where Debian's packages keep it.
EFI_FILES: debfiles.Files = {
    "shimx64.efi": ("shim-signed", "usr/lib/shim/shimx64.efi.signed"),
    "grubx64.efi": (
        "grub-efi-amd64-signed",
        "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
    ),
    f"{GRUB_DIR}/x86_64-efi/http.mod": ("grub-efi-amd64-bin", "usr/lib/grub/x86_64-efi/http.mod"),
}
SIGNED_GRUB = "grub-efi-amd64-signed"
GRUB_BIN = "grub-efi-amd64-bin"
HINT = "give --efi DIR"
# What GRUB's `linux` prepends: BOOT_IMAGE= and the kernel's path.
BOOT_IMAGE = "BOOT_IMAGE="
MAC_REGEXP = "^" + ":".join(["([0-9a-f][0-9a-f])"] * 6) + "$"


def config_name(pxelinux_name: str) -> str:
    """The GRUB file for pxelinux's `01-<mac>` (or `default`)."""
    return f"grub.cfg-{pxelinux_name}"


def grub_bin_version(signed_version: str) -> str:
    """grub-efi-amd64-bin's version for the signed image's: 1+2.06+13+deb12u2 -> 2.06-13+deb12u2.

    Debian's signed package wraps the binary package's version as
    `1+UPSTREAM+DEBIANREVISION`; http.mod must come from that very build.
    """
    match = re.fullmatch(r"\d+\+([^+]+)\+(.+)", signed_version)
    if not match:
        raise BuildError(
            f"{SIGNED_GRUB} {signed_version}: not the 1+UPSTREAM+REVISION form Debian signs with",
            HINT,
        )
    return f"{match.group(1)}-{match.group(2)}"


def fetch_efi() -> str:
    """A folder with shimx64.efi, grubx64.efi and http.mod from Debian's packages."""
    versions = debfiles.candidates(["shim-signed", SIGNED_GRUB], HINT)
    versions[GRUB_BIN] = grub_bin_version(versions[SIGNED_GRUB])
    return debfiles.fetch("efi", EFI_FILES, versions, HINT)


# -- the command line ---------------------------------------------------------------------


def linux_arguments(append: str) -> list[str]:
    """The append line as GRUB `linux` arguments, or BuildError naming what GRUB cannot carry."""
    pairs, _after, _problems = cmdline.tokenize(append)
    arguments = [name if value is None else f"{name}={value}" for name, value in pairs]
    for argument in arguments:
        for bad in ("\\", "'"):
            if bad in argument:
                raise BuildError(
                    f"{argument!r} holds {bad!r}: GRUB's linux command escapes it with a "
                    "backslash the kernel keeps, so the host would read another value",
                    "remove it (UEFI hosts boot through GRUB)",
                )
    return arguments


def kernel_line(kernel: str, arguments: Sequence[str]) -> str:
    """The command line GRUB's `linux` builds (grub_create_loader_cmdline)."""
    words = [f"{BOOT_IMAGE}{kernel}", *arguments]
    out = []
    for word in words:
        escaped = re.sub(r"([\\'\"])", r"\\\1", word)
        out.append(f'"{escaped}"' if " " in word else escaped)
    return " ".join(out)


def check_kernel_line(kernel: str, arguments: Sequence[str], append: str, limit: int) -> None:
    """The host reads from GRUB's line what it would read from pxelinux's."""
    line = kernel_line(kernel, arguments)
    if len(line) > limit:
        raise BuildError(
            f"GRUB's command line is {len(line)} characters; the kernel takes about {limit}",
            "shorten it (a shorter URL or --http-base, an ed25519 key rather than RSA)",
        )
    wanted, _, _ = cmdline.tokenize(append)
    read, after, problems = cmdline.tokenize(line)
    if read[1:] != wanted or after or problems:
        raise BuildError(
            f"the host would not read GRUB's command line as given: {line!r}",
            "drop the words that hold quotes",
        )


# -- the configs --------------------------------------------------------------------------


def http_root(base: str) -> tuple[str, str]:
    """GRUB's device and path for --http-base: http://h:8080/fleet/ -> (http,h:8080), /fleet."""
    parts = urlsplit(base)
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
        raise BuildError(
            f"--http-base {base!r} is not an http:// URL of a folder",
            "give http://HOST[:PORT]/PATH/ (GRUB speaks plain HTTP, not HTTPS)",
        )
    if parts.username or parts.password:
        raise BuildError(f"--http-base {base!r} holds a user name; GRUB sends none")
    host = parts.hostname + (f":{parts.port}" if parts.port not in (None, 80) else "")
    path = parts.path.rstrip("/")
    for c in path + host:
        if not (c.isalnum() or c in "-._~/:%"):
            raise BuildError(
                f"--http-base {base!r} holds {c!r}, which GRUB's file names cannot carry",
                "serve the folder under a plain path",
            )
    return f"(http,{host})", path


def chooser_text(timeout_tenths: int) -> str:
    """grub/grub.cfg: the timeout, and the host's own file by its MAC, else the default.

    GRUB 2.06's `test -e` says no to every file on TFTP (tried under OVMF),
    so the chooser sources the host's file, which fails quietly if it is
    not there, and each file sets $buildos_config to its own name.
    """
    seconds = -(-timeout_tenths // 10)
    sets = " ".join(f"--set={i}:m{i}" for i in range(1, 7))
    mac = "-".join(f"$m{i}" for i in range(1, 7))
    return (
        "# Written by initpy's scripts/pxe-layout. Debian's signed network GRUB reads\n"
        "# $prefix/grub.cfg; a host's own file is grub.cfg-01-<its MAC with dashes>.\n"
        f"set timeout={seconds}\n"
        "set default=buildos\n"
        "set buildos_config=\n"
        f"if regexp {sets} '{MAC_REGEXP}' \"$net_default_mac\"; then\n"
        f'  source "$prefix/{config_name("01-")}{mac}"\n'
        "fi\n"
        'if [ -z "$buildos_config" ]; then\n'
        f'  source "$prefix/{config_name("default")}"\n'
        "fi\n"
        'if [ -z "$buildos_config" ]; then\n'
        '  echo "pxe-layout wrote no GRUB config for $net_default_mac"\n'
        "else\n"
        '  echo "buildos: GRUB config $buildos_config"\n'
        "fi\n"
    )


def entry_text(name: str, root: str, build_dir: str, arguments: Sequence[str], http: bool) -> str:
    """One host's file: the buildos entry, every argument in single quotes.

    GRUB says nothing while it loads; the echo lines show the operator (and
    the VM tests' clocks) where the transfer starts and ends.
    """
    quoted = " ".join(f"'{a}'" for a in arguments)
    how = "http" if http else "tftp"
    return (
        "# Written by initpy's scripts/pxe-layout; arguments are single-quoted so GRUB\n"
        "# expands nothing in them.\n"
        f"set buildos_config={name}\n" + ("insmod http\n" if http else "") + "menuentry buildos {\n"
        f"  echo 'buildos: loading the kernel by {how}'\n"
        f"  linux {root}/{build_dir}/buildos-image {quoted}\n"
        f"  echo 'buildos: loading the initrd by {how}'\n"
        f"  initrd {root}/{build_dir}/buildos-initrd\n"
        "  echo 'buildos: starting the kernel'\n"
        "}\n"
    )
