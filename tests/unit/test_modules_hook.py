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
from initpy.runtime.hook import DRIVERLESS, BootContext, BootFailure, Milestone
from initpy.runtime.report import Report
from initpy.runtime.uevent import Uevent

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


# -- drivers from the devices' modaliases ------------------------------------------------

HW_VERSION = VERSION
HW_MODULES = (
    layout.PackedModule("btrfs", "kernel/btrfs.ko", (), (), ("storage",)),
    layout.PackedModule("crct10dif_pclmul", "kernel/pclmul.ko"),
    layout.PackedModule(
        "crc_t10dif", "kernel/crc.ko", ("crct10dif_pclmul",), ("crct10dif_pclmul",)
    ),
    layout.PackedModule("nvme", "kernel/nvme.ko", ("crc_t10dif",)),
    layout.PackedModule("e1000", "kernel/e1000.ko"),
    layout.PackedModule("usb_storage", "kernel/usb-storage.ko"),
    layout.PackedModule("ahci", "kernel/ahci.ko"),  # packed, but no device asks
)
HW_ALIASES = [
    ("pci:v00008086d0000100Esv*", "e1000"),
    ("pci:v*d*sv*sd*bc01sc08i02*", "nvme"),
    ("pci:v*d*sv*sd*bc01sc06i01*", "ahci"),
    ("usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*", "usb_storage"),
]
E1000 = "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"
NVME = "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"
USB_DISK = "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00"


def _hardware(tmp_path: str, failures: dict[str, dict[str, int]] | None = None) -> BootContext:
    kernel = FakeKernel(root=os.path.join(tmp_path, "root"), failures=failures or {})
    kernel.write_text("/proc/sys/kernel/osrelease", HW_VERSION + "\n")
    manifest = layout.Manifest("b", ("modules", "storage"), HW_VERSION, HW_MODULES, "generic")
    kernel.mkdir(os.path.dirname(layout.MANIFEST))
    kernel.write_text(layout.MANIFEST, manifest.to_json().decode())
    index = layout.AliasIndex.build(HW_VERSION, HW_ALIASES)
    kernel.write_text(layout.MODALIAS_INDEX, index.to_json().decode())
    kernel.mkdir(f"/lib/modules/{HW_VERSION}")
    kernel.mkdir("/sys/module")
    for slot, alias, pci_class in (
        ("0000:00:02.0", E1000, "0x020000"),
        ("0000:00:05.0", NVME, "0x010802"),
    ):
        kernel.mkdir(f"/sys/bus/pci/devices/{slot}")
        kernel.write_text(f"/sys/bus/pci/devices/{slot}/modalias", alias + "\n")
        kernel.write_text(f"/sys/bus/pci/devices/{slot}/class", pci_class + "\n")
    return BootContext(kernel=kernel, report=Report(kernel), manifest=read_manifest(kernel))


def _loaded(kernel: FakeKernel) -> list[str]:
    return [str(c[1]).rsplit("/", 1)[1] for c in kernel.syscalls("finit_module")]


def test_the_devices_modaliases_choose_the_drivers_and_the_report_says_why(
    tmp_path: Path,
) -> None:
    path = f"/lib/modules/{HW_VERSION}/kernel/pclmul.ko"
    ctx = _hardware(str(tmp_path), failures={"finit_module": {path: errno.ENODEV}})
    detail = _load(ctx) or ""
    kernel = ctx.kernel
    assert isinstance(kernel, FakeKernel)
    loaded = _loaded(kernel)
    assert "ahci.ko" not in loaded and "usb-storage.ko" not in loaded  # no device asked
    assert loaded.index("crc.ko") < loaded.index("nvme.ko")
    why = {m["name"]: (m["result"], m["why"]) for m in ctx.report.modules}
    assert why == {
        "btrfs": ("loaded", "hook storage"),
        "e1000": ("loaded", "device pci/0000:00:02.0"),
        "crct10dif_pclmul": ("failed", "needed by nvme"),  # an optional softdep: fine
        "crc_t10dif": ("loaded", "needed by nvme"),
        "nvme": ("loaded", "device pci/0000:00:05.0"),
    }
    assert ctx.report.warnings == []
    assert "2 for devices, 1 named by hooks" in detail
    # The uevent loader runs in a thread of its own, until the hand-off.
    assert "initpy-uevents" in kernel.threads


