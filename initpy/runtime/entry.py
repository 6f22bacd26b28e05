"""PID 1's entry: what the frozen /init calls, and nothing else does.

The kernel starts init with the words of its command line it did not
understand as argv (`splash`, `single`, the words after `--`). They are
never parsed as options here: the boot reads /proc/cmdline itself and
hands the arguments for init on to the program it execs. Outside PID 1
this refuses to run, since the boot mounts, execs and reboots.

driver.main never returns; should it ever, or raise, PID 1 still does not
exit (the kernel would panic): it reboots, and retries forever.
"""

from __future__ import annotations

import os
import sys
import time

from initpy.runtime.driver import main as boot_main
from initpy.runtime.kernel import Kernel
from initpy.runtime.layout import DEFAULT_PATH


def main() -> None:
    if os.getpid() != 1:
        sys.stderr.write(
            "initpy: this is the initrd's /init and runs only as PID 1 (it mounts, execs "
            "and reboots); to try a boot without a machine, run `initpy walk`\n"
        )
        sys.exit(2)
    # The kernel starts init with no PATH, and Python's fallback lacks
    # the sbin folders: every command a hook runs by name needs one.
    os.environ.setdefault("PATH", DEFAULT_PATH)
    kernel = Kernel()
    try:
        boot_main(kernel)
    except BaseException:  # noqa: B036 - PID 1 must not exit
        pass
    while True:  # the last resort: driver.main broke its promise
        try:
            kernel.reboot("reboot")
        except BaseException:  # noqa: B036
            pass
        try:
            time.sleep(10)
        except BaseException:  # noqa: B036
            pass
