"""Speed changes that must not change behaviour: hook files that import nothing
heavy, a boot path without dataclasses, bytecode-only hooks, lean pyroute2.

(The SIGCHLD-gated reaper's tests are in test_reaper.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from initpy.runtime.kernel import Kernel
from tests.unit.conftest import HOOKS_DIR


def fresh_python(code: str) -> list[str]:
    """The words `code` prints in a new interpreter without site (as the frozen
    init starts), from the repository, with the venv's packages."""
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(HOOKS_DIR),
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if "-packages" in p)),
    ).stdout.split()


def test_hook_files_import_nothing_heavy() -> None:
    """Loading every hook (PID 1's path to the first state) leaves asyncio,
    pyroute2 and the DHCP client for the states that need them; dataclasses
    (its exec per class) and inspect are not on that path at all."""
    code = (
        "import sys; from initpy.runtime.driver import load_registry; "
        f"load_registry([{str(HOOKS_DIR)!r}]); "
        "print(' '.join(m for m in ('asyncio', 'pyroute2', 'hooks.network.race', 'ssl',"
        " 'concurrent.futures', 'dataclasses', 'inspect') if m in sys.modules))"
    )
    loaded = fresh_python(code)
    assert loaded == []


def test_the_state_machine_brings_no_dataclasses() -> None:
    """Up to the first state (the hooks, the registry, the transitions
    machine and one step of it), the boot creates its records without
    dataclasses; only transitions imports inspect."""
    code = (
        "import sys; from initpy.runtime.driver import Boot, load_registry; "
        "from initpy.runtime.kernel import Kernel; "
        f"boot = Boot(Kernel(watch_orphans=False), load_registry([{str(HOOKS_DIR)!r}])); "
        "boot.trigger('advance'); "
        "print(boot.state, 'dataclasses' in sys.modules)"
    )
    out = fresh_python(code)
    assert out == ["early_mounts", "False"]


