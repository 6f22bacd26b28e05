"""initpy.host.agent: initpy-agent execs the operator's agent with its words, or says why not.

Run as systemd runs it (`python3 -m initpy.host.agent`), on the file PID 1
writes (initpy.runtime.etc.env_file), with a stand-in agent that reports
its pid, arguments, folder and environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from initpy.runtime.etc import env_file
from tests.unit.conftest import REPO

STAND_IN_AGENT = """\
import json, os, sys
print(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "cwd": os.getcwd(),
                  "env": dict(os.environ)}))
"""


def initpy_agent(folder: Path, agent: str) -> tuple[int, subprocess.CompletedProcess[str]]:
    """initpy-agent on an agent.env saying `agent`, as its unit runs it: its pid, how it ended."""
    agent_env = folder / "agent.env"
    agent_env.write_text(env_file({"INITPY_MONITOR_AGENT": agent}))
    process = subprocess.Popen(
        [sys.executable, "-s", "-B", "-P", "-m", "initpy.host.agent", "--agent-env", agent_env],
        cwd=folder,
        env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"], "BUILD_NOTE": "kept"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate(timeout=60)
    return process.pid, subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_the_agent_takes_initpy_agents_place_with_its_quoted_arguments(tmp_path: Path) -> None:
    script = tmp_path / "stand-in agent.py"
    script.write_text(STAND_IN_AGENT)
    command = f"{sys.executable} '{script}' --fleet pxe-test --name 'build host'"
    pid, done = initpy_agent(tmp_path, command)
    assert done.returncode == 0, done.stderr
    ran = json.loads(done.stdout)
    # The same process: systemd's main process is the agent itself.
    assert ran["pid"] == pid
    assert ran["argv"] == ["--fleet", "pxe-test", "--name", "build host"]
    assert ran["cwd"] == str(tmp_path)
    # The unit's environment, less the path that found initpy.
    assert ran["env"]["BUILD_NOTE"] == "kept" and "PYTHONPATH" not in ran["env"]
    assert done.stderr.startswith(f"initpy-agent: running {sys.executable} ")
    assert "'build host'" in done.stderr


def test_an_agent_that_is_not_there_is_one_error_and_a_hint(tmp_path: Path) -> None:
    _pid, done = initpy_agent(tmp_path, f"{tmp_path}/no-agent --verbose")
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    missing = f"{tmp_path}/no-agent: No such file or directory"
    assert f"initpy-agent: error: cannot run {missing}" in lines
    assert any(line.startswith("initpy-agent: hint: initpy.monitor.agent must") for line in lines)


def test_a_command_line_that_does_not_split_is_named_with_the_fix(tmp_path: Path) -> None:
    _pid, done = initpy_agent(tmp_path, "/opt/agent --name 'build host")
    assert done.returncode == 1
    assert 'INITPY_MONITOR_AGENT="/opt/agent --name \'build host": No closing quotation' in (
        done.stderr
    )
    assert 'hint: set initpy.monitor.agent="PROGRAM ARGS"' in done.stderr
