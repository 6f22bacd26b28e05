"""The OS image's own files (os/): the package list, the overlay's units and
scripts, and the boot mail's summary of a real report.json.

The full image itself boots in tests/vm/test_fullos.py; these catch, in
seconds, a unit that names a missing script, a script sh cannot parse, or
a boot mail that no longer understands initpy's report.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
from pathlib import Path

import pytest

from initpy.devtools.fake import FakeKernel
from initpy.runtime.report import Outcome, Report, Result, StateRecord

REPO = Path(__file__).resolve().parents[2]
OS = REPO / "os"
OVERLAY = OS / "overlay"
UNITS = sorted((OVERLAY / "etc/systemd/system").glob("*.service"))
SCRIPTS = sorted(p for p in (OVERLAY / "usr/local/sbin").iterdir())


def packages() -> list[str]:
    lines = (OS / "packages.list").read_text().splitlines()
    return [w for line in lines for w in line.split("#")[0].split()]


def test_the_package_list_has_what_the_spec_names() -> None:
    wanted = {
        "systemd", "udev", "openssh-server", "postfix", "dnsmasq", "ifupdown", "nftables",
        "btrfs-progs", "e2fsprogs", "util-linux", "hdparm", "fdisk", "ca-certificates",
    }  # fmt: skip
    listed = packages()
    assert wanted <= set(listed), wanted - set(listed)
    assert len(listed) == len(set(listed)), "a package is listed twice"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_overlay_scripts_parse_and_are_executable(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable (chmod 755)"
    subprocess.run(["sh", "-n", str(script)], check=True)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_every_unit_runs_a_script_of_the_overlay_and_is_enabled(unit: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    program = parser["Service"]["ExecStart"].split()[0]
    assert (OVERLAY / program.lstrip("/")).is_file(), f"{unit.name}: {program} not in os/overlay"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    assert unit.name in (OS / "customize").read_text(), f"os/customize does not enable {unit.name}"


def boot_mail(tmp_path: Path, env: str, report: dict[str, object]) -> tuple[str, str]:
    """Run the boot mail script with a stand-in `mail`; (its output, the mail)."""
    (tmp_path / "bin").mkdir()
    mail = tmp_path / "bin" / "mail"
    mail.write_text(f'#!/bin/sh\n{{ echo "ARGS: $*"; cat; }} > {tmp_path}/sent\n')
    mail.chmod(0o755)
    (tmp_path / "buildos.env").write_text(env)
    (tmp_path / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    done = subprocess.run(
        ["sh", str(OVERLAY / "usr/local/sbin/buildos-boot-mail")],
        env={
            "PATH": f"{tmp_path}/bin:/usr/bin:/bin",
            "BUILDOS_ENV_FILE": str(tmp_path / "buildos.env"),
            "INITPY_REPORT": str(tmp_path / "report.json"),
        },
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    sent = tmp_path / "sent"
    return done.stdout, sent.read_text() if sent.exists() else ""


def test_the_boot_mail_summarises_initpys_report(tmp_path: Path) -> None:
    report = Report(FakeKernel(root=str(tmp_path / "root")))
    report.outcome = Outcome.HANDOFF
    report.states = [
        StateRecord("early_mounts", 0, 12, Result.OK, "mounted /proc /sys"),
        StateRecord("mail_relay", 900, 9, Result.OK, "postfix relays through [10.0.2.100]"),
    ]
    report.warnings = ["restore_state: no saved seed"]
    env = "BUILDOS_SMTP_RELAY='10.0.2.100'\nBUILDOS_BUILD_ID='" + "c0ffee" * 10 + "abcd'\n"
    out, sent = boot_mail(tmp_path, env, report.as_json())
    assert "sent to root" in out
    assert sent.splitlines()[0].startswith("ARGS: -s buildos: ")
    assert f"(build {'c0ffee' * 2}) root" in sent.splitlines()[0]
    assert f"build id:   {'c0ffee' * 10}abcd" in sent
    assert "  outcome: handoff" in sent
    assert '  early_mounts   ok       12 ms  "mounted /proc /sys"' in sent
    assert "  mail_relay     ok        9 ms" in sent
    assert '  warning: "restore_state: no saved seed"' in sent


def test_without_a_relay_the_boot_mail_succeeds_and_sends_nothing(tmp_path: Path) -> None:
    out, sent = boot_mail(tmp_path, "BUILDOS_ADMIN_EMAIL='a@b.example'\n", {"outcome": "handoff"})
    assert "no buildos.smtp_relay" in out
    assert sent == ""
