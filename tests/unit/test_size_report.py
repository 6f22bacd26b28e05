"""mkinitrd --rootfs's size report: what modules, Python, the OS and the init cost.

initpy.builder.size_report through mkinitrd.build with the stand-in
freezer: each path lands in its part, the raw figure is the part's bytes,
and a part's compressed figure is its own: it does not move when another
part grows.
"""

from __future__ import annotations

import os
import random

import pytest

from initpy.builder import layers, size_report
from initpy.builder.rootfs import PART_OS_FILES, PART_OS_MODULES
from initpy.builder.size_report import INIT, MODULES, PYTHON, REST
from tests.unit.test_mkinitrd import VERSION, build, setup
from tests.unit.test_rootfs import tree

__all__ = ["setup"]  # the fixture, used by name


@pytest.mark.parametrize(
    ("path", "layer", "part"),
    [
        (f"usr/lib/modules/{VERSION}/kernel/a.ko", PART_OS_MODULES, MODULES),
        (f"usr/lib/modules/{VERSION}/kernel/a.ko", layers.PART_MODULES, MODULES),
        ("usr/lib/firmware/e100/d102e_ucode.bin", layers.PART_MODULES, MODULES),
        ("usr/lib/python3.11/os.py", layers.PART_ROOTFS, PYTHON),
        ("usr/lib/python3.11", layers.PART_ROOTFS, PYTHON),
        ("usr/bin/python3.11", layers.PART_ROOTFS, PYTHON),
        ("usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0", layers.PART_ROOTFS, PYTHON),
        ("usr/lib/python3/dist-packages/foo.py", layers.PART_ROOTFS, PYTHON),
        ("usr/bin/python3-config-not", layers.PART_ROOTFS, REST),
        ("usr/lib/initpy/os/monitor.py", PART_OS_FILES, REST),
        ("usr/bin/qemu-img", layers.PART_ROOTFS, REST),
        ("usr/lib/initpy/frozen/init", layers.PART_INIT, INIT),
        ("usr/lib/x86_64-linux-gnu/libc.so.6", layers.PART_BINARIES, INIT),
        ("dev/console", layers.PART_OTHER, INIT),
    ],
)
def test_each_path_lands_in_its_part(path: str, layer: str, part: str) -> None:
    assert size_report.part_of(path, layer) == part


def _rootfs(setup: dict[str, str], noise: int) -> str:
    root = tree(setup, "usr/lib/python3.11/os.py", "usr/bin/python3.11", "usr/bin/qemu-img")
    with open(os.path.join(root, "usr/bin/noise"), "wb") as f:
        f.write(random.Random(noise).randbytes(200_000 * noise))
    return root


def test_the_report_splits_the_image_and_each_part_compresses_alone(
    setup: dict[str, str],
) -> None:
    small = dict((p, (raw, packed)) for p, raw, packed in build(
        setup, "out", rootfs=_rootfs(setup, 1)).report)  # fmt: skip
    assert list(small) == [MODULES, PYTHON, REST, INIT]
    # The Python part is its two files: "baked <path>\n" each.
    python_files = ("usr/lib/python3.11/os.py", "usr/bin/python3.11")
    assert small[PYTHON][0] == sum(len(f"baked {p}\n") for p in python_files)
    assert small[REST][0] > 200_000 and small[REST][1] > 200_000  # random bytes stay big
    big = dict((p, (raw, packed)) for p, raw, packed in build(
        setup, "out2", rootfs=_rootfs(setup, 3)).report)  # fmt: skip
    # Another part growing leaves a part's compressed figure as it was.
    assert big[REST][1] > small[REST][1] + 300_000
    for part in (MODULES, PYTHON, INIT):
        assert big[part] == small[part]


def test_without_a_rootfs_there_is_no_report(setup: dict[str, str]) -> None:
    assert build(setup, "out").report == ()


def test_the_lines_name_each_part_and_the_total() -> None:
    lines = size_report.lines(
        [(MODULES, 82_500_000, 21_000_000), (INIT, 40_000_000, 9_000_000)], "zstd:3"
    )
    assert lines == [
        "modules      82.5 MB raw    21.0 MB zstd:3",
        "the init     40.0 MB raw     9.0 MB zstd:3",
        "total       122.5 MB raw    30.0 MB zstd:3 (each part compressed alone)",
    ]
