"""Tools for people, never in an initrd: the `initpy` command (walk, diagram,
params), the fake kernel with its scripted disks and network, and the
generator of docs/states.md.
"""

import os


def repo_hooks() -> str:
    """The repository's hooks/ folder."""
    return os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "hooks"
    )
