"""scripts/pxe-layout's UEFI side (initpy/builder/grub.py): one folder for BIOS and UEFI.

The GRUB configs are checked against what GRUB will hand the kernel (its
quoting, emulated as grub_create_loader_cmdline does it), read back with the
boot's own tokenizer; the per-MAC choice against GRUB's MAC format; Debian's
real signed network GRUB against the names the layout writes (its prefix and
its embedded config, read from the binary); and an HTTP client reading the
folder while `--build-only` rewrites it never sees a partial file.
"""

from __future__ import annotations

import http.server
import os
import re
import struct
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from initpy.builder import grub, pxe, pxe_cli
from initpy.builder.command import BuildError
from initpy.runtime import cmdline
from tests.unit.test_pxe import PARAMETERS, VALUES, ed25519_key, read, write

MAC = "de:ad:be:ef:b8:da"


@pytest.fixture
def folders(tmp_path: Path) -> tuple[str, str, str]:
    """mkinitrd's OUTDIR and stand-ins for syslinux and the UEFI loaders."""
    out, syslinux, efi = (str(tmp_path / n) for n in ("out", "syslinux", "efi"))
    write(os.path.join(out, "buildos-image"), b"kernel")
    write(os.path.join(out, "buildos-initrd"), b"initrd")
    write(os.path.join(out, "buildos-buildid"), b"a" * 64 + b"\n")
    for name in pxe.SYSLINUX_FILES:
        write(os.path.join(syslinux, name), name.encode())
    for name in grub.EFI_FILES:
        write(os.path.join(efi, name), b"MZ " + name.encode())
    return out, syslinux, efi


def lay_out(tmp_path: Path, folders: tuple[str, str, str], **kwargs: object) -> str:
    out, syslinux, efi = folders
    tftp = str(tmp_path / "tftp")
    options: dict[str, object] = {"macs": [MAC], "syslinux": syslinux, "efi": efi}
    options.update(kwargs)
    pxe.lay_out(out, tftp, VALUES, parameters=PARAMETERS, **options)  # type: ignore[arg-type]
    return tftp


def linux_arguments(entry: str) -> tuple[str, list[str]]:
    """The `linux` line's path and arguments, as GRUB's lexer splits single-quoted words."""
    line = next(s.strip() for s in entry.splitlines() if s.strip().startswith("linux "))
    path = line.split()[1]
    rest = line[len("linux ") + len(path) :].strip()
    words = re.findall(r"'([^']*)'", rest)
    assert re.sub(r"'[^']*'", "", rest).strip() == "", rest  # nothing outside the quotes
    return path, words


def test_one_folder_boots_bios_and_uefi_with_the_same_line_for_the_same_mac(
    tmp_path: Path, folders: tuple[str, str, str]
) -> None:
    tftp = lay_out(tmp_path, folders)
    pxelinux = read(os.path.join(tftp, "pxelinux.cfg", "01-de-ad-be-ef-b8-da")).decode()
    entry = read(os.path.join(tftp, "grub", "grub.cfg-01-de-ad-be-ef-b8-da")).decode()
    append = re.search(r"(?m)^  append (.*)$", pxelinux)
    assert append
    path, arguments = linux_arguments(entry)
    assert path == "/buildos/buildos-image"
    assert "  initrd /buildos/buildos-initrd\n" in entry and "insmod" not in entry
    assert "  echo 'buildos: loading the kernel by tftp'\n" in entry
    # What GRUB hands the kernel is read by the boot as pxelinux's line is.
    line = grub.kernel_line(path, arguments)
    assert line.startswith("BOOT_IMAGE=/buildos/buildos-image ")
    via_grub = cmdline.parse(line, PARAMETERS.values())
    via_pxelinux = cmdline.parse(append.group(1), PARAMETERS.values())
    assert via_grub.problems == () and via_grub.values == via_pxelinux.values
    assert via_grub.values["buildos.ssh_key"] == ed25519_key("me@host")
    # The ssh key's spaces: GRUB wraps that argument in double quotes.
    assert f'"buildos.ssh_key={ed25519_key("me@host")}"' in line
    # shim and GRUB where the firmware and shim look for them.
    assert read(os.path.join(tftp, "shimx64.efi")) == b"MZ shimx64.efi"
    assert read(os.path.join(tftp, "grubx64.efi")) == b"MZ grubx64.efi"
    assert os.path.isfile(os.path.join(tftp, "grub", "x86_64-efi", "http.mod"))
    assert not [n for _d, _s, ns in os.walk(tftp) for n in ns if n.startswith(".")]


