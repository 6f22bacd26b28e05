"""The edge of every initpy command: one uncaught-exception handler, `die`, `--debug`.

After mkosi's `uncaught_exception_handler`: a command's `main` runs its body
through `handle()`. A `CommandError` (what `die()` raises, and the builder's
BuildError) is the operator's to fix: one `PROG: error: MESSAGE` line, one
`PROG: hint: FIX` line, exit status 1. Anything else is unexpected: one
`error:` line naming the exception, a hint to run again with `--debug`, exit
status 1. With `--debug` the traceback comes first. Standard library only,
so that every command (mkinitrd, pxe-layout, initpy) imports it cheaply.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

DEBUG_FLAG = "--debug"
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT


class CommandError(Exception):
    """A command cannot do its job: `message` says what, `hint` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


def say(prog: str, message: str) -> None:
    """A command's progress line on stderr, named like its errors."""
    print(f"{prog}: {message}", file=sys.stderr)


def die(message: str, hint: str = "") -> NoReturn:
    """Stop the command with `message` and `hint` (printed by `handle`)."""
    raise CommandError(message, hint)


def handle(
    prog: str,
    body: Callable[[list[str]], int],
    argv: Sequence[str] | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run `body(argv)` and turn whatever escapes it into `error:`/`hint:` lines.

    `--debug` is looked for in argv before the body parses it, so that an
    error raised while parsing (a bad SOURCE_DATE_EPOCH) shows its traceback
    too; each command also declares it, for --help.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args[: args.index("--")] if "--" in args else DEBUG_FLAG in args
    err = stderr or sys.stderr

    def say(kind: str, text: str) -> None:
        first, *rest = text.splitlines() or [""]
        print(f"{prog}: {kind}: {first}", file=err)
        for line in rest:  # a failed program's stderr tail, below its own line
            print(f"  {line}", file=err)

    try:
        return body(args)
    except CommandError as exc:
        if debug:
            traceback.print_exc(file=err)
        say("error", exc.message)
        if exc.hint:
            say("hint", exc.hint)
    except KeyboardInterrupt:
        say("error", "interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            traceback.print_exc(file=err)
        say("error", f"{type(exc).__name__}: {exc}")
        say(
            "hint",
            "this error was not expected here; run again with --debug for the traceback"
            if not debug
            else "the traceback above shows where it was raised; please report it",
        )
    return EXIT_FAILURE
