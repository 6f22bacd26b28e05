"""Kernel.reap_orphans: PID 1 reaps the orphans it adopts, scanning only after a SIGCHLD.

Real children of the test process stand in for orphans; a zombie that
run() still waits for is never taken from it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from initpy.runtime.kernel import Kernel


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"


def _fork_zombie() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    for _ in range(500):  # the child is a zombie within milliseconds
        if _zombie(pid):
            break
        time.sleep(0.01)
    return pid


@pytest.fixture
def watching_kernel() -> Iterator[Kernel]:
    before = signal.getsignal(signal.SIGCHLD)
    try:
        yield Kernel(watch_orphans=True)
    finally:
        signal.signal(signal.SIGCHLD, before)


def test_reaper_scans_only_after_sigchld(watching_kernel: Kernel) -> None:
    k = watching_kernel
    first = _fork_zombie()
    assert first in k.reap_orphans()
    # A child that dies while SIGCHLD is blocked: no signal, so no scan yet.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        second = _fork_zombie()
        assert k.reap_orphans() == []
        assert _zombie(second)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    # Unblocked, the pending signal runs the handler: the next call reaps it.
    assert second in k.reap_orphans()
    with pytest.raises(ChildProcessError):
        os.waitpid(second, os.WNOHANG)


def test_reaper_leaves_run_children_alone(watching_kernel: Kernel) -> None:
    k = watching_kernel
    assert k.run([sys.executable, "-c", "import sys; sys.exit(5)"]).returncode == 5
    assert k.reap_orphans() == []


@pytest.mark.parametrize("adopted_first", [True, False])
def test_the_reaper_leaves_a_run_child_and_takes_the_orphans_beside_it(
    watching_kernel: Kernel, adopted_first: bool
) -> None:
    """A zombie that run() still waits for is never reaped, whether the
    kernel names it before the orphans (they are then found in /proc) or
    after them."""
    k = watching_kernel
    first, second = _fork_zombie(), _fork_zombie()
    in_flight, orphan = (first, second) if adopted_first else (second, first)
    k.processes.adopt(in_flight)  # as run() does while it waits for its child
    try:
        assert k.reap_orphans() == [orphan]
        assert _zombie(in_flight)
    finally:
        k.processes.release(in_flight)
        os.waitpid(in_flight, 0)
