"""The load_modules state on the fake kernel: order, report, failures."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hooks import modules
from initpy.devtools.fake import FakeKernel
from initpy.runtime import layout
from initpy.runtime.driver import read_manifest
from initpy.runtime.hook import BootContext, BootFailure, Milestone
from initpy.runtime.report import Report

VERSION = "6.1.0-test"
LISTING = (
    "virtio\tkernel/virtio.ko\t\n"
    "failover\tkernel/failover.ko\t\n"
    "virtio_blk\tkernel/virtio_blk.ko\tvirtio\n"
    "net_failover\tkernel/net_failover.ko\tfailover\n"
    "virtio_net\tkernel/virtio_net.ko\tnet_failover,failover,virtio\n"
)


def _machine(
    tmp_path: str, listing: str = LISTING, failures: dict[str, dict[str, int]] | None = None
) -> BootContext:
    kernel = FakeKernel(root=os.path.join(tmp_path, "root"), failures=failures or {})
    kernel.write_text("/proc/sys/kernel/osrelease", VERSION + "\n")
    packed = []
    for line in listing.splitlines():
        name, path, needs = line.split("\t")
        packed.append(layout.PackedModule(name, path, tuple(n for n in needs.split(",") if n)))
    manifest = layout.Manifest("test-build", ("modules",), VERSION, tuple(packed))
    kernel.mkdir(os.path.dirname(layout.MANIFEST))
    kernel.write_text(layout.MANIFEST, manifest.to_json().decode())
    kernel.mkdir(f"/lib/modules/{VERSION}")
    kernel.mkdir("/sys/module")
    return BootContext(kernel=kernel, report=Report(kernel), manifest=read_manifest(kernel))


def _load(ctx: BootContext) -> str | None:
    (state,) = modules.HOOK.states
    assert state.name == "load_modules" and state.provides == (Milestone.MODULES,)
    return state.run(ctx)


def test_modules_load_after_what_they_need_and_are_reported(tmp_path: Path) -> None:
    ctx = _machine(str(tmp_path))
    detail = _load(ctx)
    kernel = ctx.kernel
    assert isinstance(kernel, FakeKernel)
    loaded = [str(c[1]).rsplit("/", 1)[1] for c in kernel.syscalls("finit_module")]
    assert sorted(loaded) == sorted(
        ["virtio.ko", "failover.ko", "virtio_blk.ko", "net_failover.ko", "virtio_net.ko"]
    )
    for before, after in (
        ("virtio.ko", "virtio_blk.ko"),
        ("failover.ko", "net_failover.ko"),
        ("net_failover.ko", "virtio_net.ko"),
        ("virtio.ko", "virtio_net.ko"),
    ):
        assert loaded.index(before) < loaded.index(after)
    assert all(
        str(c[1]).startswith(f"/lib/modules/{VERSION}/kernel/")
        for c in kernel.syscalls("finit_module")
    )
    assert [m["name"] for m in ctx.report.modules] == [
        "virtio",
        "failover",
        "virtio_blk",
        "net_failover",
        "virtio_net",
    ]
    assert {m["result"] for m in ctx.report.modules} == {"loaded"}
    assert all(isinstance(m["ms"], int) for m in ctx.report.modules)
    assert any("load_modules: 5 loaded, 0 already present" in line for line in kernel.console_lines)
    assert detail is not None and detail.startswith("5 modules")
    # No /sbin/modprobe in this root: the kernel autoloads through busybox's.
    assert kernel.read_text("/proc/sys/kernel/modprobe") == "/usr/lib/initpy/bin/modprobe\n"


def test_a_failed_module_names_itself_and_skips_its_dependents(tmp_path: Path) -> None:
    path = f"/lib/modules/{VERSION}/kernel/failover.ko"
    ctx = _machine(str(tmp_path), failures={"finit_module": {path: errno.ENOEXEC}})
    with pytest.raises(BootFailure) as failure:
        _load(ctx)
    assert "cannot load module failover (Exec format error)" in failure.value.reason
    assert "net_failover, virtio_net" in failure.value.reason
    assert "--modules of kernel 6.1.0-test" in failure.value.fix
    results = {m["name"]: m["result"] for m in ctx.report.modules}
    assert results == {
        "virtio": "loaded",
        "failover": "failed",
        "virtio_blk": "loaded",
        "net_failover": "skipped",
        "virtio_net": "skipped",
    }


def test_already_loaded_or_built_in_is_not_an_error(tmp_path: Path) -> None:
    path = f"/lib/modules/{VERSION}/kernel/virtio.ko"
    ctx = _machine(str(tmp_path), failures={"finit_module": {path: errno.EEXIST}})
    _load(ctx)
    results = {m["name"]: m["result"] for m in ctx.report.modules}
    assert results["virtio"] == "already loaded"
    # A module the kernel has built in shows in /sys/module; the file is refused.
    ctx = _machine(
        str(tmp_path / "second"),
        listing="crc32c\tkernel/crc32c.ko\t\n",
        failures={"finit_module": {f"/lib/modules/{VERSION}/kernel/crc32c.ko": errno.ENOENT}},
    )
    ctx.kernel.mkdir("/sys/module/crc32c")
    _load(ctx)
    assert [(m["name"], m["result"]) for m in ctx.report.modules] == [("crc32c", "already loaded")]


def test_modules_of_another_kernel_are_a_rescue_with_the_fix(tmp_path: Path) -> None:
    ctx = _machine(str(tmp_path))
    ctx.kernel.write_text("/proc/sys/kernel/osrelease", "6.9.9-other\n")
    with pytest.raises(BootFailure) as failure:
        _load(ctx)
    assert "this kernel is 6.9.9-other" in failure.value.reason
    assert VERSION in failure.value.reason
    assert "--modules of kernel 6.9.9-other" in failure.value.fix


def test_no_module_list_is_fine(tmp_path: Path) -> None:
    ctx = _machine(str(tmp_path))
    ctx.manifest = None
    ctx.kernel.mkdir("/sbin")
    ctx.kernel.write_text("/sbin/modprobe", "")
    assert "no modules" in (_load(ctx) or "")
    assert ctx.kernel.read_text("/proc/sys/kernel/modprobe") == "/sbin/modprobe\n"
