"""How a command ended, in words (initpy.runtime.exit_status), for every run() that says it."""

from __future__ import annotations

import signal
import sys

import pytest

from initpy.builder.command import BuildError
from initpy.builder.command import run as build_run
from initpy.runtime.exit_status import describe_exit


@pytest.mark.parametrize(
    ("returncode", "words"),
    [
        (0, "exit 0"),
        (1, "exit 1"),
        (126, "exit 126 (a program it runs cannot be executed)"),
        (127, "exit 127 (a program it runs was not found)"),
        (-signal.SIGKILL, "killed by SIGKILL"),
        (-signal.SIGTERM, "killed by SIGTERM"),
        (-(signal.SIGRTMIN + 2), f"killed by signal {signal.SIGRTMIN + 2}"),
    ],
)
def test_an_exit_status_in_words(returncode: int, words: str) -> None:
    assert describe_exit(returncode) == words


def test_the_builder_names_a_command_killed_by_a_real_time_signal() -> None:
    """A real-time signal has no Signals member: the builder raised ValueError instead."""
    rt = signal.SIGRTMIN + 1
    script = f"import os; os.kill(os.getpid(), {rt})"
    with pytest.raises(BuildError) as caught:
        build_run([sys.executable, "-c", script])
    assert caught.value.message.endswith(f": killed by signal {rt}")
