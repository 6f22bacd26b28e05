"""initpy/cli.py: the one edge of every command (error:/hint: lines, --debug)."""

from __future__ import annotations

import io

import pytest

from initpy import cli
from initpy.builder import mkinitrd_cli, pxe_cli
from initpy.builder.command import BuildError
from initpy.devtools import cli as devtools_cli


def handled(body: object, argv: list[str]) -> tuple[int, list[str]]:
    err = io.StringIO()
    status = cli.handle("prog", body, argv, stderr=err)  # type: ignore[arg-type]
    return status, err.getvalue().splitlines()


def fails_with(error: BaseException) -> object:
    def body(argv: list[str]) -> int:
        raise error

    return body


def test_a_known_error_is_one_error_line_and_one_hint_line() -> None:
    status, lines = handled(fails_with(BuildError("no kernel", "give --kernel")), [])
    assert (status, lines) == (1, ["prog: error: no kernel", "prog: hint: give --kernel"])
    status, lines = handled(fails_with(cli.CommandError("no hint")), [])
    assert (status, lines) == (1, ["prog: error: no hint"])


def test_die_is_a_known_error() -> None:
    def body(argv: list[str]) -> int:
        cli.die("the folder is gone", "make it")

    assert handled(body, []) == (1, ["prog: error: the folder is gone", "prog: hint: make it"])


def test_a_failed_programs_output_stays_below_its_error_line() -> None:
    error = BuildError("zstd -19: exit 1\nzstd: out of memory", "free some")
    _status, lines = handled(fails_with(error), [])
    assert lines == [
        "prog: error: zstd -19: exit 1",
        "  zstd: out of memory",
        "prog: hint: free some",
    ]


def test_an_unexpected_error_is_named_with_a_hint_to_debug() -> None:
    status, lines = handled(fails_with(KeyError("x")), ["a"])
    assert status == 1
    assert lines == [
        "prog: error: KeyError: 'x'",
        "prog: hint: this error was not expected here; run again with --debug for the traceback",
    ]


def test_debug_shows_the_traceback_first() -> None:
    status, lines = handled(fails_with(KeyError("x")), ["--debug"])
    assert status == 1
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-2] == "prog: error: KeyError: 'x'"
    assert "traceback above" in lines[-1]
    _status, lines = handled(fails_with(BuildError("known", "fix")), ["--debug"])
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-2:] == ["prog: error: known", "prog: hint: fix"]
    # After `--`, --debug is an argument, not the switch.
    _status, lines = handled(fails_with(KeyError("x")), ["--", "--debug"])
    assert lines[0] == "prog: error: KeyError: 'x'"


def test_the_body_returns_its_status_and_usage_errors_stay_argparses() -> None:
    assert handled(lambda argv: 3, []) == (3, [])
    with pytest.raises(SystemExit):
        cli.handle("prog", fails_with(SystemExit(2)), [])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "main", [mkinitrd_cli.main, pxe_cli.main, devtools_cli.main], ids=["mkinitrd", "pxe", "initpy"]
)
def test_every_command_has_debug_in_its_help(
    main: object, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["walk", "--help"] if main is devtools_cli.main else ["--help"])  # type: ignore[operator]
    assert done.value.code == 0
    assert "--debug" in capsys.readouterr().out
