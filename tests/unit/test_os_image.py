"""What the booted OS gets from the hooks, and os/packages.list.

The hooks' `os_files` (units, their scripts, config) and `os_packages`,
which mkinitrd --rootfs writes and checks (initpy.builder.rootfs). The full
image boots in tests/vm/test_fullos.py and a plain Debian tree in
tests/vm/test_plain_tree.py; these catch, in seconds, a unit that names a
missing script, a script sh cannot parse, a package a hook needs that the
list lacks, or a boot mail that no longer understands initpy's report.
"""

from __future__ import annotations

import configparser
import json
import subprocess
from pathlib import Path

import pytest

from hooks.services import os_files as services_os
from initpy.devtools.fake import FakeKernel
from initpy.runtime.hook import Hook, discover
from initpy.runtime.osimage import OS_PROGRAMS, OsFile
from initpy.runtime.report import Outcome, Report, Result, StateRecord
from tests.unit.conftest import HOOKS_DIR

REPO = Path(__file__).resolve().parents[2]
HOOKS = sorted(discover([HOOKS_DIR]).values(), key=lambda h: h.name)
OS_FILES = [(hook, f) for hook in HOOKS for f in hook.os_files]
SCRIPTS = [(h, f) for h, f in OS_FILES if f.text.startswith("#!/bin/sh")]
# The enabled services (initpy-reboot.service is started by its path unit).
UNITS = [(h, f) for h, f in OS_FILES if f.path.endswith(".service") and f.wanted_by]


def packages() -> list[str]:
    lines = (REPO / "os" / "packages.list").read_text().splitlines()
    return [w for line in lines for w in line.split("#")[0].split()]


def name(case: tuple[Hook, OsFile]) -> str:
    return f"{case[0].name}:{case[1].path}"


def test_the_package_list_has_what_the_spec_and_every_hook_need() -> None:
    wanted = {
        "systemd", "udev", "openssh-server", "postfix", "dnsmasq", "ifupdown", "nftables",
        "btrfs-progs", "e2fsprogs", "util-linux", "hdparm", "fdisk", "ca-certificates",
    }  # fmt: skip
    wanted |= {p.name for hook in HOOKS for p in hook.os_packages}
    listed = packages()
    assert wanted <= set(listed), wanted - set(listed)
    assert len(listed) == len(set(listed)), "a package is listed twice"


@pytest.mark.parametrize("case", SCRIPTS, ids=name)
def test_the_hooks_scripts_parse_and_are_executable(
    case: tuple[Hook, OsFile], tmp_path: Path
) -> None:
    _hook, script = case
    assert script.mode == 0o755, f"{script.path} is not executable"
    assert script.path.startswith(OS_PROGRAMS + "/")
    (tmp_path / "script").write_text(script.text)
    subprocess.run(["sh", "-n", str(tmp_path / "script")], check=True)


@pytest.mark.parametrize("case", UNITS, ids=name)
def test_every_unit_runs_what_its_hook_ships_or_needs_and_is_enabled(
    case: tuple[Hook, OsFile],
) -> None:
    hook, unit = case
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.text)
    program = parser["Service"]["ExecStart"].split()[0]
    known = {f.path for f in hook.os_files} | {p.path for p in hook.os_packages}
    assert program in known, f"{unit.path}: {program} is neither shipped nor a needed package's"
    assert parser["Install"]["WantedBy"] == unit.wanted_by == "multi-user.target"


def boot_mail(tmp_path: Path, env: str, report: dict[str, object]) -> tuple[str, str]:
    """Run the boot mail script with a stand-in `mail`; (its output, the mail)."""
    (tmp_path / "bin").mkdir()
    mail = tmp_path / "bin" / "mail"
    mail.write_text(f'#!/bin/sh\n{{ echo "ARGS: $*"; cat; }} > {tmp_path}/sent\n')
    mail.chmod(0o755)
    (tmp_path / "buildos.env").write_text(env)
    (tmp_path / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (tmp_path / "buildos-boot-mail").write_text(services_os.BOOT_MAIL_SCRIPT)
    done = subprocess.run(
        ["sh", str(tmp_path / "buildos-boot-mail")],
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
