"""pyroute2 without its package __init__: the network hook's one way to import it."""

from __future__ import annotations

import sys


def lean_pyroute2() -> None:
    """Let `import pyroute2.<sub>` skip the package's own __init__.

    That __init__ imports every pyroute2 API (NDB with sqlite3, IPDB,
    conntrack, ipset, nl80211, plan9, ...) to re-export them: about a third
    of the import time (about 50 ms natively, 0.75 s under TCG), for names
    the boot never uses. The package is put in sys.modules as an empty module
    with its real __path__, so its submodules import as usual. pyroute2's
    logger gets its NullHandler from pyroute2.config.log, as the __init__
    would (else its warnings reach the console through logging's last
    resort). Afterwards, take names from submodules (pyroute2.iproute.linux),
    never from the package.
    """
    if "pyroute2" in sys.modules:
        return
    import importlib.util

    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed: the state that needs it says so
    sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
    try:
        import pyroute2.config.log  # noqa: F401
    except Exception:  # the import system cannot do it here: take the whole package
        for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
            del sys.modules[name]
