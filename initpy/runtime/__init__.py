"""What runs as PID 1: the engine (driver, rescue, the hand-off), the hook
contract and registry, the kernel seam (kernel.py, with processes.py and
sockets.py), the kernel's wire formats (uevent.py), the command line, the
report, run() and the builder's contract (layout). It imports neither
initpy.builder nor initpy.devtools, and it is all that the freeze puts into
an initrd (with the hooks beside it).
"""
