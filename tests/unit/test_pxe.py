"""scripts/pxe-layout (initpy/builder/pxe.py): the TFTP folder, the append line, the order.

The layout is checked file by file against a stand-in syslinux folder; the
append line is read back with the boot's own tokenizer; values pxelinux
cannot carry are refused. One test fetches Debian's real pxelinux.0 and
ldlinux.c32 (apt-get download, as scripts/fetch-kernel does for the kernel).
"""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import pytest

from initpy.builder import command, cpio, debfiles, grub, pxe, pxe_cli, settings
from initpy.builder.command import BuildError
from initpy.builder.hooks import default_hooks_dir
from initpy.runtime import cmdline
from tests.unit.conftest import REPO

BUILD_ID = "d" * 64
PARAMETERS = pxe.boot_parameters([default_hooks_dir()])


def ed25519_key(comment: str = "me@host") -> str:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def outdir(tmp_path: os.PathLike[str]) -> str:
    out = os.path.join(str(tmp_path), "out")
    write(os.path.join(out, "buildos-image"), b"kernel")
    write(os.path.join(out, "buildos-initrd"), b"initrd")
    write(os.path.join(out, "buildos-buildid"), (BUILD_ID + "\n").encode())
    return out


@pytest.fixture
def efi(tmp_path: os.PathLike[str]) -> str:
    """Stand-ins for shim, GRUB's network image and its http module."""
    folder = os.path.join(str(tmp_path), "efi")
    for name in grub.EFI_FILES:
        write(os.path.join(folder, name), b"MZ " + name.encode())
    return folder


@pytest.fixture
def syslinux(tmp_path: os.PathLike[str]) -> str:
    folder = os.path.join(str(tmp_path), "syslinux")
    write(os.path.join(folder, "pxelinux.0"), b"pxelinux")
    write(os.path.join(folder, "ldlinux.c32"), b"\x7fELF ldlinux")
    return folder


VALUES = pxe.BootValues(
    buildid_url="tftp://10.0.2.2/buildos/buildos-buildid",
    smtp_relay="mail.example.org",
    admin_email="admin@example.org",
    ssh_key=ed25519_key("me@host"),
    extra=("console=ttyS0", "initpy.monitor.interval=60"),
)


def test_the_folder_is_laid_out_as_the_spec_shows(
    tmp_path: os.PathLike[str], outdir: str, syslinux: str, efi: str
) -> None:
    tftp = os.path.join(str(tmp_path), "tftp")
    append, configs = pxe.lay_out(
        outdir,
        tftp,
        VALUES,
        macs=["DE:AD:BE:EF:B8:DA", "52-54-00-12-34-56"],
        syslinux=syslinux,
        efi=efi,
        parameters=PARAMETERS,
    )
    listing = sorted(
        os.path.relpath(os.path.join(folder, name), tftp)
        for folder, _dirs, names in os.walk(tftp)
        for name in names
    )
    assert listing == [
        "buildos/buildos-buildid",
        "buildos/buildos-image",
        "buildos/buildos-initrd",
        "grub/grub.cfg",
        "grub/grub.cfg-01-52-54-00-12-34-56",
        "grub/grub.cfg-01-de-ad-be-ef-b8-da",
        "grub/x86_64-efi/http.mod",
        "grubx64.efi",
        "ldlinux.c32",
        "pxelinux.0",
        "pxelinux.cfg/01-52-54-00-12-34-56",
        "pxelinux.cfg/01-de-ad-be-ef-b8-da",
        "shimx64.efi",
    ]
    assert read(os.path.join(tftp, "pxelinux.0")) == b"pxelinux"
    assert read(os.path.join(tftp, "buildos", "buildos-buildid")) == (BUILD_ID + "\n").encode()
    assert read(os.path.join(tftp, "buildos", "buildos-initrd")) == b"initrd"
    assert configs == [
        os.path.join(tftp, "pxelinux.cfg", "01-de-ad-be-ef-b8-da"),
        os.path.join(tftp, "pxelinux.cfg", "01-52-54-00-12-34-56"),
        os.path.join(tftp, "grub", "grub.cfg-01-de-ad-be-ef-b8-da"),
        os.path.join(tftp, "grub", "grub.cfg-01-52-54-00-12-34-56"),
    ]
    config = read(configs[0]).decode()
    assert config == (
        "# Written by initpy's scripts/pxe-layout; `append` is one line.\n"
        "default buildos\n"
        "prompt 1\n"
        "timeout 50\n"
        "label buildos\n"
        "  menu label buildos\n"
        "  kernel /buildos/buildos-image\n"
        "  initrd /buildos/buildos-initrd\n"
        f"  append {append}\n"
    )
    assert append == (
        "buildos.smtp_relay=mail.example.org buildos.admin_email=admin@example.org "
        "buildos.buildid_url=tftp://10.0.2.2/buildos/buildos-buildid "
        f'buildos.ssh_key="{ed25519_key("me@host")}" console=ttyS0 initpy.monitor.interval=60'
    )
    # The boot reads back exactly what was asked, through its own parser.
    config_read = cmdline.parse(append, PARAMETERS.values())
    assert config_read.problems == ()
    assert config_read.values["buildos.ssh_key"] == ed25519_key("me@host")
    assert config_read.values["buildos.buildid_url"] == VALUES.buildid_url
    assert config_read.values["initpy.monitor.interval"] == 60.0
    assert not [n for n in os.listdir(tftp) if n.startswith(".")]  # no temporary file left


