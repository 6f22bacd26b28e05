#!/usr/bin/env python3
"""mkinitrd.py: build buildos-image, buildos-initrd and buildos-buildid.

The command line of the initrd builder; the work is in initpy.builder.mkinitrd.
Run it with the project's virtualenv (.venv/bin/python mkinitrd.py ...), or
as the `mkinitrd` console script.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from initpy.builder.mkinitrd import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