def test_a_late_device_gets_its_driver_from_its_uevent(tmp_path: Path) -> None:
    ctx = _hardware(str(tmp_path))
    kernel = ctx.kernel
    assert isinstance(kernel, FakeKernel)
    devpath = "/devices/pci0000:00/0000:00:03.0/usb2/2-1/2-1:1.0"
    kernel.uevent_script = [
        [],  # nothing announced while load_modules runs
        [Uevent("add", devpath, "usb", {"MODALIAS": USB_DISK})],
        [Uevent("bind", devpath, "usb", {"MODALIAS": USB_DISK})],
    ]
    _load(ctx)
    assert "usb-storage.ko" not in _loaded(kernel)
    follower = kernel.threads["initpy-uevents"]
    stopped: list[str] = []
    ctx.on_exit(lambda: stopped.append("stopped"))
    # Run the thread's loop for the scripted events, then hand off.
    runner = follower.__self__  # type: ignore[attr-defined]
    assert runner.step(1.0) == ["usb_storage"]
    assert runner.step(1.0) == []  # `bind` repeats the MODALIAS: nothing new
    assert _loaded(kernel)[-1] == "usb-storage.ko"
    assert ctx.report.modules[-1]["why"] == f"device {devpath}"
    ctx.exiting()
    assert stopped == ["stopped"] and runner.stop.is_set()


def test_a_driverless_nic_is_named_for_the_network_rescue(tmp_path: Path) -> None:
    ctx = _hardware(str(tmp_path))
    _load(ctx)
    explain = ctx.get(DRIVERLESS, None)
    assert explain is not None
    # Nothing bound the fake e1000 (no driver link): it is named, as packed but not taking it.
    text = explain("network")
    assert "Ethernet controller at PCI 0000:00:02.0" in text
    assert "the initrd's e1000 did not take it" in text
    ctx.kernel.mkdir("/sys/bus/pci/devices/0000:00:02.0/driver")
    assert explain("network") == ""


def test_a_device_announced_during_load_modules_gets_its_driver_before_the_hooks_modules(
    tmp_path: Path,
) -> None:
    # virtio_pci announces the NIC and disks behind it: their drivers load
    # in the state, before the modules hooks name (btrfs), not after it.
    ctx = _hardware(str(tmp_path))
    kernel = ctx.kernel
    assert isinstance(kernel, FakeKernel)
    devpath = "/devices/pci0000:00/0000:00:03.0/usb2/2-1/2-1:1.0"
    kernel.uevent_script = [[Uevent("add", devpath, "usb", {"MODALIAS": USB_DISK})]]
    _load(ctx)
    loaded = _loaded(kernel)
    assert loaded.index("usb-storage.ko") < loaded.index("btrfs.ko")
    assert loaded.index("e1000.ko") < loaded.index("btrfs.ko")
    why = {m["name"]: m["why"] for m in ctx.report.modules}
    assert why["usb_storage"] == f"device {devpath}"
    assert any(
        line.startswith("initpy: load_modules: usb_storage loaded (device ")
        for line in kernel.console_lines
    )


def _with_cpus(ctx: BootContext, cpus: int) -> BootContext:
    assert isinstance(ctx.kernel, FakeKernel)
    ctx.kernel.cpu_count = cpus
    return ctx


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_one_thread_per_cpu_loads_the_same_way(tmp_path: Path, cpus: int) -> None:
    # One CPU: no pool, the plan's order in the state's own thread; more: threads.
    path = f"/lib/modules/{VERSION}/kernel/failover.ko"
    ctx = _with_cpus(
        _machine(str(tmp_path), failures={"finit_module": {path: errno.ENOEXEC}}), cpus
    )
    with pytest.raises(BootFailure):
        _load(ctx)
    results = {m["name"]: m["result"] for m in ctx.report.modules}
    assert results == {
        "virtio": "loaded",
        "failover": "failed",
        "virtio_blk": "loaded",
        "net_failover": "skipped",
        "virtio_net": "skipped",
    }
    ctx = _with_cpus(_machine(str(tmp_path / "again")), cpus)
    _load(ctx)
    threads = min(cpus, modules.WORKERS)
    assert any(
        "load_modules: 5 loaded, 0 already present or failed, " in line
        and line.endswith(f"in {threads} thread{'s' if threads > 1 else ''}")
        for line in ctx.kernel.console_lines  # type: ignore[attr-defined]
    )


# -- Secure Boot's lockdown: a module refused for its signature ---------------------------

