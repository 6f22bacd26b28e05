"""The full image booted with a stand-in toolchain, up to a running agent.

One place for tests/vm/test_toolchain.py and benchmarks/full_image.py:

- `serve(folder)`: the stand-in toolchain (tests/unit/standin_toolchain.py,
  its `b` built from C++ with the image's c++) published in a folder that
  QEMU's user network serves at tftp://10.0.2.2/; returns its key;
- `boot_args()`: the command-line words that point initpy-toolchain at it;
- `wait_for_agent(host)`: until bbot-agent.service is active, or a clear
  failure with initpy-toolchain's journal.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from tests.unit import standin_toolchain as standin

from .fullos import Host

URL = "tftp://10.0.2.2/toolchain/toolchain.sha256"
TRUST = ":".join(f"{i:02X}" for i in range(32))
# Under TCG: fetch over QEMU's TFTP, tar, c++ with <iostream>, cc for the agent.
AGENT_TIMEOUT = 600


def serve(folder: Path) -> str:
    """Publish the stand-in toolchain in `folder`/toolchain; the toolchain's key."""
    files = standin.publish(str(folder / "toolchain"), install=standin.CXX_INSTALL_SH)
    return hashlib.sha256(files["toolchain.sha256"]).hexdigest()


def boot_args(poll: int | None = None) -> list[str]:
    """The words that name the served toolchain; `poll`: the monitor's interval (s)."""
    words = [f"buildos.toolchain_url={URL}", f"buildos.toolchain_trust={TRUST}"]
    return words + ([f"initpy.monitor.interval={poll}"] if poll is not None else [])


def wait_for_agent(host: Host, timeout: float = AGENT_TIMEOUT) -> None:
    """Until bbot-agent.service is active; fails with the install's journal."""
    deadline = time.monotonic() + timeout
    while True:
        done = host.ssh.run("systemctl is-active bbot-agent", check=False)
        if done.stdout.strip() == "active":
            return
        state = host.ssh.run("systemctl is-active initpy-toolchain", check=False).stdout.strip()
        if state == "failed" or time.monotonic() > deadline:
            journal = host.ssh.run(
                "journalctl -b --no-pager -o cat -u initpy-toolchain", check=False
            )
            raise AssertionError(f"no running agent (initpy-toolchain {state}):\n{journal.stdout}")
        time.sleep(5)
