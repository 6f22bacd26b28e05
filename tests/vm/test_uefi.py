"""UEFI network boot through pxe-layout's folder (issue 20, acceptance 1, 3 and 4).

QEMU with Debian's OVMF (OVMF_CODE_4M.fd, a copy of OVMF_VARS_4M.fd, as
pflash), `-boot n`, an e1000 NIC with the spec's MAC: the firmware fetches
shimx64.efi by TFTP (QEMU's user network: `tftp=DIR,bootfile=shimx64.efi`),
shim fetches grubx64.efi (Debian's signed grubnetx64) beside it, GRUB reads
grub/grub.cfg, which picks grub.cfg-01-de-ad-be-ef-b8-da by the NIC's MAC.
The folder also holds a decoy for another MAC whose line would fail the
boot (initpy.exec=/nonexistent), so reaching the hand-off shows the MAC's own
file was chosen; the report shows the append line in effect, the quoted SSH
key included (GRUB's own quoting).

test_1  the small initrd (generic kernel: e1000) over TFTP to initpy's
        hand-off.
test_2  the same kernel and initrd over HTTP: a web server the test runs on
        127.0.0.1 (http.server), reached as 10.0.2.100:80 through QEMU's
        guestfwd.
test_3  the full Debian image (generic kernel) by UEFI/TFTP to
        multi-user.target (`buildos: up: running`, nothing failed); in by
        SSH with the key from the MAC's line, which the boot read whole.
test_4  the same by UEFI/HTTP.
test_5  a rollout by UEFI/HTTP, in one QEMU that reboots: the full image
        (build A) with the monitor polling the web server
        (buildos.buildid_url=http://10.0.2.100/...), the SMTP sink as the
        relay; `pxe-layout --build-only` B (A and one file more); the
        monitor mails the admin and reboots, OVMF -> shim -> GRUB fetch B
        by HTTP, and the host is up on B (manifest, B's file, the
        monitor's own status, B's boot mail).

The transfer times (between GRUB's echo lines) of every boot are printed
and kept in artifacts/vm/uefi-figures.txt.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import qemu, smtp_sink
from tests.harness.disks import state_and_machines
from tests.harness.fullos import (
    ADMIN,
    READY,
    Ssh,
    build_image,
    free_port,
    make_key,
    pxe_layout,
    wait_for_mail,
)
from tests.harness.guest_output import read_sections, report
from tests.harness.images import InitrdFiles, KernelFiles
from tests.harness.machine import loosely
from tests.harness.scenario import FULL_BOOT_MAC, GUEST_PATH
from tests.harness.web_server import WebServer, guestfwd

from .conftest import _initrd_files as prebuilt_from
from .conftest import build_initrd, prebuilt

pytestmark = pytest.mark.vm

SPEC_MAC = "de:ad:be:ef:b8:da"  # the spec's Network Boot example
SERVER = "10.0.2.2"  # QEMU's user network: the host, its TFTP server
WEB = "10.0.2.100"  # where the guest finds the test's web server (guestfwd)
MAC_FILE = "grub.cfg-01-" + SPEC_MAC.replace(":", "-")
OVMF = Path("/usr/share/OVMF")
BOOT_TIMEOUT = 600  # OVMF, shim, GRUB and the kernel under TCG: a hang, not the speed
RESCUE = r"initpy: rescue: .*|Kernel panic|pxe-layout wrote no GRUB config"
FIGURES = qemu.ARTIFACTS / "uefi-figures.txt"
FULL_MEMORY = 3072  # the generic kernel's full image: a 246 MB initrd, unpacked in RAM
FULL_TIMEOUT = 900
figures: list[str] = []


def note(line: str) -> None:
    print(f"uefi: {line}")
    figures.append(line)
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text("\n".join(figures) + "\n")


@pytest.fixture(scope="module")
def initrd(generic_kernel: KernelFiles, tmp_path_factory: pytest.TempPathFactory) -> InitrdFiles:
    """The small initrd (every hook, --drivers generic) for the generic kernel (e1000)."""
    return prebuilt("INITPY_VM_GENERIC_INITRD") or build_initrd(
        generic_kernel, tmp_path_factory.mktemp("uefi-initrd")
    )


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_key(tmp_path_factory.mktemp("key"))


def lay_out(
    initrd: InitrdFiles, folder: Path, key: Path, *more: str, own: str = f"initpy.exec={GUEST_PATH}"
) -> str:
    """The decoy for another MAC first, then the spec MAC's own files (`own` words more)."""
    words = "console=ttyS0 panic=-1 initpy.debug"
    pxe_layout(
        str(initrd.outdir), str(folder), "--mac", FULL_BOOT_MAC, "--timeout", "0",
        "--append", f"{words} initpy.exec=/nonexistent", *more,
    )  # fmt: skip
    return pxe_layout(
        str(initrd.outdir), str(folder), "--mac", SPEC_MAC, "--timeout", "0",
        "--server", SERVER, "--ssh-key", f"@{key.with_suffix('.pub')}",
        "--append", f"{words} {own}".strip(), *more,
    )  # fmt: skip