ELF_BODY = b"\x7fELF" + b"\0" * 60
SIGNED = ELF_BODY + b"PKCS7..." + b"\0" * 8 + b"\0\0\0\x08" + layout.MODULE_SIGNATURE_MAGIC


def _refusing(tmp_path: Path, relpath: str, err: int, data: bytes) -> BootContext:
    """The hardware machine, whose kernel answers `err` to the module file `relpath` (`data`)."""
    path = f"/lib/modules/{HW_VERSION}/{relpath}"
    ctx = _hardware(str(tmp_path), failures={"finit_module": {path: err}})
    ctx.kernel.mkdir(os.path.dirname(path))
    ctx.kernel.write_atomic(path, data)
    return ctx


def test_an_unsigned_driver_refused_under_lockdown_is_named_with_why(tmp_path: Path) -> None:
    # The kernel's lockdown answers EPERM to an unsigned module; the errno alone
    # reads "Operation not permitted", so the module's file says which case it is.
    ctx = _refusing(tmp_path, "kernel/e1000.ko", errno.EPERM, ELF_BODY)
    _load(ctx)
    entry = next(m for m in ctx.report.modules if m["name"] == "e1000")
    assert entry["result"] == "failed"
    assert str(entry["error"]).startswith("refused by the kernel: the module carries no signature")
    (warning,) = ctx.report.warnings
    assert warning.startswith("load_modules: driver e1000 (device pci/0000:00:02.0): refused")
    assert "lockdown: Secure Boot is on" in warning


def test_a_refused_dependency_is_named_though_a_failed_one_is_not(tmp_path: Path) -> None:
    # crct10dif_pclmul is an optional softdep of nvme's chain: a CPU refusing it
    # (ENODEV) is no news, but a refusal for its signature is a security matter.
    ctx = _refusing(tmp_path, "kernel/pclmul.ko", errno.EPERM, ELF_BODY)
    _load(ctx)
    (warning,) = ctx.report.warnings
    assert warning.startswith("load_modules: driver crct10dif_pclmul (needed by nvme): refused")
    assert {m["name"]: m["result"] for m in ctx.report.modules}["nvme"] == "loaded"


def test_a_signature_by_an_unknown_key_is_told_apart(tmp_path: Path) -> None:
    ctx = _refusing(tmp_path, "kernel/e1000.ko", errno.EKEYREJECTED, SIGNED)
    _load(ctx)
    (warning,) = ctx.report.warnings
    assert "e1000" in warning and "not by a key this kernel trusts" in warning


def test_a_hook_module_refused_for_its_signature_is_a_rescue_with_that_fix(
    tmp_path: Path,
) -> None:
    ctx = _refusing(tmp_path, "kernel/btrfs.ko", errno.EPERM, ELF_BODY)
    with pytest.raises(BootFailure) as failure:
        _load(ctx)
    assert "cannot load module btrfs (refused by the kernel: the module carries no" in (
        failure.value.reason
    )
    assert "as its build signed them" in failure.value.fix


@pytest.mark.parametrize(
    ("disabled", "said"),
    [
        ("0", "e1000 (device pci/0000:00:02.0): Operation not permitted"),
        ("1", "refused by the kernel: module loading is disabled (kernel.modules_disabled=1)"),
    ],
)
def test_eperm_of_a_signed_module_is_not_blamed_on_its_signature(
    tmp_path: Path, disabled: str, said: str
) -> None:
    ctx = _refusing(tmp_path, "kernel/e1000.ko", errno.EPERM, SIGNED)
    ctx.kernel.write_text("/proc/sys/kernel/modules_disabled", disabled + "\n")
    _load(ctx)
    (warning,) = ctx.report.warnings
    assert warning.endswith(said)


def test_a_driver_refused_while_the_state_drains_uevents_is_named_once(tmp_path: Path) -> None:
    # virtio's devices are announced while load_modules runs (the VM's virtio-rng):
    # the follower names the refusal, and the state's summary does not repeat it.
    ctx = _refusing(tmp_path, "kernel/usb-storage.ko", errno.EPERM, ELF_BODY)
    assert isinstance(ctx.kernel, FakeKernel)
    devpath = "/devices/pci0000:00/0000:00:03.0/usb2/2-1/2-1:1.0"
    ctx.kernel.uevent_script = [[Uevent("add", devpath, "usb", {"MODALIAS": USB_DISK})]]
    _load(ctx)
    (warning,) = ctx.report.warnings
    assert warning.startswith(f"load_modules: usb_storage (device {devpath}) failed: refused")