def test_lean_pyroute2_skips_the_package_init_and_still_talks_netlink() -> None:
    code = (
        "import sys, logging; from hooks.network.netlink import lean_pyroute2, import_dhcp; "
        "import_dhcp(); "
        # The boot's DHCP client takes pyroute2's messages only: no IPRoute, no client.
        "heavy = [m for m in ('pyroute2.iproute.linux', 'pyroute2.dhcp.client') "
        "if m in sys.modules]; "
        "from pyroute2.iproute.linux import IPRoute; ipr = IPRoute(); "
        "names = [l.get_attr('IFLA_IFNAME') for l in ipr.get_links()]; ipr.close(); "
        "print('lo' in names, 'pyroute2.ndb.main' in sys.modules, "
        "'pyroute2.dhcp.dhcp4msg' in sys.modules, heavy == [], "
        "bool(logging.getLogger('pyroute2').handlers))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "False", "True", "True", "True"]


def test_a_daemon_runs_below_the_boot(tmp_path: Path) -> None:
    from initpy.runtime.kernel import DAEMON_NICE

    seen = tmp_path / "priority"

    def write_priority() -> None:
        seen.write_text(str(os.getpriority(os.PRIO_PROCESS, 0)))

    pid = Kernel(watch_orphans=False).spawn_daemon("initpy-test", write_priority)
    os.waitpid(pid, 0)
    assert int(seen.read_text()) == max(DAEMON_NICE, os.getpriority(os.PRIO_PROCESS, 0))


def test_an_initrd_hook_loads_from_its_bytecode_not_its_source(tmp_path: Path) -> None:
    from initpy.builder.hooks import hook_bytecode, hook_bytecode_path
    from initpy.runtime.hook import load_hook

    hooks = tmp_path / "usr/lib/initpy/hooks"
    hooks.mkdir(parents=True)
    source = hooks / "probe_bytecode.py"
    hook_text = (
        "from initpy.runtime.hook import Hook\n"
        'HOOK = Hook(name="probe_bytecode", description="{}")\n'
    )
    source.write_text(hook_text.format("compiled by mkinitrd"))
    pyc = tmp_path / hook_bytecode_path(source.name).lstrip("/")
    assert hook_bytecode_path("network/netlink.py") == (
        f"/usr/lib/initpy/hooks/network/__pycache__/netlink.{sys.implementation.cache_tag}.pyc"
    )
    pyc.parent.mkdir()
    pyc.write_bytes(hook_bytecode(str(source)))
    assert hook_bytecode(str(source)) == pyc.read_bytes()  # reproducible
    # The loader trusts the bytecode without reading the source's hash: a
    # changed source shows that the .pyc, not a fresh compile, was used.
    source.write_text(hook_text.format("compiled at boot"))
    assert load_hook(str(hooks), "probe_bytecode").description == "compiled by mkinitrd"


# The boot's path, run in a fresh interpreter that refuses what the freeze
# excludes (initpy.builder.frozen_modules.EXCLUDES), as the frozen init would: PID 1's
# imports and every hook file, the transitions machine, the thread pool of
# load_modules, the network states' pyroute2 (IPRoute talks to the kernel) and
# DHCP client, and the rescue's mail through the real Kernel.connect_tcp to a
# host name. ssl is answered by nossl, as in the frozen init (frozen.py).
_BOOT_PATH = """
import socket, sys, threading
from initpy.runtime.frozen import NoSslOnImport
EXCLUDES = sys.argv[1].split()

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if any(name == x or name.startswith(x + ".") for x in EXCLUDES if x != "ssl"):
            raise ImportError(f"excluded from the freeze: {name}")
        return None

sys.meta_path.insert(0, NoSslOnImport())
sys.meta_path.insert(0, Refuse())

srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)

def relay():
    conn, _ = srv.accept()
    lines = conn.makefile("rb")
    conn.sendall(b"220 relay\\r\\n")
    data = False
    for line in lines:
        if data:
            if line == b".\\r\\n":
                data = False
                conn.sendall(b"250 queued\\r\\n")
        elif line[:4].upper() == b"DATA":
            data = True
            conn.sendall(b"354 go on\\r\\n")
        elif line[:4].upper() == b"QUIT":
            conn.sendall(b"221 bye\\r\\n")
            break
        else:
            conn.sendall(b"250 ok\\r\\n")
    conn.close()

threading.Thread(target=relay, daemon=True).start()

import initpy.runtime.entry, initpy.runtime.driver
from transitions import Machine
from initpy.runtime.driver import load_registry
load_registry(["hooks"])
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(2) as pool:
    pool.submit(int).result()
from hooks.network.netlink import import_dhcp
import_dhcp()  # swallows errors: the imports follow again, bare
import hooks.network.race, hooks.network.renewer, pyroute2.dhcp.client, pyroute2.dhcp.hooks
from pyroute2.iproute.linux import IPRoute
ipr = IPRoute()
assert ipr.get_links()
ipr.close()
import smtplib
from initpy.runtime import mail
from initpy.runtime.kernel import Kernel
from initpy.runtime.report import Report
kernel = Kernel(watch_orphans=False)
mail.send(kernel, "localhost", srv.getsockname()[1],
          mail.rescue_message(Report(kernel), "build-1", "admin@example.org"), "build-1")
leaked = sorted(m for m in sys.modules
                if any(m == x or m.startswith(x + ".") for x in EXCLUDES if x != "ssl"))
print("ok", " ".join(leaked))
"""


def test_the_boot_path_imports_nothing_the_freeze_excludes() -> None:
    from initpy.builder.frozen_modules import EXCLUDES

    done = subprocess.run(
        # -S: no site module, so no .pth file imports anything before the
        # refusing finder is in place; site-packages comes by PYTHONPATH.
        [sys.executable, "-S", "-c", _BOOT_PATH, " ".join(EXCLUDES)],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(HOOKS_DIR),
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if "-packages" in p)),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok"]


def test_connect_tcp_refuses_a_host_name_the_idna_codec_would_need() -> None:
    with pytest.raises(OSError, match="not ASCII"):
        Kernel(watch_orphans=False).connect_tcp("bücher.example", 25, 1.0)