def firmware(work: Path) -> list[list[str]]:
    """OVMF as two pflash drives: the code read-only, a copy of the variables."""
    variables = work / "OVMF_VARS_4M.fd"
    shutil.copyfile(OVMF / "OVMF_VARS_4M.fd", variables)
    code = OVMF / "OVMF_CODE_4M.fd"
    return [
        ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}"],
        ["-drive", f"if=pflash,format=raw,unit=1,file={variables}"],
    ]


@contextlib.contextmanager
def boot(
    work: Path,
    tftp: Path,
    name: str,
    options: str = "",
    handoff_to: str = GUEST_PATH,
    memory: int = 1024,
    reboot: bool = False,
) -> Iterator[tuple[qemu.Vm, dict[str, float]]]:
    """UEFI-boot from the folder to the hand-off; the console times of GRUB's marks.

    `reboot=True`: a reboot of the guest netboots it again (follow it with `grub_marks`).
    """
    nic = qemu.Nic.user(
        "net0",
        mac=SPEC_MAC,
        model="e1000",
        options=f"tftp={tftp},bootfile=shimx64.efi" + (f",{options}" if options else ""),
    )
    disks = [*firmware(work), *state_and_machines(work)]
    with qemu.network_boot(nics=[nic], disks=disks, memory=memory, name=name, reboot=reboot) as vm:
        yield vm, grub_marks(vm, handoff_to)


def grub_marks(vm: qemu.Vm, handoff_to: str) -> dict[str, float]:
    """Wait for GRUB's echo lines and initpy's hand-off; when each came, in QEMU time."""
    marks = {
        "kernel": loosely("buildos: loading the kernel by "),
        "initrd": loosely("buildos: loading the initrd by "),
        "started": loosely("buildos: starting the kernel"),
        "handoff": re.escape(f"initpy: handoff: exec {handoff_to}"),
    }
    return {
        what: vm.seconds_at(vm.expect(pattern, BOOT_TIMEOUT, fail_on=RESCUE).start())
        for what, pattern in marks.items()
    }


def check_handoff(vm: qemu.Vm, key: Path) -> None:
    """The host's own file was chosen and its line is in effect."""
    sections = read_sections(vm, BOOT_TIMEOUT)
    boot = report(sections, vm)
    assert boot["outcome"] == "handoff", boot["reason"]
    line = boot["command_line"]
    assert line["warnings"] == []
    parameters = line["parameters"]
    assert parameters["initpy.exec"] == GUEST_PATH  # not the decoy's /nonexistent
    assert parameters["buildos.buildid_url"] == f"tftp://{SERVER}/buildos/buildos-buildid"
    # The key's spaces: GRUB quoted the argument, the kernel grouped it.
    assert parameters["buildos.ssh_key"] == key.with_suffix(".pub").read_text().strip()


def transfer(at: dict[str, float], folder: Path, how: str) -> float:
    """Note the transfer times between GRUB's marks, of the files as the folder holds them."""
    kernel_mb = (folder / "buildos" / "buildos-image").stat().st_size / 1e6
    initrd_mb = (folder / "buildos" / "buildos-initrd").stat().st_size / 1e6
    seconds = at["started"] - at["kernel"]
    note(
        f"{how}: kernel {kernel_mb:.1f} MB in {at['initrd'] - at['kernel']:.1f} s, "
        f"initrd {initrd_mb:.1f} MB in {at['started'] - at['initrd']:.1f} s: "
        f"{(kernel_mb + initrd_mb) / seconds:.1f} MB/s; GRUB's first mark at "
        f"{at['kernel']:.1f} s, hand-off at {at['handoff']:.1f} s of QEMU time"
    )
    return seconds