def test_the_chooser_names_the_file_written_for_the_mac(
    tmp_path: Path, folders: tuple[str, str, str]
) -> None:
    """GRUB's $net_default_mac is lower case with colons (grub_net_hwaddr_to_str):
    the chooser's regexp turns it into the name pxe-layout wrote for --mac."""
    tftp = lay_out(tmp_path, folders, macs=[MAC.upper()], timeout=25)
    chooser = read(os.path.join(tftp, "grub", "grub.cfg")).decode()
    assert "set timeout=3\n" in chooser  # 2.5 s, rounded up
    pattern = re.search(r"if regexp (.*) '(\^.*\$)' \"\$net_default_mac\"", chooser)
    assert pattern
    groups = re.fullmatch(pattern.group(2), MAC)
    assert groups
    named = re.search(r'  source "\$prefix/(\S+)"', chooser)
    assert named
    name = re.sub(r"\$m(\d)", lambda m: groups.group(int(m.group(1))), named.group(1))
    assert os.path.isfile(os.path.join(tftp, "grub", name))
    assert name == "grub.cfg-01-de-ad-be-ef-b8-da"
    # Another MAC names no file, and there is no default: GRUB says so.
    assert not os.path.exists(os.path.join(tftp, "grub", "grub.cfg-default"))
    assert "pxe-layout wrote no GRUB config" in chooser
    # Each file names itself, for the chooser's test and the console.
    entry = read(os.path.join(tftp, "grub", name)).decode()
    assert f"\nset buildos_config={name}\n" in entry


@pytest.mark.parametrize(
    "values, words",
    [
        (pxe.BootValues(extra=("initpy.motd=a\\b",)), "holds '\\\\\\\\'"),
        (pxe.BootValues(extra=("initpy.motd=it's",)), 'holds "\'"'),
        (pxe.BootValues(agent="/usr/bin/agent --name='a b'"), 'holds "\'"'),
        (pxe.BootValues(ssh_key=ed25519_key("me\\host")), "holds '\\\\\\\\'"),
    ],
)
def test_values_grub_cannot_carry_are_refused_before_any_file_is_written(
    tmp_path: Path, folders: tuple[str, str, str], values: pxe.BootValues, words: str
) -> None:
    out, syslinux, efi = folders
    tftp = str(tmp_path / "tftp")
    # pxelinux alone would carry it ...
    pxe.append_line(values, PARAMETERS)
    # ... GRUB would hand the kernel a backslash more: refused, nothing written.
    with pytest.raises(BuildError, match=words):
        pxe.lay_out(out, tftp, values, syslinux=syslinux, efi=efi, parameters=PARAMETERS)
    assert not os.path.exists(tftp)


def test_dollars_and_semicolons_reach_the_kernel_as_typed(
    tmp_path: Path, folders: tuple[str, str, str]
) -> None:
    """GRUB's lexer expands $VAR and splits at `;` outside single quotes."""
    out, syslinux, efi = folders
    tftp = str(tmp_path / "tftp")
    values = pxe.BootValues(extra=("initpy.motd=$prefix;reboot", "a#b"))
    pxe.lay_out(out, tftp, values, syslinux=syslinux, efi=efi, parameters=PARAMETERS)
    entry = read(os.path.join(tftp, "grub", "grub.cfg-default")).decode()
    assert " 'initpy.motd=$prefix;reboot' 'a#b'\n" in entry
    path, arguments = linux_arguments(entry)
    pairs, _after, _problems = cmdline.tokenize(grub.kernel_line(path, arguments))
    assert pairs[1:] == [("initpy.motd", "$prefix;reboot"), ("a#b", None)]


