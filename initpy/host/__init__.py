"""What runs on the booted host after the hand-off, under the OS's python3.

Not PID 1 and never frozen: the monitor hook (hooks/monitor.py) copies
these files and the runtime modules they import (HOST_RUNTIME) into the
image at `initpy.runtime.layout.HOST_PYTHONPATH`, and systemd runs them.
They import the standard library and those runtime modules only
(tests/unit/test_imports.py holds them to it).
"""
