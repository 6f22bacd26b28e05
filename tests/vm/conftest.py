"""Fixtures of the VM tier: the Debian kernel, one initrd per session, boots.

- `vm_kernel`: scripts/fetch-kernel's cache folder (vmlinuz + modules).
- `vm_initrd`: mkinitrd.py run once per session into a temporary folder,
  with the guest test program (guest/vmcheck) included as
  /usr/bin/initpy-vmcheck. INITPY_VM_INITRD=DIR uses an OUTDIR built
  before instead (for quick reruns while working on the tests only).
- `boot_vm`: boots that kernel and initrd; the serial log is
  artifacts/vm/<test name>.log.
- `vm_rootfs`, `vm_full_image`: the Debian OS tree (scripts/mkrootfs,
  cached in ~/.cache/initpy/rootfs) and the full image packed with it
  (mkinitrd --rootfs, zstd:3), once per session; INITPY_VM_FULL_IMAGE=DIR
  uses an OUTDIR built before.
- `full_boot`: the VM arguments of the "whole boot" scenario, from
  scenario.full_boot_args: storage and network hooks add their disks, NICs
  and command-line words there, and the tests, the demo and the benchmark
  all pick them up.

A VM test FAILS when the kernel or the initrd cannot be made: a broken
builder must not pass as "skipped". The one way to skip the tier is a
machine without QEMU *and* INITPY_SKIP_VM=1 (CI never sets it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.harness import qemu
from tests.harness.images import InitrdFiles, KernelFiles
from tests.harness.qemu import BootArgs
from tests.harness.scenario import GUEST_PATH, GUEST_PROGRAM, full_boot_args

# Builds and boots are slow under TCG; these bound a hang, not a speed.
BUILD_TIMEOUT = 900


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if shutil.which(qemu.QEMU) is not None or os.environ.get("INITPY_SKIP_VM") != "1":
        return
    skip = pytest.mark.skip(reason=f"{qemu.QEMU} is absent and INITPY_SKIP_VM=1")
    for item in items:
        if item.get_closest_marker("vm"):
            item.add_marker(skip)


def _run(argv: Sequence[str], what: str, timeout: float) -> str:
    try:
        done = subprocess.run(argv, cwd=qemu.REPO, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"{what}: {' '.join(argv)}: {exc}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}",
            pytrace=False,
        )
    return done.stdout


def fetch_kernel(*package: str) -> KernelFiles:
    folder = Path(
        _run(
            [str(qemu.REPO / "scripts" / "fetch-kernel"), *package],
            "fetching the kernel",
            BUILD_TIMEOUT,
        )
        .strip()
        .splitlines()[-1]
    )
    vmlinux = folder / "vmlinux"
    files = KernelFiles(
        folder,
        folder / "vmlinuz",
        (folder / "modules").resolve(),
        vmlinux if vmlinux.is_file() else None,
    )
    if not files.vmlinuz.is_file() or not files.modules.is_dir():
        pytest.fail(
            f"scripts/fetch-kernel gave {folder} without vmlinuz and modules/; "
            f"remove it and run scripts/fetch-kernel again",
            pytrace=False,
        )
    return files


@pytest.fixture(scope="session")
def vm_kernel() -> KernelFiles:
    """Debian's cloud kernel: virtio only, the quick tiers' kernel."""
    return fetch_kernel()


# Debian's generic kernel: every driver (e1000, AHCI, xHCI, usb-storage, NVMe).
GENERIC_KERNEL = "linux-image-amd64"


@pytest.fixture(scope="session")
def generic_kernel() -> KernelFiles:
    return fetch_kernel(GENERIC_KERNEL)


def build_initrd(kernel: KernelFiles, outdir: Path, *options: str) -> InitrdFiles:
    """mkinitrd.py for `kernel` into `outdir`, with the guest program and `options`."""
    _run(
        [
            sys.executable,
            str(qemu.REPO / "mkinitrd.py"),
            "--kernel",
            str(kernel.vmlinuz),
            "--modules",
            str(kernel.modules),
            "-o",
            str(outdir),
            "--include",
            f"{GUEST_PROGRAM}:{GUEST_PATH}",
            *options,
        ],
        "building the initrd",
        BUILD_TIMEOUT,
    )
    return _initrd_files(outdir)


def prebuilt(variable: str) -> InitrdFiles | None:
    """The initrd a developer points `variable` at (to skip the build), if any."""
    folder = os.environ.get(variable)
    return _initrd_files(Path(folder)) if folder else None


def _initrd_files(outdir: Path) -> InitrdFiles:
    files = InitrdFiles(
        outdir, outdir / "buildos-image", outdir / "buildos-initrd", outdir / "buildos-buildid"
    )
    missing = [p.name for p in (files.image, files.initrd, files.buildid) if not p.is_file()]
    if missing:
        pytest.fail(
            f"{outdir} lacks {', '.join(missing)} (mkinitrd.py writes all three)", pytrace=False
        )
    return files


@pytest.fixture(scope="session")
def vm_initrd(vm_kernel: KernelFiles, tmp_path_factory: pytest.TempPathFactory) -> InitrdFiles:
    return prebuilt("INITPY_VM_INITRD") or build_initrd(
        vm_kernel, tmp_path_factory.mktemp("initrd")
    )


@pytest.fixture(scope="session")
def vm_rootfs() -> Path:
    from tests.harness.fullos import build_tree

    try:
        return build_tree()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"building the OS tree (scripts/mkrootfs): {exc}", pytrace=False)


@pytest.fixture(scope="session")
def vm_full_image(
    vm_kernel: KernelFiles, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> InitrdFiles:
    from tests.harness.fullos import build_image

    prebuilt = os.environ.get("INITPY_VM_FULL_IMAGE")
    if prebuilt:
        return _initrd_files(Path(prebuilt))
    tree: Path = request.getfixturevalue("vm_rootfs")
    outdir = tmp_path_factory.mktemp("full-image")
    try:
        build_image(vm_kernel.vmlinuz, vm_kernel.modules, tree, outdir)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"packing the full image (mkinitrd --rootfs): {exc}", pytrace=False)
    return _initrd_files(outdir)


BootVm = Callable[..., contextlib.AbstractContextManager[qemu.Vm]]


@pytest.fixture
def boot_vm(vm_initrd: InitrdFiles, request: pytest.FixtureRequest) -> BootVm:
    """`with boot_vm(BootArgs(...)) as vm:` boots the session's initrd."""

    @contextlib.contextmanager
    def boot(args: BootArgs) -> Iterator[qemu.Vm]:
        with qemu.boot(vm_initrd.image, vm_initrd.initrd, args, name=request.node.name) as vm:
            yield vm

    return boot


@pytest.fixture
def full_boot(tmp_path: Path) -> BootArgs:
    """The whole boot (scenario a), from scenario.full_boot_args, with tracebacks on."""
    args = full_boot_args(tmp_path)
    args.append.append("initpy.debug")
    return args
