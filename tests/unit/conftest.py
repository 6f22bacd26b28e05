"""Shared fixtures: a fake kernel in a temporary root, and boot runners."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import types
from collections.abc import Callable, Sequence

import pytest

from initpy.devtools.fake import FakeKernel
from initpy.runtime.driver import Boot
from initpy.runtime.hook import Hook, build_registry
from initpy.runtime.kernel import Halted

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOKS_DIR = os.path.join(REPO, "hooks")


def make_executable(kernel: FakeKernel, path: str, text: str = "#!/bin/sh\n") -> None:
    host = kernel.path(path)
    os.makedirs(os.path.dirname(host), exist_ok=True)
    with open(host, "w") as f:
        f.write(text)
    os.chmod(host, 0o755)


@pytest.fixture
def kernel(tmp_path: os.PathLike[str]) -> FakeKernel:
    k = FakeKernel(root=os.path.join(str(tmp_path), "root"))
    make_executable(k, "/sbin/init")
    return k


def run_boot(kernel: FakeKernel, hooks: Sequence[Hook]) -> Halted:
    """Boot to the end; the fake kernel's reboot or execve ends it."""
    boot = Boot(kernel, build_registry(hooks))
    with pytest.raises(Halted) as ended:
        boot.run()
    return ended.value


def read_report(kernel: FakeKernel) -> dict[str, object]:
    with open(kernel.path("/run/initpy/report.json")) as f:
        data: dict[str, object] = json.load(f)
    return data


def report_warnings(kernel: FakeKernel) -> list[str]:
    """The boot report's warnings, as text."""
    found = read_report(kernel)["warnings"]
    assert isinstance(found, list)
    return [str(w) for w in found]


BootRunner = Callable[[FakeKernel, Sequence[Hook]], Halted]


def hook_module(name: str) -> types.ModuleType:
    """The module of hooks/<name> (file or folder), as the boot imports it."""
    return importlib.import_module(f"hooks.{name}")


# A unit test that asks systemd itself whether it reads a hook's units.
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze"
)


def systemd_verify(folder: str, units: dict[str, str]) -> tuple[int, str]:
    """`systemd-analyze verify` of `units` (name -> text) written into `folder`:
    its exit status and stderr (an unknown key or a bad value is only a
    warning on stderr)."""
    for name, text in units.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(f"./{name}" for name in units)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr


@pytest.fixture(scope="session")
def real_kernel() -> str:
    """The Debian kernel the VM tier boots, fetched now if the cache has none.

    Fetched when the test runs, not when the module is imported: an empty
    cache must never turn these tests into skips.
    """
    done = subprocess.run(
        [os.path.join(REPO, "scripts", "fetch-kernel")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"scripts/fetch-kernel failed:\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1]


def run_mkinitrd(kernel: str, out: str, *options: str) -> subprocess.CompletedProcess[str]:
    """The real mkinitrd (real freeze, cached) for a fetched kernel folder into `out`."""
    return subprocess.run(
        [
            os.path.join(REPO, ".venv", "bin", "python"),
            os.path.join(REPO, "mkinitrd.py"),
            "--kernel",
            os.path.join(kernel, "vmlinuz"),
            "--modules",
            os.path.join(kernel, "modules"),
            "-o",
            out,
            *options,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, SOURCE_DATE_EPOCH="1700000000"),
        check=False,
    )