def test_without_a_mac_every_host_gets_the_default(
    tmp_path: os.PathLike[str], outdir: str, syslinux: str, efi: str
) -> None:
    tftp = os.path.join(str(tmp_path), "tftp")
    _append, configs = pxe.lay_out(
        outdir, tftp, VALUES, timeout=0, syslinux=syslinux, efi=efi, parameters=PARAMETERS
    )
    assert configs == [
        os.path.join(tftp, "pxelinux.cfg", "default"),
        os.path.join(tftp, "grub", "grub.cfg-default"),
    ]
    assert "prompt 0\ntimeout 0\n" in read(configs[0]).decode()


@pytest.mark.parametrize(
    "values, words",
    [
        (pxe.BootValues(admin_email="admin @example.org"), "holds a space"),
        (pxe.BootValues(admin_email='"admin"@example.org'), "holds a double quote"),
        (pxe.BootValues(smtp_relay="mail.example.org\tx"), "printable ASCII only"),
        (pxe.BootValues(smtp_relay="mäil.example.org"), "printable ASCII only"),
        (pxe.BootValues(buildid_url="tftp://10.0.0.1/a b"), "holds a space"),
        (pxe.BootValues(buildid_url="10.0.0.1/buildos-buildid"), "expected a URL"),
        (pxe.BootValues(admin_email="admin.example.org"), "expected an email address"),
        (pxe.BootValues(ssh_key='ssh-ed25519 AAAA "me"'), "holds a double quote"),
        (pxe.BootValues(ssh_key="AAAA me@host"), "expected an OpenSSH public key"),
        (pxe.BootValues(agent='/usr/bin/agent "x"'), "holds a double quote"),
        (pxe.BootValues(agent="bbot-agent --verbose"), "expected an absolute path first"),
        (pxe.BootValues(extra=('initpy.motd="hello',)), "holds a double quote"),
        (pxe.BootValues(extra=("--", "single")), "would not read the append line"),
        (pxe.BootValues(buildid_url="http://x/" + "a" * 2000), "the kernel takes about 1900"),
    ],
)
def test_values_pxelinux_cannot_carry_are_refused(values: pxe.BootValues, words: str) -> None:
    with pytest.raises(BuildError, match=words):
        pxe.append_line(values, PARAMETERS)


def test_the_ssh_key_alone_is_quoted_and_keeps_its_spaces() -> None:
    line = pxe.append_line(pxe.BootValues(ssh_key=ed25519_key("two words")), PARAMETERS)
    assert line == f'buildos.ssh_key="{ed25519_key("two words")}"'
    pairs, _after, problems = cmdline.tokenize(line)
    assert pairs == [("buildos.ssh_key", ed25519_key("two words"))] and problems == []


def test_the_agent_is_quoted_and_keeps_its_arguments() -> None:
    agent = "/usr/local/bin/bbot-agent --verbose 3"
    line = pxe.append_line(pxe.BootValues(agent=agent), PARAMETERS)
    assert line == f'initpy.monitor.agent="{agent}"'
    config = cmdline.parse(line, PARAMETERS.values())
    assert config.problems == () and config.values["initpy.monitor.agent"] == agent


def test_macs_are_checked_and_named_as_pxelinux_asks() -> None:
    assert pxe.mac_config_name("de:ad:be:ef:b8:da") == "01-de-ad-be-ef-b8-da"
    for bad in ("de:ad:be:ef:b8", "de:ad:be:ef:b8:zz", "dead.beef.b8da"):
        with pytest.raises(BuildError, match="not a MAC address"):
            pxe.mac_config_name(bad)


