"""`python -m initpy`: the developers' and operators' tools (initpy.devtools.cli).

PID 1 never comes here: the frozen /init calls initpy.runtime.entry.
"""

import sys

from initpy.devtools.cli import main

if __name__ == "__main__":
    sys.exit(main())
