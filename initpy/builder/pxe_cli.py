"""The `pxe-layout` command (and scripts/pxe-layout): its options table, and the layout.

Owned by the builder; the work is in initpy.builder.pxe. The parser and the
options table in docs/builder.md come from `SETTINGS`; errors leave through
initpy.cli.handle (`error:`/`hint:` lines, --debug).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from initpy import cli
from initpy.builder import settings
from initpy.builder.command import BuildError
from initpy.builder.grub import fetch_efi
from initpy.builder.hooks import default_hooks_dir
from initpy.builder.pxe import (
    BUILD_DIR,
    BUILD_FILES,
    DEFAULT_TIMEOUT,
    TFTP_COMPRESSION,
    BootValues,
    boot_parameters,
    fetch_syslinux,
    install_build,
    lay_out,
)
from initpy.builder.settings import DEBUG, Setting

PROG = "pxe-layout"

SETTINGS: tuple[Setting, ...] = (
    Setting(("OUTDIR",), "outdir", "mkinitrd's output folder", "OUTDIR"),
    Setting(("TFTPDIR",), "tftp_dir", "the TFTP server's root folder", "TFTPDIR"),
    Setting(("--mac",), "mac",
            "a host's MAC: write pxelinux.cfg/01-<mac> and grub/grub.cfg-01-<mac> for it",
            "MAC", repeatable=True,
            shown_default="pxelinux.cfg/default and grub/grub.cfg-default, for every host"),
    Setting(("--buildid-url",), "buildid_url", "buildos.buildid_url", "URL",
            exclusive="buildid_url"),
    Setting(("--server",), "server",
            "the TFTP server's address as hosts reach it: buildos.buildid_url becomes "
            f"tftp://HOST/{BUILD_DIR}/buildos-buildid", "HOST", exclusive="buildid_url"),
    Setting(("--smtp-relay",), "smtp_relay", "buildos.smtp_relay", "HOST"),
    Setting(("--admin-email",), "admin_email", "buildos.admin_email", "ADDR"),
    Setting(("--ssh-key",), "ssh_key", "buildos.ssh_key: the key, or @ and a .pub file",
            "KEY|@FILE"),
    Setting(("--agent",), "agent",
            "initpy.monitor.agent: the build agent initpy-agent.service runs, written quoted, "
            "so it may have arguments", "'PROGRAM ARGS'"),
    Setting(("--append",), "append",
            "more kernel parameters (console=ttyS0, initpy.monitor.interval=60, ...)", "WORDS",
            repeatable=True),
    Setting(("--timeout",), "timeout",
            "the loaders' prompt timeout in tenths of a second (GRUB rounds it up to seconds; "
            "0: boot at once)", "TENTHS",
            default=str(DEFAULT_TIMEOUT), parse=int),
    Setting(("--syslinux",), "syslinux", "take pxelinux.0 and ldlinux.c32 from DIR", "DIR",
            shown_default="Debian's packages, fetched into the cache"),
    Setting(("--efi",), "efi", "take shimx64.efi, grubx64.efi and grub/x86_64-efi/http.mod "
            "from DIR", "DIR", shown_default="Debian's packages, fetched into the cache"),
    Setting(("--http-base",), "http_base",
            "a web server's URL of TFTPDIR: UEFI hosts fetch the kernel and initrd from it "
            "over HTTP (TFTP carries only shim and GRUB); buildos.buildid_url defaults to "
            f"URL/{BUILD_DIR}/buildos-buildid. Not for hosts with Secure Boot on: Debian's "
            "signed GRUB refuses to load http.mod", "URL"),
    Setting(("--build-only",), "build_only",
            "only replace the three buildos/ files, the build id last (a rollout or a "
            "rollback); the loaders and their configs stay as they are", switch=True),
    Setting(("--keep-compression",), "keep_compression",
            f"copy the initrd as mkinitrd compressed it, rather than recompress it with "
            f"{TFTP_COMPRESSION} -19 (smaller over TFTP; the build id stays the same)",
            switch=True),
    DEBUG,
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    return settings.parser(
        PROG,
        "Lay out a TFTP folder that network-boots mkinitrd's OUTDIR: pxelinux (BIOS), "
        "shim and GRUB (UEFI).",
        SETTINGS,
    )


def say(message: str) -> None:
    cli.say(PROG, message)


def _ssh_key(given: str | None) -> str | None:
    if given is None or not given.startswith("@"):
        return given
    try:
        with open(given[1:]) as f:
            return f.read().strip()
    except OSError as exc:
        raise BuildError(f"--ssh-key {given}: {exc.strerror or exc}") from None


def run(argv: Sequence[str]) -> int:
    ns = parser().parse_args(argv)
    if ns.build_only:
        build_id = install_build(ns.outdir, ns.tftp_dir, repack=not ns.keep_compression)
        say(f"{ns.tftp_dir}/{BUILD_DIR}: build {build_id}")
        return 0
    buildid_url = ns.buildid_url or (
        f"tftp://{ns.server}/{BUILD_DIR}/buildos-buildid"
        if ns.server
        else f"{ns.http_base.rstrip('/')}/{BUILD_DIR}/buildos-buildid"
        if ns.http_base
        else None
    )
    if buildid_url is None:
        say("note: no --buildid-url or --server: the hosts will not follow new builds")
    values = BootValues(
        buildid_url=buildid_url,
        smtp_relay=ns.smtp_relay,
        admin_email=ns.admin_email,
        ssh_key=_ssh_key(ns.ssh_key),
        agent=ns.agent,
        extra=tuple(w for words in ns.append for w in words.split()),
    )
    parameters = boot_parameters([default_hooks_dir()])
    syslinux = ns.syslinux or fetch_syslinux()
    efi = ns.efi or fetch_efi()
    append, configs = lay_out(
        ns.outdir,
        ns.tftp_dir,
        values,
        macs=ns.mac,
        timeout=ns.timeout,
        syslinux=syslinux,
        efi=efi,
        http_base=ns.http_base,
        parameters=parameters,
        repack=not ns.keep_compression,
    )
    for path in configs:
        say(f"wrote {path}")
    say(f"append {append}")
    say(
        f"{ns.tftp_dir}: pxelinux.0 (BIOS), shimx64.efi (UEFI), "
        f"{BUILD_DIR}/ ({', '.join(BUILD_FILES)})"
        + (f", served as {ns.http_base}" if ns.http_base else "")
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.handle(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