def test_a_rollout_renames_the_build_id_last(
    tmp_path: os.PathLike[str], outdir: str, syslinux: str, efi: str
) -> None:
    tftp = os.path.join(str(tmp_path), "tftp")
    pxe.lay_out(outdir, tftp, VALUES, syslinux=syslinux, efi=efi, parameters=PARAMETERS)
    config = read(os.path.join(tftp, "pxelinux.cfg", "default"))
    new = os.path.join(str(tmp_path), "new")
    write(os.path.join(new, "buildos-image"), b"kernel 2")
    write(os.path.join(new, "buildos-initrd"), b"initrd 2")
    write(os.path.join(new, "buildos-buildid"), ("e" * 64 + "\n").encode())
    order: list[str] = []

    def rename(src: str, dst: str) -> None:
        # Every file is complete under its temporary name before it takes its own.
        assert read(src) == read(os.path.join(new, os.path.basename(dst)))
        order.append(os.path.relpath(dst, tftp))
        os.replace(src, dst)

    assert pxe.install_build(new, tftp, rename) == "e" * 64
    assert order == ["buildos/buildos-image", "buildos/buildos-initrd", "buildos/buildos-buildid"]
    assert read(os.path.join(tftp, "buildos", "buildos-initrd")) == b"initrd 2"
    assert read(os.path.join(tftp, "pxelinux.cfg", "default")) == config
    # Rolling back is the same step with the old OUTDIR.
    assert pxe.install_build(outdir, tftp) == BUILD_ID


def test_an_outdir_that_is_not_mkinitrds_is_refused(
    tmp_path: os.PathLike[str], outdir: str
) -> None:
    tftp = os.path.join(str(tmp_path), "tftp")
    write(os.path.join(outdir, "buildos-buildid"), b"<html>\n")
    with pytest.raises(BuildError, match="not a build id"):
        pxe.install_build(outdir, tftp)
    os.unlink(os.path.join(outdir, "buildos-initrd"))
    with pytest.raises(BuildError, match="has no buildos-initrd"):
        pxe.install_build(outdir, tftp)
    assert not os.path.exists(tftp)


def test_the_command_line(
    tmp_path: os.PathLike[str],
    outdir: str,
    syslinux: str,
    efi: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tftp = os.path.join(str(tmp_path), "tftp")
    key_file = os.path.join(str(tmp_path), "id_ed25519.pub")
    write(key_file, (ed25519_key("me@host") + "\n").encode())
    argv = [outdir, tftp, "--syslinux", syslinux, "--efi", efi, "--server", "10.0.2.2"]
    argv += ["--ssh-key", f"@{key_file}", "--mac", "52:54:00:12:34:56"]
    argv += ["--append", "console=ttyS0 initpy.monitor.interval=5", "--timeout", "0"]
    argv += ["--agent", "/usr/local/bin/agent --once"]
    assert pxe_cli.main(argv) == 0
    config = read(os.path.join(tftp, "pxelinux.cfg", "01-52-54-00-12-34-56")).decode()
    assert (
        "  append buildos.buildid_url=tftp://10.0.2.2/buildos/buildos-buildid "
        f'buildos.ssh_key="{ed25519_key("me@host")}" '
        'initpy.monitor.agent="/usr/local/bin/agent --once" '
        "console=ttyS0 initpy.monitor.interval=5\n"
    ) in config
    assert (
        pxe_cli.main([outdir, tftp, "--syslinux", syslinux, "--efi", efi, "--admin-email", "a b@c"])
        == 1
    )
    assert "holds a space" in capsys.readouterr().err
    assert os.access(os.path.join(REPO, "scripts", "pxe-layout"), os.X_OK)


def test_pxelinux_and_ldlinux_come_from_debian(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fetched into the shared cache once (about 8 s), as the kernel is."""
    folder = pxe.fetch_syslinux()
    pxelinux, ldlinux = (read(os.path.join(folder, n)) for n in ("pxelinux.0", "ldlinux.c32"))
    assert len(pxelinux) > 10_000 and ldlinux.startswith(b"\x7fELF")

    def no_download(argv: list[str], **kwargs: object) -> bytes:
        assert argv[:2] != ["apt-get", "download"], "fetched again"
        return command.run(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(debfiles, "run", no_download)
    assert pxe.fetch_syslinux() == folder


def test_an_lz4_initrd_travels_as_zstd_with_the_same_archives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INITPY_CACHE", str(tmp_path / "cache"))
    raw = cpio.archive([cpio.regular("init", data=b"#!/bin/sh\n" * 100, perm=0o755)], 0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "buildos-image").write_bytes(b"kernel")
    (out / "buildos-initrd").write_bytes(cpio.compress(raw, "lz4") + cpio.compress(raw, "lz4"))
    (out / "buildos-buildid").write_text("0" * 64 + "\n")
    pxe.install_build(str(out), str(tmp_path / "tftp"))
    sent = (tmp_path / "tftp" / "buildos" / "buildos-initrd").read_bytes()
    assert sent.startswith(pxe.ZSTD_MAGIC)
    assert cpio.decompress(sent) == raw + raw
    pxe.install_build(str(out), str(tmp_path / "kept"), repack=False)
    kept = (tmp_path / "kept" / "buildos" / "buildos-initrd").read_bytes()
    assert kept == (out / "buildos-initrd").read_bytes()


def test_the_docs_show_the_options_table() -> None:
    """docs/builder.md's pxe-layout table is the one the settings generate."""
    from tests.unit.test_mkinitrd import docs_section

    assert docs_section("pxe-layout options") == settings.docs_table(pxe_cli.SETTINGS)
