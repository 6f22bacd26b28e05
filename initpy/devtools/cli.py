"""The `initpy` command: tools for people, never PID 1 (see initpy.runtime.entry).

initpy walk [--cmdline TEXT] [--root DIR] [--hooks-dir DIR]...
    walk the whole boot against a fake kernel in a temporary root
initpy diagram [--hooks-dir DIR]...
    print the state diagram (mermaid), derived from the hooks
initpy params [--hooks-dir DIR]...
    print the command-line parameters as a markdown table
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from initpy import cli
from initpy.builder import settings
from initpy.builder.hooks import default_hooks_dir
from initpy.runtime.hook import hooks_package

PROG = "initpy"


def main(argv: Sequence[str] | None = None) -> int:
    if os.getpid() == 1:
        # Started as init (an initrd or init= that names this command): the
        # kernel's bare words in argv would meet argparse, which exits, and
        # PID 1 exiting panics the kernel. Boot instead; never returns.
        from initpy.runtime.entry import main as boot

        boot()
    return cli.handle(PROG, run, argv)


def run(args: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("walk", "diagram", "params"):
        p = sub.add_parser(name)
        p.add_argument(
            "--hooks-dir",
            action="append",
            default=None,
            help="a hooks folder (repeatable; default: the hooks that come with initpy)",
        )
        settings.add_arguments(p, [settings.DEBUG])
        p.add_argument("--hooks", default=None, help="comma-separated hook names (default: all)")
        if name == "walk":
            p.add_argument(
                "--cmdline",
                default="console=ttyS0 initpy.exec=/sbin/init",
                help="the kernel command line to boot with",
            )
            p.add_argument("--root", default=None, help="the fake root (default: a temporary one)")
    ns = parser.parse_args(args)
    folders = ns.hooks_dir or [default_hooks_dir()]
    names = [n for n in ns.hooks.split(",") if n] if ns.hooks is not None else None
    if ns.command == "diagram":
        from initpy.devtools.docgen import diagram

        print(diagram(folders, names), end="")
        return 0
    elif ns.command == "params":
        from initpy.devtools.docgen import parameters_table

        print(parameters_table(folders, names), end="")
        return 0
    # The fake machine imports the hooks' helpers as the package `hooks`, as
    # the boot does; an installed initpy has them in initpy/hooks, off sys.path.
    hooks_package(default_hooks_dir())
    from initpy.devtools.walk import walk

    return walk(ns.cmdline, folders, names, ns.root)


if __name__ == "__main__":
    sys.exit(main())
