"""Shared fixtures: a fake kernel in a temporary root, and boot runners."""

from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Callable, Sequence

import pytest

from initpy.boot import Boot, Halted
from initpy.fake import FakeKernel
from initpy.hook import Hook, build_registry

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


BootRunner = Callable[[FakeKernel, Sequence[Hook]], Halted]


def hook_module(name: str) -> types.ModuleType:
    """Import hooks/<name>.py as the boot does, to test its functions directly."""
    from initpy.hook import load_hook_file

    load_hook_file(os.path.join(HOOKS_DIR, f"{name}.py"))
    return sys.modules[f"initpy_hooks.{name}"]
