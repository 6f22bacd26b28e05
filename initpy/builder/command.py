"""The builder's one way to run a program, and its one error type.

Every external command mkinitrd uses (compressors, depmod, patchelf, strip,
PyInstaller, busybox) goes through `run()`: it captures the output, decodes
how the command ended (not installed, killed by a signal, exit status with
the tail of its stderr) and raises `BuildError`, whose text says what failed
and whose `hint` says what to do. Every command's edge (initpy.cli.handle)
prints both; a traceback is left for bugs, and shown with --debug.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import IO

from initpy.cli import CommandError
from initpy.runtime.exit_status import describe_exit

# The Debian package that provides each tool the builder runs.
PACKAGES = {
    "zstd": "zstd",
    "xz": "xz-utils",
    "gzip": "gzip",
    "depmod": "kmod",
    "patchelf": "patchelf",
    "strip": "binutils",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
}
STDERR_TAIL_LINES = 15


class BuildError(CommandError):
    """The initrd cannot be built: `message` says what, `hint` what to do."""


def _install_hint(tool: str) -> str:
    package = PACKAGES.get(tool)
    return "run scripts/bootstrap" + (f" (Debian package {package})" if package else "")


def run(
    argv: Sequence[str],
    *,
    hint: str = "",
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | None = None,
    capture: bool = True,
    cwd: str | None = None,
) -> bytes:
    """Run `argv`; its standard output (b"" when `stdout` or not `capture`).

    Raises BuildError naming the command and how it ended.
    """
    tool = os.path.basename(argv[0])
    try:
        done = subprocess.run(
            list(argv),
            input=input,
            env=None if env is None else dict(env),
            stdout=stdout if stdout is not None else (subprocess.PIPE if capture else None),
            stderr=subprocess.PIPE if capture else None,
            check=False,
            cwd=cwd,
        )
    except FileNotFoundError:
        raise BuildError(
            f"{tool} is not installed (wanted: {' '.join(argv[:3])} ...)", _install_hint(tool)
        ) from None
    except PermissionError as exc:
        raise BuildError(
            f"{argv[0]} cannot be run: {exc.strerror}",
            f"check that {argv[0]} is an executable file",
        ) from None
    if done.returncode == 0:
        return done.stdout or b""
    how = describe_exit(done.returncode)
    tail = "\n".join(
        (done.stderr or b"").decode(errors="replace").strip().splitlines()[-STDERR_TAIL_LINES:]
    )
    raise BuildError(
        f"{' '.join(argv)}: {how}" + (f"\n{tail}" if tail else ""), hint or _install_hint(tool)
    )
