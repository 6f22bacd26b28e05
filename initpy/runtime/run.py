"""One `run()` for external commands.

Every command the boot runs (mkfs is never one of them; btrfs device scan,
nft and the like are) goes through here: the argv is logged to the kernel
log, the output is captured, the exit code is decoded (killed by a signal,
127 for "not found") and a failure raises one error whose text says what
failed and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from initpy.runtime.exit_status import describe_exit
from initpy.runtime.hook import BootFailure
from initpy.runtime.report import printable

if TYPE_CHECKING:
    from initpy.runtime.kernel import Completed, Kernel


class CommandFailed(BootFailure):
    """An external command failed; `completed` holds its output."""

    def __init__(self, reason: str, fix: str, completed: Completed | None) -> None:
        super().__init__(reason, fix)
        self.completed = completed


def run(
    kernel: Kernel,
    argv: Sequence[str],
    *,
    fix: str = "",
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 60.0,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run `argv` through the kernel seam; raise `CommandFailed` if it fails."""
    command = " ".join(argv)
    kernel.kmsg(printable(f"initpy: run: {command}"))
    try:
        completed = kernel.run(argv, input=input, timeout=timeout, env=env)
    except FileNotFoundError:
        raise CommandFailed(
            f"{command}: {argv[0]} is not in the initrd",
            fix or f"rebuild the initrd with a hook that declares {argv[0]}",
            None,
        ) from None
    except OSError as exc:
        raise CommandFailed(f"{command}: {exc}", fix, None) from None
    if check and completed.returncode != 0:
        last = (completed.stderr.strip() or completed.stdout.strip()).splitlines()[-3:]
        raise CommandFailed(
            f"{command}: {describe_exit(completed.returncode)}"
            + (": " + " / ".join(last) if last else ""),
            fix,
            completed,
        )
    return completed
