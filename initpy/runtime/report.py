"""The boot report: console lines, the kernel log, and report.json.

Every state prints `initpy: <state>: ...` on the console and in the kernel
log, and is recorded with its timing and result. The report is written to
/run/initpy/report.json before the hand-off and before any rescue shell,
and copied to /state/initpy/ (rotated) when /state is mounted.

What reaches the console and the kernel log passes through `printable()`
(initpy/runtime/escape.py) here, at one place: a disk label, a DHCP option
or a command's output quoted in a message cannot move the cursor, clear
the screen or start a line of its own (docs/security.md). report.json keeps the text as it was:
JSON escapes control characters by itself.
"""

from __future__ import annotations

import json
from enum import StrEnum

from initpy.runtime import layout
from initpy.runtime.escape import one_line as one_line
from initpy.runtime.escape import printable as printable
from initpy.runtime.kernel import Kernel
from initpy.runtime.record import as_dict, field, mutable
from initpy.runtime.state_folders import own_folder

REPORT_DIR = layout.RUN_DIR
REPORT_PATH = layout.REPORT
STATE_REPORT_DIR = f"{layout.STATE_OWN_DIR}/reports"
KEEP_REPORTS = 10


class Outcome(StrEnum):
    """How the boot ended."""

    HANDOFF = "handoff"
    RESCUE = "rescue"


class Result(StrEnum):
    """How one state ended."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@mutable
class StateRecord:
    name: str
    start_ms: int
    duration_ms: int
    result: Result
    detail: str | None


@mutable
class Report:
    kernel: Kernel
    outcome: Outcome | None = None
    reason: str | None = None
    fix: str | None = None
    states: list[StateRecord] = field(default_factory=list)
    command_line: dict[str, object] = field(default_factory=dict)
    modules: list[dict[str, object]] = field(default_factory=list)
    traceback: str | None = None
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)
    rotated: bool = False  # the copies on /state are rotated once per boot

    def say(self, message: str, continuation: str = "") -> None:
        """`initpy:` lines on the console and in the kernel log, escaped.

        Each line of `message` is one console line (lines after the first
        begin with `continuation`); any other control character is escaped,
        so no console line can begin with anything but `initpy: `.
        """
        first, *rest = message.split("\n")
        for text in (first, *(continuation + r for r in rest)):
            line = f"initpy: {printable(text)}"
            self.kernel.console(line)
            self.kernel.kmsg(line)

    def warn(self, message: str) -> None:
        """A problem that does not stop the boot: console lines and the report."""
        self.warnings.append(message)
        self.say(f"warning: {message}", continuation="warning: ")

    def now_ms(self) -> int:
        return int(self.kernel.uptime() * 1000)

    def record(self, record: StateRecord) -> None:
        self.states.append(record)

    def as_json(self) -> dict[str, object]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "fix": self.fix,
            "states": [as_dict(s) for s in self.states],
            "command_line": self.command_line,
            "modules": self.modules,
            "warnings": self.warnings,
            "traceback": self.traceback,
            **self.extra,
        }

    def write(self, state_mounted: bool = False) -> None:
        """Write report.json; never raises (a report must not break a boot)."""
        data = (json.dumps(self.as_json(), indent=2, sort_keys=False) + "\n").encode()
        try:
            self.kernel.mkdir(REPORT_DIR)
            self.kernel.write_atomic(REPORT_PATH, data)
        except OSError as exc:
            self.kernel.console(printable(f"initpy: report: cannot write {REPORT_PATH}: {exc}"))
        if state_mounted:
            self._keep_on_state(data)

    def _keep_on_state(self, data: bytes) -> None:
        """Keep report.json.0 (this boot) .. report.json.9 (nine boots ago) on /state."""
        try:
            k = self.kernel
            own_folder(k, STATE_REPORT_DIR, self.warn)  # /state is not trusted: root's only
            for i in range(KEEP_REPORTS - 1, 0, -1):
                older = f"{STATE_REPORT_DIR}/report.json.{i - 1}"
                if not self.rotated and k.exists(older):
                    k.rename(older, f"{STATE_REPORT_DIR}/report.json.{i}")
            self.rotated = True
            k.write_atomic(f"{STATE_REPORT_DIR}/report.json.0", data)
        except OSError as exc:
            self.kernel.console(printable(f"initpy: report: cannot keep a copy on /state: {exc}"))
