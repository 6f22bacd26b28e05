"""The toolchain hook: its units, the user and cache root it makes at boot.

The units are the hook's `os_files` (mkinitrd --rootfs writes them);
systemd reads them without a complaint, and the paths they name are the
ones initpy/host uses. The boot side runs on the fake kernel.
"""

from __future__ import annotations

import os

from initpy.devtools.fake import FakeKernel, HandedOff
from initpy.host import settings as host_settings
from initpy.host import toolchain as host_toolchain
from tests.unit.conftest import (
    hook_module,
    make_executable,
    needs_systemd_analyze,
    run_boot,
    systemd_verify,
)

toolchain = hook_module("toolchain")
SYSTEMD = "/lib/systemd/systemd"
UNITS = "/etc/systemd/system"


def unit(name: str) -> str:
    text: str = next(f.text for f in toolchain.HOOK.os_files if f.path == f"{UNITS}/{name}")
    return text


def test_the_units_name_what_initpy_host_uses() -> None:
    assert toolchain.CACHE_ROOT == host_toolchain.CACHE_ROOT
    assert toolchain.RESULT == host_settings.TOOLCHAIN_RESULT
    bootstrap = unit("initpy-toolchain.service")
    for line in (
        "Type=oneshot",
        "User=initpy-toolchain",
        "RuntimeDirectory=initpy-toolchain",
        "RuntimeDirectoryPreserve=yes",
        "After=network-online.target postfix.service",
        'ExecCondition=/usr/bin/test -n "${BUILDOS_TOOLCHAIN_URL}"',
        "ExecStart=/usr/bin/python3 -s -B -P -m initpy.host.toolchain",
    ):
        assert f"\n{line}\n" in bootstrap, line
    assert "Reboot" not in bootstrap and "FailureAction" not in bootstrap
    # multi-user.target does not wait for a build, nor for the agent after it.
    assert "\nDefaultDependencies=no\n" in bootstrap
    assert "\nDefaultDependencies=no\n" in unit("bbot-agent.service")
    agent = unit("bbot-agent.service")
    for line in (
        "User=build",
        "Requires=initpy-toolchain.service",
        "After=initpy-toolchain.service",
        "ConditionPathExists=/run/initpy-toolchain/toolchain.env",
        "EnvironmentFile=/run/initpy-toolchain/toolchain.env",
        "ExecStart=/usr/bin/env ${BUILDOS_TOOLCHAIN_AGENT}",
        "Restart=always",
    ):
        assert f"\n{line}\n" in agent, line


def booted(root: str, units: bool = True) -> FakeKernel:
    """systemd, and the hook's units where mkinitrd --rootfs puts them."""
    kernel = FakeKernel(root=root, cmdline="")
    make_executable(kernel, SYSTEMD)
    if units:
        kernel.mkdir(UNITS)
        for os_file in toolchain.HOOK.os_files:
            kernel.write_text(os_file.path, os_file.text)
    return kernel


def test_the_user_and_the_cache_root_are_made_by_root_for_the_bootstrap(
    tmp_path: os.PathLike[str],
) -> None:
    kernel = booted(str(tmp_path))
    ended = run_boot(kernel, [toolchain.HOOK])
    assert isinstance(ended, HandedOff)
    passwd = kernel.read_text("/etc/passwd").splitlines()
    assert (
        "initpy-toolchain:*:1101:1101:initpy toolchain:/run/initpy-toolchain:/usr/sbin/nologin"
        in passwd
    )
    assert kernel.stat(toolchain.CACHE_ROOT).st_mode & 0o777 == 0o755
    assert ("chown", toolchain.CACHE_ROOT, 1101, 1101) in kernel.calls
    assert any(
        line.endswith(f"cache {toolchain.CACHE_ROOT} created") for line in kernel.console_lines
    )


def test_a_cache_root_already_there_is_left_to_the_bootstrap_to_judge(
    tmp_path: os.PathLike[str],
) -> None:
    kernel = booted(str(tmp_path))
    kernel.mkdir(toolchain.CACHE_ROOT)
    run_boot(kernel, [toolchain.HOOK])
    assert not [c for c in kernel.calls if c[:2] == ("chown", toolchain.CACHE_ROOT)]
    assert any(line.endswith("kept") for line in kernel.console_lines)


def test_nothing_is_made_when_systemd_does_not_come_next(tmp_path: os.PathLike[str]) -> None:
    kernel = FakeKernel(root=str(tmp_path), cmdline="")
    run_boot(kernel, [toolchain.HOOK])
    assert not kernel.exists(toolchain.CACHE_ROOT)


def test_nothing_is_made_in_an_image_without_the_units(tmp_path: os.PathLike[str]) -> None:
    kernel = booted(str(tmp_path), units=False)
    run_boot(kernel, [toolchain.HOOK])
    assert not kernel.exists(toolchain.CACHE_ROOT)
    assert any(
        "not installed: no /etc/systemd/system/initpy-toolchain" in line
        for line in kernel.console_lines
    )


@needs_systemd_analyze
def test_systemd_reads_the_units_without_a_complaint(tmp_path: os.PathLike[str]) -> None:
    names = ["initpy-toolchain.service", "bbot-agent.service"]
    assert systemd_verify(str(tmp_path), {name: unit(name) for name in names}) == (0, "")