def test_over_http_grub_loads_the_kernel_and_initrd_from_the_web_server(
    tmp_path: Path, folders: tuple[str, str, str]
) -> None:
    tftp = lay_out(tmp_path, folders, http_base="http://10.0.2.100/fleet/")
    entry = read(os.path.join(tftp, "grub", "grub.cfg-01-de-ad-be-ef-b8-da")).decode()
    assert entry.splitlines()[2:4] == [
        "set buildos_config=grub.cfg-01-de-ad-be-ef-b8-da",
        "insmod http",
    ]
    assert linux_arguments(entry)[0] == "(http,10.0.2.100)/fleet/buildos/buildos-image"
    assert "  initrd (http,10.0.2.100)/fleet/buildos/buildos-initrd\n" in entry
    assert grub.http_root("http://boot.example.org:8080/") == ("(http,boot.example.org:8080)", "")


@pytest.mark.parametrize(
    "base, words",
    [
        ("https://10.0.2.100/fleet/", "not an http:// URL"),
        ("10.0.2.100/fleet/", "not an http:// URL"),
        ("http://10.0.2.100/fleet/?x=1", "not an http:// URL"),
        ("http://me@10.0.2.100/", "holds a user name"),
        ("http://10.0.2.100/my fleet/", "holds ' '"),
        ("http://10.0.2.100/a,b/", "holds ','"),
    ],
)
def test_http_bases_grub_cannot_use_are_refused(base: str, words: str) -> None:
    with pytest.raises(BuildError, match=re.escape(words)):
        grub.http_root(base)


