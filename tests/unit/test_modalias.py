"""The modalias index (runtime.layout.AliasIndex) and the boot's device reading.

The index answers exactly what fnmatch over modules.alias would (a
hypothesis test), devices come from /sys/bus/*/devices (modalias file, else
MODALIAS= in uevent), uevents count only as `add` with a MODALIAS, and the
load plan puts dependencies (and theirs) first without retrying a module.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hooks.modules import modalias
from initpy.devtools.fake import FakeKernel
from initpy.runtime.layout import AliasIndex, AliasIndexError, PackedModule, load_order

ALIASES = [
    ("pci:v00008086d0000100Esv*sd*bc*sc*i*", "e1000"),
    ("pci:v*d*sv*sd*bc01sc06i01*", "ahci"),
    ("pci:v*d*sv*sd*bc01sc08i02*", "nvme"),
    ("pci:v*d*sv*sd*bc0Csc03i30*", "xhci_pci"),
    ("usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*", "usb_storage"),
    ("usb:v13FDp3940d0[0-2]*dc*dsc*dp*ic*isc*ip*in*", "uas"),
    ("scsi:t-0x00*", "sd_mod"),
    ("acpi*:PNP0C14:*", "wmi"),
    ("mdio:000000000100110111010000011?0110", "at803x"),
    ("platform:rtc_cmos", "rtc_cmos"),
    ("fs-btrfs", "btrfs"),  # names a function, not a device: dropped
]
INDEX = AliasIndex.build("test", ALIASES, builtin=("wmi",))

# Modaliases seen in QEMU 7.2 with Debian's 6.1 generic kernel.
SEEN = {
    "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00": {"e1000"},
    "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01": {"ahci"},
    "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02": {"nvme"},
    "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30": {"xhci_pci"},
    "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00": {"usb_storage"},
    "usb:v13FDp3940d0150dc00dsc00dp00ic08isc06ip50in00": {"usb_storage", "uas"},
    "usb:v13FDp3940d0350dc00dsc00dp00ic08isc06ip50in00": {"usb_storage"},
    "scsi:t-0x00": {"sd_mod"},
    "scsi:t-0x05": set(),
    "acpi:PNP0C14:": {"wmi"},
    "mdio:00000000010011011101000001110110": {"at803x"},
    "platform:rtc_cmos": {"rtc_cmos"},
    "platform:rtc_cmos2": set(),
}


@pytest.mark.parametrize("alias,expected", SEEN.items())
def test_the_index_matches_real_modaliases(alias: str, expected: set[str]) -> None:
    assert set(INDEX.modules_for(alias)) == expected


def test_the_index_survives_json_and_keeps_built_in_modules() -> None:
    again = AliasIndex.from_json(INDEX.to_json())
    assert again.buckets == INDEX.buckets and again.lengths == INDEX.lengths
    assert again.builtin == {"wmi"}
    assert "fs-btrfs" not in INDEX.to_json().decode()
    with pytest.raises(AliasIndexError, match="rebuild the initrd"):
        AliasIndex.from_json(b'{"format": "other"}')


GLOB_CHARS = st.sampled_from(list("ab:0*?") + ["[ab]", "[0-1]"])
TEXT_CHARS = st.sampled_from(list("ab:01"))


@settings(max_examples=400, deadline=None)
@given(
    globs=st.lists(st.lists(GLOB_CHARS, min_size=1, max_size=8).map("".join), max_size=8),
    text=st.lists(TEXT_CHARS, min_size=1, max_size=10).map("".join),
)
def test_the_index_equals_fnmatch(globs: list[str], text: str) -> None:
    modalias_text = "p:" + text
    aliases = [("p:" + g, f"m{i}") for i, g in enumerate(globs)]
    index = AliasIndex.build("h", aliases)
    expected = {m for g, m in aliases if fnmatch.fnmatchcase(modalias_text, g)}
    assert {m for m, _g in index.match(modalias_text)} == expected


def _device(kernel: FakeKernel, bus: str, name: str, **files: str) -> None:
    folder = f"/sys/bus/{bus}/devices/{name}"
    kernel.mkdir(folder)
    for file, text in files.items():
        kernel.write_text(f"{folder}/{file}", text)


def test_devices_come_from_every_bus_with_the_uevent_as_fallback(tmp_path: Path) -> None:
    kernel = FakeKernel(root=os.path.join(tmp_path, "root"))
    _device(kernel, "pci", "0000:00:02.0", modalias="pci:v00008086d0000100E\n")
    _device(kernel, "cpu", "cpu0", uevent="DRIVER=processor\nMODALIAS=cpu:type:x86\n")
    _device(kernel, "platform", "serial8250", uevent="DRIVER=serial8250\n")
    assert modalias.sysfs_devices(kernel) == [
        modalias.Device("cpu/cpu0", "cpu:type:x86"),
        modalias.Device("pci/0000:00:02.0", "pci:v00008086d0000100E"),
    ]


def test_only_add_uevents_with_a_modalias_ask_for_drivers() -> None:
    add = {"ACTION": "add", "DEVPATH": "/devices/usb2/2-1/2-1:1.0", "MODALIAS": "usb:v1"}
    assert modalias.uevent_device(add) == modalias.Device("/devices/usb2/2-1/2-1:1.0", "usb:v1")
    assert modalias.uevent_device({**add, "ACTION": "bind"}) is None
    assert modalias.uevent_device({"ACTION": "add", "DEVPATH": "/devices/x"}) is None


def test_each_module_is_wanted_once_by_the_first_device() -> None:
    devices = [
        modalias.Device("scsi/0:0:0:0", "scsi:t-0x00"),
        modalias.Device("scsi/1:0:0:0", "scsi:t-0x00"),
        modalias.Device("acpi/PNP0C14:00", "acpi:PNP0C14:"),
    ]
    wanted = modalias.wanted(INDEX, devices)
    assert [(w.module, w.device.where) for w in wanted] == [
        ("sd_mod", "scsi/0:0:0:0"),
        ("wmi", "acpi/PNP0C14:00"),
    ]


def test_the_plan_follows_softdeps_of_dependencies_and_skips_what_was_tried() -> None:
    packed = {
        m.name: m
        for m in (
            PackedModule("crct10dif_pclmul", "p.ko"),
            PackedModule("crc_t10dif", "c.ko", ("crct10dif_pclmul",), ("crct10dif_pclmul",)),
            PackedModule("nvme_core", "nc.ko", ("crc_t10dif",)),
            PackedModule("nvme", "n.ko", ("nvme_core", "crc_t10dif")),
            PackedModule("sd_mod", "s.ko", ("crc_t10dif",)),
        )
    }
    assert load_order(packed, ["nvme"]) == [
        "crct10dif_pclmul",
        "crc_t10dif",
        "nvme_core",
        "nvme",
    ]
    # A softdep that failed before is not tried again; built-in/absent ones are not planned.
    assert load_order(packed, ["sd_mod", "wmi"], tried={"crct10dif_pclmul", "crc_t10dif"}) == [
        "sd_mod"
    ]