def test_1_uefi_tftp_boots_the_macs_own_config_to_the_handoff(
    initrd: InitrdFiles, key: Path, tmp_path: Path
) -> None:
    tftp = tmp_path / "tftp"
    said = lay_out(initrd, tftp, key)
    assert "shimx64.efi (UEFI)" in said
    grub_files = sorted(p.name for p in (tftp / "grub").glob("grub.cfg*"))
    assert grub_files == [
        "grub.cfg",
        "grub.cfg-01-" + FULL_BOOT_MAC.replace(":", "-"),
        "grub.cfg-01-" + SPEC_MAC.replace(":", "-"),
    ]
    with boot(tmp_path, tftp, "uefi-tftp") as (vm, at):
        # GRUB's output: the MAC's own file, loading by TFTP.
        assert re.search(loosely(f"buildos: GRUB config {MAC_FILE}"), vm.console)
        assert re.search(loosely("buildos: loading the kernel by tftp"), vm.console)
        check_handoff(vm, key)
        transfer(at, tftp, "UEFI/TFTP (shim, GRUB)")


def test_2_uefi_http_loads_the_kernel_and_initrd_from_a_web_server(
    initrd: InitrdFiles, key: Path, tmp_path: Path
) -> None:
    tftp = tmp_path / "tftp"
    said = lay_out(initrd, tftp, key, "--http-base", f"http://{WEB}/")
    assert f"served as http://{WEB}/" in said
    with WebServer(tftp) as web:
        with boot(tmp_path, tftp, "uefi-http", guestfwd(WEB, web)) as (vm, at):
            assert re.search(loosely(f"buildos: GRUB config {MAC_FILE}"), vm.console)
            assert re.search(loosely("buildos: loading the kernel by http"), vm.console)
            check_handoff(vm, key)
            transfer(at, tftp, "UEFI/HTTP (GRUB's http.mod)")
        got = {s.path: s for s in web.served}
    # The kernel and the initrd came from the web server, not by TFTP.
    for name in ("buildos-image", "buildos-initrd"):
        assert got[f"/buildos/{name}"].status == 200, sorted(got)


# -- the full image to multi-user.target (acceptance 1), by TFTP and by HTTP ----------------


