"""The `mkinitrd` command (and `mkinitrd.py`): the options table, parsed, then a build.

Owned by the builder. The parser comes from initpy.builder.options.SETTINGS;
errors leave through initpy.cli.handle (`error:`/`hint:` lines, --debug).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from initpy import cli
from initpy.builder import mkinitrd, settings, size_report
from initpy.builder.options import SETTINGS, Options

PROG = "mkinitrd"


def parser() -> argparse.ArgumentParser:
    return settings.parser(
        PROG, "Build buildos-image, buildos-initrd and buildos-buildid into OUTDIR.", SETTINGS
    )


def say(message: str) -> None:
    cli.say(PROG, message)


def run(argv: Sequence[str]) -> int:
    command = parser()
    ns = command.parse_args(argv)
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not epoch.isdigit():
        command.error(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds")
    options = Options(**settings.values(ns, SETTINGS), source_date_epoch=int(epoch))  # type: ignore[arg-type]
    started = time.monotonic()
    result = mkinitrd.build(options, log=say)
    for note in result.notes:
        say(f"note: {note}")
    if options.rootfs:
        say(
            f"note: --rootfs {options.rootfs} is packed under the init's files; where both "
            "have a path, the init's file wins"
        )
    if ns.verbose:
        for what, seconds in result.timings:
            say(f"{what}: {seconds:.2f} s")
        for part, raw, packed in result.parts:
            say(f"part {part}: {raw / 1e6:.1f} MB -> {packed / 1e6:.1f} MB")
    size = os.path.getsize(result.initrd)
    compression = options.compress + (
        f":{options.compress_level}" if options.compress_level is not None else ""
    )
    for line in size_report.lines(result.report, compression) if result.report else ():
        say(f"size: {line}")
    say(
        f"wrote {result.image}, {result.initrd} ({size / 1e6:.1f} MB, {compression}), "
        f"{result.buildid} in {time.monotonic() - started:.1f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.handle(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
