"""How a command ended, in words: the one decoder of exit statuses.

PID 1's run() (run.py) and the builder's run() (initpy/builder/command.py)
both say it the same way. A leaf of the standard library only.
"""

from __future__ import annotations

import signal


def describe_exit(returncode: int) -> str:
    """`returncode` as subprocess gives it (negative: the signal that killed it)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:  # a real-time signal has no name of its own
            return f"killed by signal {-returncode}"
    if returncode == 127:
        return "exit 127 (a program it runs was not found)"
    if returncode == 126:
        return "exit 126 (a program it runs cannot be executed)"
    return f"exit {returncode}"
