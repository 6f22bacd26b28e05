"""The hooks' modules loaded while Python starts (runtime.preload); load_modules' take-over."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from hooks import modules
from initpy.devtools.fake import FakeKernel
from initpy.runtime import layout, preload
from initpy.runtime.driver import read_manifest
from initpy.runtime.hook import PRELOADED, BootContext, BootFailure
from initpy.runtime.report import Report

VERSION = "6.1.0-test"
FOLDER = f"/lib/modules/{VERSION}"
# virtio_net is named by a hook; virtio_blk is a driver only (no index: loaded as packed).
PACKED = (
    layout.PackedModule("virtio", "kernel/virtio.ko"),
    layout.PackedModule("failover", "kernel/failover.ko"),
    layout.PackedModule("virtio_blk", "kernel/virtio_blk.ko", ("virtio",)),
    layout.PackedModule("net_failover", "kernel/net_failover.ko", ("failover",)),
    layout.PackedModule(
        "virtio_net",
        "kernel/virtio_net.ko",
        ("net_failover", "failover", "virtio"),
        hooks=("network",),
    ),
)


def _kernel(
    tmp_path: Path,
    cmdline: str = "",
    failures: dict[str, dict[str, int]] | None = None,
    kind: type[FakeKernel] = FakeKernel,
) -> FakeKernel:
    kernel = kind(
        root=str(tmp_path / "root"), cmdline=cmdline, failures=failures or {}, cpu_count=2
    )
    kernel.write_text("/proc/sys/kernel/osrelease", VERSION + "\n")
    kernel.mkdir(os.path.dirname(layout.MANIFEST))
    manifest = layout.Manifest("test-build", ("modules", "network"), VERSION, PACKED)
    kernel.write_text(layout.MANIFEST, manifest.to_json().decode())
    kernel.mkdir(FOLDER)
    kernel.mkdir("/sys/module")
    return kernel


def _finits(kernel: FakeKernel) -> list[str]:
    return [str(c[1]).rsplit("/", 1)[1] for c in kernel.syscalls("finit_module")]


def _load_modules(kernel: FakeKernel, ready: preload.Preload | None) -> BootContext:
    ctx = BootContext(kernel=kernel, report=Report(kernel), manifest=read_manifest(kernel))
    if ready is not None:
        ctx.put(PRELOADED, ready.wait)
    (state,) = modules.HOOK.states
    state.run(ctx)
    return ctx


def test_the_hooks_modules_load_first_and_load_modules_takes_them_over(tmp_path: Path) -> None:
    kernel = _kernel(tmp_path)
    ready = preload.prepare(kernel)
    assert ready is not None
    ready.run()
    # Only what a hook named, each after what it needs; the driver is load_modules' job.
    assert _finits(kernel) == ["failover.ko", "net_failover.ko", "virtio.ko", "virtio_net.ko"]
    assert set(ready.wait()) == {"failover", "net_failover", "virtio", "virtio_net"}
    kernel.calls.clear()
    ctx = _load_modules(kernel, ready)
    # Not loaded a second time: only the driver the preload left.
    assert _finits(kernel) == ["virtio_blk.ko"]
    results = {m["name"]: m["result"] for m in ctx.report.modules}
    assert results == dict.fromkeys(
        ["virtio", "failover", "virtio_blk", "net_failover", "virtio_net"], "loaded"
    )
    assert any(
        "4 of them" in line and "while Python started" in line for line in kernel.console_lines
    )


def test_a_module_that_fails_early_is_left_to_load_modules_with_its_dependents(
    tmp_path: Path,
) -> None:
    failing = f"{FOLDER}/kernel/failover.ko"
    kernel = _kernel(tmp_path, failures={"finit_module": {failing: errno.ENOEXEC}})
    ready = preload.prepare(kernel)
    assert ready is not None
    ready.run()
    assert _finits(kernel) == ["failover.ko", "virtio.ko"]  # net_failover and virtio_net wait
    assert ready.wait() == {"virtio": ready.loaded["virtio"]}
    # load_modules tries the rest itself, and names the failure as it always did.
    with pytest.raises(BootFailure) as failure:
        _load_modules(kernel, ready)
    assert "cannot load module failover (Exec format error)" in failure.value.reason


def test_one_cpu_a_break_shell_or_a_missing_module_folder_loads_nothing_early(
    tmp_path: Path,
) -> None:
    kernel = _kernel(tmp_path / "break", cmdline="initpy.break=load_modules")
    assert preload.prepare(kernel) is None
    kernel = _kernel(tmp_path / "one")
    assert isinstance(kernel, FakeKernel)
    kernel.cpu_count = 1  # the loading would only share the CPU with Python's start
    assert preload.prepare(kernel) is None
    kernel = _kernel(tmp_path / "folder")
    shutil.rmtree(kernel.path(FOLDER))
    assert preload.prepare(kernel) is None
    assert kernel.syscalls("finit_module") == []


class ProcLessKernel(FakeKernel):
    """A root whose /proc is an empty folder until proc is mounted there (PID 1's start)."""

    def mount(
        self, source: str, target: str, fstype: str, flags: int = 0, options: str = ""
    ) -> None:
        super().mount(source, target, fstype, flags, options)
        if fstype == "proc":
            self.write_text("/proc/cmdline", self.cmdline + "\n")


def test_proc_is_mounted_as_early_mounts_would(tmp_path: Path) -> None:
    kernel = _kernel(tmp_path, kind=ProcLessKernel)
    os.unlink(kernel.path("/proc/cmdline"))
    assert preload.prepare(kernel) is not None
    source, target, fstype, _mode, options, flags = preload.PROC_MOUNT
    assert kernel.syscalls("mount") == [("mount", source, target, fstype, flags, options)]
