"""What runs on the booted host after the hand-off, under the OS's python3.

Not PID 1 and never frozen: the monitor hook (hooks/monitor.py) copies
these files, initpy.runtime.layout and tftpy into the image at
`initpy.runtime.layout.HOST_PYTHONPATH`, and systemd runs them as the
`build` user. They import the standard library, tftpy and
initpy.runtime.layout only (tests/unit/test_imports.py holds them to it).
"""
