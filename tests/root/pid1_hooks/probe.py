"""A hook for tests/root/test_pid1.py: its one state does what `initpy.probe=` says.

Built into the root tier's initrd only (mkinitrd --hooks-dir), so that the
real PID 1 can meet a state that fails in each way a state can: an error,
SystemExit, KeyboardInterrupt, or a long wait for a signal to arrive in.
"""

from __future__ import annotations

from typing import Any

from initpy.runtime import cmdline
from initpy.runtime.cmdline import Parameter
from initpy.runtime.hook import BootContext, Hook, State

PROBE: Parameter[Any] = Parameter(
    "initpy.probe",
    cmdline.choice("none", "raise", "exit", "interrupt", "sleep"),
    "none",
    "what the probe state does (tests only)",
    "initpy.probe=sleep",
)


def probe(ctx: BootContext) -> str:
    what = ctx.value(PROBE)
    if what == "raise":
        raise RuntimeError("the probe failed on purpose")
    if what == "exit":
        raise SystemExit(3)
    if what == "interrupt":
        raise KeyboardInterrupt
    if what == "sleep":
        ctx.say("probe: sleeping for 120 s")
        ctx.kernel.sleep(120)
    return f"probe: {what}"


HOOK = Hook(
    name="probe",
    description="a state that fails on request (root tier tests)",
    states=(State("probe", probe, "does what initpy.probe= says"),),
    parameters=(PROBE,),
)
