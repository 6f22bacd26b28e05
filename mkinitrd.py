#!/usr/bin/env python3
"""mkinitrd.py: build buildos-image, buildos-initrd and buildos-buildid.

A shim for a checkout: the same command as the `mkinitrd` console script
(initpy.builder.mkinitrd_cli), runnable as `.venv/bin/python mkinitrd.py ...`
or with any python3 that has initpy's dependencies.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from initpy.builder.mkinitrd_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
