"""Reading what the guest test program (guest/vmcheck) prints on the console.

The program prints one section per topic between `==vmcheck:begin:T==` and
`==vmcheck:end:T==`, then `==vmcheck:done==`. `read_sections` waits for the
whole output and returns {topic: text}; `report` parses report.json out of it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .machine import Vm, VmError

# The first marker may share its line with the firmware's terminal escapes
# (with `quiet` nothing else comes before it), so it is not anchored.
SECTION = re.compile(r"==vmcheck:begin:(\w+)==\n(.*?)^==vmcheck:end:\1==$", re.S | re.M)


def read_sections(vm: Vm, timeout: float = 240) -> dict[str, str]:
    """Wait for the guest program to finish; its sections by topic."""
    start = vm.expect(r"==vmcheck:begin:", timeout).start()
    end = vm.expect(r"^==vmcheck:done==$", 60, re.M).start()
    text = vm.console[start:end]
    return {m.group(1): m.group(2) for m in SECTION.finditer(text)}


def report(sections: dict[str, str], vm: Vm) -> dict[str, Any]:
    """/run/initpy/report.json as the guest printed it."""
    try:
        parsed: dict[str, Any] = json.loads(sections["report"])
    except (KeyError, ValueError) as exc:
        raise VmError(f"no readable report.json on the console ({exc}); see {vm.log_path}") from exc
    return parsed


def key_values(text: str, separator: str) -> dict[str, str]:
    """`NAME=VALUE` or `Name:\tvalue` lines as a dict."""
    pairs = (line.partition(separator) for line in text.splitlines() if separator in line)
    return {k.strip(): v.strip() for k, _, v in pairs}
