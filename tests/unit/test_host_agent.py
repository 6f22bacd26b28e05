"""initpy.host.agent: the build agent's slot, started again each time it ends, with a backoff.

A stand-in agent (a Python script) records each of its runs in a folder;
the monitor's own tests use it too (test_monitor.py).
"""

from __future__ import annotations

import os
import sys

from initpy.host import agent as agent_slot

STAND_IN_AGENT = """\
import os, sys, time
folder, mode = sys.argv[1], sys.argv[2]
with open(os.path.join(folder, str(os.getpid())), "w") as f:
    f.write(os.environ.get("NOTIFY_SOCKET", "-"))
if mode == "crash":
    sys.exit(3)
time.sleep(120)
"""


def stand_in_agent(top: str, mode: str) -> list[str]:
    script = os.path.join(top, "agent.py")
    with open(script, "w") as f:
        f.write(STAND_IN_AGENT)
    folder = os.path.join(top, "runs")
    os.makedirs(folder, exist_ok=True)
    return [sys.executable, script, folder, mode]


def runs(top: str) -> list[str]:
    return sorted(os.listdir(os.path.join(top, "runs")))


def test_the_agent_is_started_again_each_time_it_ends(tmp_path: os.PathLike[str]) -> None:
    top = str(tmp_path)
    lines: list[str] = []
    agent = agent_slot.Agent(
        stand_in_agent(top, "crash"), lines.append, env={"NOTIFY_SOCKET": "/run/x"}
    )
    assert agent.tick(0.0) == 0.0 + agent_slot.CHECK_EVERY and agent.starts == 1
    assert agent.process is not None
    agent.process.wait(30)
    assert agent.tick(0.5) == 1.5  # ended: back in MIN_BACKOFF
    assert "ended: exit 3 after 0 s; starting it again in 1 s" in lines[-1]
    assert agent.tick(1.0) == 1.5 and agent.starts == 1  # not yet
    agent.tick(1.5)
    assert agent.starts == 2 and agent.process is not None
    agent.process.wait(30)
    assert agent.tick(2.0) == 4.0  # the backoff doubled
    agent.tick(4.0)
    assert agent.process is not None
    agent.process.wait(30)
    agent.tick(100.0)  # it had run 96 s: stable, so the backoff is back to 1 s
    assert agent.restart_at == 101.0
    assert len(runs(top)) == 3
    for run in runs(top):  # the monitor's systemd socket is not the agent's
        with open(os.path.join(top, "runs", run)) as f:
            assert f.read() == "-"


def test_a_running_agent_is_left_alone_and_stopped_with_the_monitor(
    tmp_path: os.PathLike[str],
) -> None:
    top = str(tmp_path)
    agent = agent_slot.Agent(stand_in_agent(top, "run"), lambda line: None)
    for now in range(10):
        agent.tick(float(now))
    assert agent.starts == 1
    process = agent.process
    assert process is not None and process.poll() is None
    assert (
        agent.describe()
        == f"agent {os.path.basename(sys.executable)} running (pid {process.pid}, start 1)"
    )
    agent.stop()
    assert process.returncode == -15 and agent.process is None


def test_an_agent_that_is_not_there_is_tried_again_later(tmp_path: os.PathLike[str]) -> None:
    lines: list[str] = []
    agent = agent_slot.Agent([os.path.join(str(tmp_path), "no-agent")], lines.append)
    assert agent.tick(0.0) == 1.0 and agent.tick(1.0) == 3.0
    assert agent.starts == 0 and "cannot start: No such file or directory" in lines[0]