def test_the_command_line_defaults_the_buildid_url_to_the_web_server(
    tmp_path: Path, folders: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, syslinux, efi = folders
    tftp = str(tmp_path / "tftp")
    argv = [out, tftp, "--syslinux", syslinux, "--efi", efi, "--mac", MAC]
    assert pxe_cli.main([*argv, "--http-base", "http://10.0.2.100/fleet/"]) == 0
    said = capsys.readouterr().err
    assert "buildos.buildid_url=http://10.0.2.100/fleet/buildos/buildos-buildid" in said
    assert pxe_cli.main([*argv, "--efi", str(tmp_path)]) == 1
    assert "has no shimx64.efi, grubx64.efi" in capsys.readouterr().err


def test_debians_grub_version_names_the_build_http_mod_comes_from() -> None:
    assert grub.grub_bin_version("1+2.06+13+deb12u2") == "2.06-13+deb12u2"
    with pytest.raises(BuildError, match="1\\+UPSTREAM\\+REVISION"):
        grub.grub_bin_version("2.06-13")


# -- the real files ----------------------------------------------------------------------


def grub_image_objects(image: bytes) -> tuple[dict[int, bytes], list[str]]:
    """The objects grub-mkimage put in the PE's `mods` section: by type (config 2,
    prefix 3), and the names of the modules (type 0, each an ELF with a .modname)."""
    pe = struct.unpack_from("<I", image, 0x3C)[0]
    sections, optional = (
        struct.unpack_from("<H", image, pe + 6)[0],
        struct.unpack_from("<H", image, pe + 20)[0],
    )
    table = pe + 24 + optional
    offsets = {
        struct.unpack_from("<8s", image, table + 40 * i)[0].rstrip(b"\0"): struct.unpack_from(
            "<I", image, table + 40 * i + 20
        )[0]
        for i in range(sections)
    }
    base = offsets[b"mods"]
    magic, _pad, first, size = struct.unpack_from("<IIQQ", image, base)
    assert magic == 0x676D696D  # "mimg"
    objects: dict[int, bytes] = {}
    modules = []
    at = base + first
    while at < base + size:
        kind, length = struct.unpack_from("<II", image, at)
        body = image[at + 8 : at + length]
        if kind == 0:
            name = re.search(rb"\.modname\0", body)
            assert name
            shoff = struct.unpack_from("<Q", body, 0x28)[0]
            entsize, count, names = struct.unpack_from("<HHH", body, 0x3A)
            headers = [
                struct.unpack_from("<IIQQQQ", body, shoff + i * entsize) for i in range(count)
            ]
            strings = headers[names][4]
            for header in headers:
                if body[strings + header[0] :].startswith(b".modname\0"):
                    modules.append(body[header[4] : header[4] + header[5]].rstrip(b"\0").decode())
        else:
            objects[kind] = body.rstrip(b"\0")
        at += length
    return objects, modules


@pytest.fixture(scope="module")
def debian_efi() -> Iterator[str]:
    """Fetched into the shared cache once (a few seconds), as pxelinux is."""
    yield grub.fetch_efi()


def test_debians_signed_network_grub_reads_the_files_the_layout_writes(debian_efi: str) -> None:
    objects, modules = grub_image_objects(read(os.path.join(debian_efi, "grubx64.efi")))
    # Its prefix: GRUB puts the boot server's device in front, (tftp,SERVER)/grub.
    assert objects[3] == f"/{grub.GRUB_DIR}".encode()
    # Its embedded config runs the memdisk's, which sources $prefix/grub.cfg
    # (unless $prefix/x86_64-efi/grub.cfg exists, which the layout never writes).
    assert objects[2] == b"normal (memdisk)/grub.cfg\n"
    assert b"\n\tsource $prefix/grub.cfg\n" in objects[1]  # the memdisk, a FAT image
    # It can match a MAC and fetch by TFTP, but carries no http module.
    assert {"regexp", "tftp", "efinet", "linux", "test"} <= set(modules)
    assert "http" not in modules
    shim = read(os.path.join(debian_efi, "shimx64.efi"))
    assert shim.startswith(b"MZ") and "grubx64.efi".encode("utf-16-le") in shim
    assert read(os.path.join(debian_efi, "grub", "x86_64-efi", "http.mod")).startswith(b"\x7fELF")


# -- rollout over HTTP --------------------------------------------------------------------


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_http_client_never_sees_a_partial_file_during_rollouts(
    tmp_path: Path, folders: tuple[str, str, str]
) -> None:
    """A real web server serves the folder while `--build-only` writes build after build."""
    tftp = lay_out(tmp_path, folders)
    size = 3 << 20
    builds = {}
    for generation in range(2):
        out = tmp_path / f"build{generation}"
        image, initrd = bytes([65 + generation]) * size, bytes([97 + generation]) * size
        write(str(out / "buildos-image"), image)
        write(str(out / "buildos-initrd"), initrd)
        write(str(out / "buildos-buildid"), f"{generation}".encode() * 64 + b"\n")
        builds[generation] = (image, initrd)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=tftp))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/buildos/"
    seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def client() -> None:
        while True:
            done = stop.is_set()  # one more round after the last rollout
            for index, name in enumerate(("buildos-image", "buildos-initrd")):
                with urllib.request.urlopen(url + name) as response:
                    body = response.read()
                whole = [g for g, files in builds.items() if files[index] == body]
                seen.append((name, whole[0] if whole else -1))
            if done:
                return

    pxe.install_build(str(tmp_path / "build0"), tftp, repack=False)
    reader = threading.Thread(target=client)
    reader.start()
    try:
        for round in range(1, 7):
            pxe.install_build(str(tmp_path / f"build{round % 2}"), tftp, repack=False)
    finally:
        stop.set()
        reader.join()
        server.shutdown()
        server.server_close()
    assert seen and [s for s in seen if s[1] == -1] == [], seen
    assert {g for _name, g in seen} == {0, 1}  # it read during the rollouts, both builds