@pytest.fixture(scope="module")
def full_image(
    generic_kernel: KernelFiles,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> InitrdFiles:
    """The full Debian image for the generic kernel (e1000)."""
    found = prebuilt("INITPY_VM_GENERIC_FULL_IMAGE")
    if found:
        return found
    tree: Path = request.getfixturevalue("vm_rootfs")
    outdir = tmp_path_factory.mktemp("uefi-full-image")
    build_image(generic_kernel.vmlinuz, generic_kernel.modules, tree, outdir)
    return prebuilt_from(outdir)


def full_boot(full_image: InitrdFiles, key: Path, work: Path, how: str, name: str) -> None:
    """The full image to multi-user.target; over SSH, the MAC's own line in effect."""
    tftp = work / "tftp"
    more = ("--http-base", f"http://{WEB}/") if how == "http" else ()
    lay_out(full_image, tftp, key, *more, own="")
    port = free_port()
    with contextlib.ExitStack() as stack:
        options = f"hostfwd=tcp:127.0.0.1:{port}-:22"
        if how == "http":
            web = stack.enter_context(WebServer(tftp))
            options += f",{guestfwd(WEB, web)}"
        vm, at = stack.enter_context(
            boot(work, tftp, name, options, handoff_to="", memory=FULL_MEMORY)
        )
        assert re.search(loosely(f"buildos: GRUB config {MAC_FILE}"), vm.console)
        assert re.search(loosely(f"buildos: loading the kernel by {how}"), vm.console)
        up = vm.expect(READY, FULL_TIMEOUT, fail_on=RESCUE)
        assert up.group(1) == "running" and up.group(4) == "", up.group(0)
        seconds = transfer(at, tftp, f"full image, UEFI/{how.upper()}")
        note(
            f"full image, UEFI/{how.upper()}: {seconds:.1f} s of transfer, multi-user.target at "
            f"{int(up.group(2)) / 1000:.1f} s of uptime, {vm.seconds_at(up.start()):.1f} s of "
            "QEMU time"
        )
        ssh = Ssh(port, key)
        ssh.wait()
        out = ssh.sections(
            {"cmdline": "cat /proc/cmdline", "report": "cat /run/initpy/report.json"}
        )
    root = f"(http,{WEB})" if how == "http" else ""
    assert out["cmdline"].startswith(f"BOOT_IMAGE={root}/buildos/buildos-image ")
    line = json.loads(out["report"])["command_line"]
    assert line["warnings"] == []
    # The key came in by the line: SSH let us in with it, and the boot read it whole.
    assert line["parameters"]["buildos.ssh_key"] == key.with_suffix(".pub").read_text().strip()
    assert line["parameters"]["buildos.buildid_url"] == f"tftp://{SERVER}/buildos/buildos-buildid"


def test_3_the_full_image_boots_to_multi_user_by_uefi_tftp(
    full_image: InitrdFiles, key: Path, tmp_path: Path
) -> None:
    full_boot(full_image, key, tmp_path, "tftp", "uefi-full-tftp")


def test_4_the_full_image_boots_to_multi_user_by_uefi_http(
    full_image: InitrdFiles, key: Path, tmp_path: Path
) -> None:
    full_boot(full_image, key, tmp_path, "http", "uefi-full-http")


# -- a rollout by UEFI/HTTP (acceptance 4) ----------------------------------------------------

HOSTNAME = "uefi-host"
BUILDID_URL = f"http://{WEB}/buildos/buildos-buildid"  # --http-base's default
INTERVAL = 10  # initpy.monitor.interval: the first poll within 10 s, then 7.5-12.5 s
GENERATION = "/etc/initpy-rollout-build"  # only in build B: which build the host runs
ROLLOUT_TIMEOUT = 300  # the mail, the queue's drain and systemd's shutdown under TCG


def up_on(
    vm: qemu.Vm, ssh: Ssh, mail: Path, build: InitrdFiles, boot: int
) -> tuple[dict[str, str], float]:
    """Boot number `boot` (from 0) reached multi-user.target on `build`, fetched by HTTP;
    what the host said, and when `buildos: up` came (QEMU time)."""
    up = vm.expect(READY, FULL_TIMEOUT, fail_on=RESCUE)
    assert up.group(1) == "running" and up.group(4) == "", up.group(0)
    ssh.wait()
    build_id = build.buildid.read_text().strip()
    out = ssh.sections(
        {
            "cmdline": "cat /proc/cmdline",
            "manifest": "cat /usr/lib/initpy/manifest.json",
            "generation": f"cat {GENERATION} 2>/dev/null || echo none",
            "journal": "journalctl -b -u initpy-monitor --no-pager -o cat",
        }
    )
    assert out["cmdline"].startswith(f"BOOT_IMAGE=(http,{WEB})/buildos/buildos-image "), out
    assert json.loads(out["manifest"])["build_id"] == build_id
    # The monitor polls the web server, and finds the build it runs.
    assert f"polling {BUILDID_URL} every {INTERVAL:g} s" in out["journal"], out["journal"]
    status = ssh.until("systemctl show -P StatusText initpy-monitor", "is current", 4 * INTERVAL)
    assert f"build {build_id[:12]} is current" in status, status
    hello = wait_for_mail(mail, f"buildos: {HOSTNAME} is up", index=boot)
    assert f"build id:   {build_id}" in hello.get_content()
    return out, vm.seconds_at(up.start())


def test_5_a_new_build_over_http_mails_the_admin_and_the_host_netboots_onto_it(
    full_image: InitrdFiles,
    generic_kernel: KernelFiles,
    vm_rootfs: Path,
    key: Path,
    tmp_path: Path,
) -> None:
    """Build A (the full image) by UEFI/HTTP, `pxe-layout --build-only` B, the monitor's
    mail and reboot, and OVMF -> shim -> GRUB -> B by HTTP, in one QEMU."""
    # B is A and one small file more: mkinitrd takes A's compressed parts from its cache.
    marker = tmp_path / "generation"
    marker.write_text("B\n")
    started = time.monotonic()
    build_b = prebuilt_from(
        build_image(
            generic_kernel.vmlinuz, generic_kernel.modules, vm_rootfs, tmp_path / "build-B",
            includes=[f"{marker}:{GENERATION}"],
        )
    )  # fmt: skip
    note(f"rollout: build B packed in {time.monotonic() - started:.0f} s")
    id_a, id_b = (b.buildid.read_text().strip() for b in (full_image, build_b))
    assert id_a != id_b
    tftp, mail = tmp_path / "tftp", tmp_path / "mail"
    mail.mkdir()
    said = pxe_layout(
        str(full_image.outdir), str(tftp), "--mac", SPEC_MAC, "--timeout", "0",
        "--http-base", f"http://{WEB}/",
        "--smtp-relay", smtp_sink.SINK_ADDRESS, "--admin-email", ADMIN,
        "--ssh-key", f"@{key.with_suffix('.pub')}",
        "--append", f"console=ttyS0 panic=-1 initpy.monitor.interval={INTERVAL}",
    )  # fmt: skip
    assert f"buildos.buildid_url={BUILDID_URL}" in said, said
    port = free_port()
    ssh = Ssh(port, key)
    with contextlib.ExitStack() as stack:
        web = stack.enter_context(WebServer(tftp))
        options = f"hostname={HOSTNAME},hostfwd=tcp:127.0.0.1:{port}-:22,"
        options += f"{guestfwd(WEB, web)},{smtp_sink.guestfwd(mail)}"
        vm, at = stack.enter_context(
            boot(tmp_path, tftp, "uefi-rollout", options, "", FULL_MEMORY, reboot=True)
        )
        assert re.search(loosely(f"buildos: GRUB config {MAC_FILE}"), vm.console)
        assert re.search(loosely("buildos: loading the kernel by http"), vm.console)
        first, _ = up_on(vm, ssh, mail, full_image, 0)
        assert first["generation"] == "none"
        transfer(at, tftp, "rollout, boot 1 (build A), UEFI/HTTP")

        # The rollout: B's three files renamed into the folder, the build id last.
        console_at = len(vm.console)
        rolled_at, rolled_qemu = time.time(), vm.seconds
        said = pxe_layout("--build-only", str(build_b.outdir), str(tftp))
        assert id_b in said, said
        change = wait_for_mail(mail, f"{HOSTNAME}: new build {id_b[:12]}, rebooting", 180)
        body = change.get_content()
        assert f"old build id: {id_a}" in body and f"new build id: {id_b}" in body, body
        mailed = int(change["X-Sink-Received-Ns"]) / 1e9 - rolled_at
        restart = vm.expect(r"reboot: Restarting system", ROLLOUT_TIMEOUT, fail_on=RESCUE)
        assert restart.start() > console_at
        restarted = vm.seconds_at(restart.start())

        # Boot 2: the firmware netboots again, GRUB fetches B by HTTP.
        again = grub_marks(vm, "")
        second, up_at = up_on(vm, ssh, mail, build_b, 1)
        assert second["generation"] == "B"
        transfer(again, tftp, "rollout, boot 2 (build B), UEFI/HTTP")
        note(
            f"rollout: build id replaced -> mail at the sink {mailed:.1f} s -> 'reboot: "
            f"Restarting system' {restarted - rolled_qemu:.1f} s -> GRUB loads the kernel "
            f"{again['kernel'] - rolled_qemu:.1f} s -> hand-off "
            f"{again['handoff'] - rolled_qemu:.1f} s -> B's 'buildos: up' "
            f"{up_at - rolled_qemu:.1f} s"
        )
        console = vm.console
        served = web.served
    # One reboot, not a loop; both boots' kernel and initrd came from the web server.
    assert console.count("buildos: up: running;") == 2
    assert re.search(loosely(f"buildos: GRUB config {MAC_FILE}"), console[console_at:])
    for name in ("buildos-image", "buildos-initrd"):
        assert [s.status for s in served if s.path == f"/buildos/{name}"] == [200, 200]
    assert {s.status for s in served if s.path == "/buildos/buildos-buildid"} == {200}
