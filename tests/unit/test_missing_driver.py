"""Naming the NICs and storage controllers that have no driver (hooks/modules/missing_driver.py)."""

from __future__ import annotations

import os
from pathlib import Path

from hooks.modules import missing_driver
from initpy.devtools.fake import FakeKernel


def _pci(kernel: FakeKernel, slot: str, pci_class: str, ids: str, driver: bool) -> None:
    folder = f"/sys/bus/pci/devices/{slot}"
    kernel.mkdir(folder)
    vendor, device = ids.split(":")
    kernel.write_text(f"{folder}/class", f"0x{pci_class}\n")
    kernel.write_text(f"{folder}/vendor", f"0x{vendor}\n")
    kernel.write_text(f"{folder}/device", f"0x{device}\n")
    kernel.write_text(f"{folder}/modalias", f"pci:v0000{vendor.upper()}d0000{device.upper()}\n")
    if driver:
        kernel.mkdir(f"{folder}/driver")


def _machine(tmp_path: Path) -> FakeKernel:
    kernel = FakeKernel(root=os.path.join(tmp_path, "root"))
    _pci(kernel, "0000:00:02.0", "020000", "8086:100e", driver=False)  # e1000, no driver
    _pci(kernel, "0000:00:05.0", "010802", "1b36:0010", driver=False)  # NVMe, no driver
    _pci(kernel, "0000:00:04.0", "010601", "8086:2922", driver=True)  # AHCI, driven
    _pci(kernel, "0000:00:01.0", "030000", "1234:1111", driver=False)  # VGA: not ours
    usb = "/sys/bus/usb/devices"
    kernel.mkdir(f"{usb}/2-1")
    kernel.write_text(f"{usb}/2-1/idVendor", "46f4\n")
    kernel.write_text(f"{usb}/2-1/idProduct", "0001\n")
    kernel.write_text(f"{usb}/2-1/product", "QEMU USB HARDDRIVE\n")
    kernel.mkdir(f"{usb}/2-1:1.0")
    kernel.write_text(f"{usb}/2-1:1.0/bInterfaceClass", "08\n")
    kernel.write_text(f"{usb}/2-1:1.0/bInterfaceSubClass", "06\n")
    kernel.write_text(f"{usb}/2-1:1.0/modalias", "usb:v46F4p0001d0000ic08isc06ip50\n")
    return kernel


def test_storage_and_network_devices_without_a_driver_are_named(tmp_path: Path) -> None:
    kernel = _machine(tmp_path)
    storage = list(missing_driver.driverless(kernel, "storage"))
    assert [(d.what, d.bus, d.address, d.ids) for d in storage] == [
        ("NVMe controller", "PCI", "0000:00:05.0", "1b36:0010"),
        ("USB mass storage", "USB", "2-1:1.0", "46f4:0001"),
    ]
    assert storage[1].product == "QEMU USB HARDDRIVE"
    network = list(missing_driver.driverless(kernel, "network"))
    assert [d.ids for d in network] == ["8086:100e"]


def test_the_text_names_the_device_and_the_commands(tmp_path: Path) -> None:
    kernel = _machine(tmp_path)
    text = missing_driver.rescue_text(
        list(missing_driver.driverless(kernel, "network")), "6.1.0-57-amd64"
    )
    assert "Ethernet controller at PCI 0000:00:02.0, id 8086:100e" in text
    assert "modprobe -S 6.1.0-57-amd64 -R 'pci:v00008086d0000100E'" in text
    assert "--driver NAME" in text
    assert missing_driver.rescue_text([], "6.1") == ""


def test_a_packed_driver_that_did_not_bind_is_told_apart(tmp_path: Path) -> None:
    kernel = _machine(tmp_path)
    found = list(missing_driver.driverless(kernel, "network", lambda alias: ["e1000"]))
    text = missing_driver.rescue_text(found, "6.1")
    assert "the initrd's e1000 did not take it" in text
    assert "modprobe" not in text  # the driver is there: nothing to add
