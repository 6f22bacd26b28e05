"""initpy-agent: run the operator's build agent (`initpy.monitor.agent`) in its own unit.

`initpy-agent.service` (hooks/monitor.py) runs this as `build` in /build,
in a build agent's sandbox, only when PID 1 left the agent's command line
in `/etc/initpy/agent.env`. It splits that line into words as a shell
would (initpy.host.settings.load_agent: quotes group words; the hook
checked at boot that it splits) and execs the program: the agent takes
this process's place, so systemd watches it as the unit's main process,
starts it again whenever it ends (Restart=always, RestartSec=, no start
limit) and stops it with the unit. A program that is not there, or not
executable, is one error line in the journal (`-t initpy-agent`) and a
failed start, tried again after RestartSec.

The agent shares nothing with initpy-monitor, which runs under a uid of
its own: it cannot signal the monitor, nor write its runtime folder.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping

from initpy.cli import DEBUG_FLAG, die, handle
from initpy.host.settings import AGENT_ENV, load_agent

# What found this module: not the agent's to inherit.
OWN_VARIABLES = ("PYTHONPATH",)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """initpy-agent's command: it does not come back unless the agent cannot start."""
    return handle("initpy-agent", lambda args: _main(args, env), argv)


def _main(argv: list[str], env: Mapping[str, str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="initpy-agent",
        description="Run the build agent that initpy.monitor.agent names, in this process.",
    )
    parser.add_argument("--agent-env", default=AGENT_ENV, help="default: %(default)s")
    parser.add_argument(DEBUG_FLAG, action="store_true", help="tracebacks for errors")
    args = parser.parse_args(argv)
    try:
        command = load_agent(args.agent_env)
    except ValueError as exc:
        die(str(exc), 'set initpy.monitor.agent="PROGRAM ARGS" on the kernel command line')
    agent_env = {
        k: v for k, v in (os.environ if env is None else env).items() if k not in OWN_VARIABLES
    }
    print(f"initpy-agent: running {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
        os.execve(command[0], command, agent_env)
    except OSError as exc:
        die(
            f"cannot run {command[0]}: {exc.strerror or exc}",
            "initpy.monitor.agent must name a program of the image that the build user may run",
        )


if __name__ == "__main__":
    sys.exit(main())
