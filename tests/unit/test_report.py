"""The console side of the boot report: every line printed is escaped, at one place."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from initpy.devtools.fake import FakeKernel
from initpy.runtime.report import Report, one_line, printable


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    assert printable("plain text, café, ünïcode") == "plain text, café, ünïcode"
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("a\nb\rc\td\x7f\x9b") == "a\\nb\\rc\\td\\x7f\\x9b"
    assert printable("evil\u202etxt.exe\u2028next") == "evil\\u202etxt.exe\\u2028next"
    assert printable(repr("\x1b\n")) == repr("\x1b\n")  # repr() is printable already


@given(st.text())
def test_printable_output_is_one_printable_line(text: str) -> None:
    assert printable(text).isprintable()


def test_say_prints_each_line_tagged_and_escaped(tmp_path: os.PathLike[str]) -> None:
    kernel = FakeKernel(root=os.path.join(str(tmp_path), "root"))
    report = Report(kernel)
    report.say("rescue: first\x1b[2J\nsecond\r", continuation="rescue: ")
    report.warn("a label 'x\x07'\nnext")
    assert kernel.console_lines == [
        "initpy: rescue: first\\x1b[2J",
        "initpy: rescue: second\\r",
        "initpy: warning: a label 'x\\x07'",
        "initpy: warning: next",
    ]
    assert kernel.kmsg_lines == kernel.console_lines
    # The report keeps the warning as it was given.
    assert report.warnings == ["a label 'x\x07'\nnext"]


def test_one_line_escapes_line_breaks_only() -> None:
    assert one_line("a\nb\r\u2028c\x1b[1m") == "a\\nb\\r\\u2028c\x1b[1m"
    assert one_line("buildos.machines") == "buildos.machines"


@pytest.fixture(scope="module")
def quiet_kernel(tmp_path_factory: pytest.TempPathFactory) -> FakeKernel:
    return FakeKernel(root=str(tmp_path_factory.mktemp("root")))


@given(text=st.text())
def test_one_line_then_say_gives_one_console_line(quiet_kernel: FakeKernel, text: str) -> None:
    quiet_kernel.console_lines.clear()
    Report(quiet_kernel).say(f"label {one_line(text)}")
    assert len(quiet_kernel.console_lines) == 1
    assert quiet_kernel.console_lines[0].isprintable()
