"""The monitor hook: its units, the settings it writes at boot, and what it ships.

The units are the hook's `os_files` (mkinitrd --rootfs writes them:
tests/unit/test_rootfs.py); systemd reads them without a complaint. The
boot side runs on the fake kernel with the units in place, as the build
leaves them: monitor.env appears only when the hand-off goes to systemd.
The build side: the files the hook asks mkinitrd for are enough for
Debian's python3 to run the monitor from the image's tree alone, tftp://
included, and mkinitrd puts them into the initrd.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import tftpy

from initpy.builder import cpio, mkinitrd
from initpy.devtools.fake import FakeKernel, HandedOff
from initpy.host import settings as host_settings
from initpy.runtime import layout
from tests.unit.conftest import (
    HOOKS_DIR,
    hook_module,
    make_executable,
    needs_systemd_analyze,
    read_report,
    run_boot,
    systemd_verify,
)
from tests.unit.test_mkinitrd import fake_freezer, module_tree

monitor = hook_module("monitor")
services = hook_module("services")
BUILD_ID = "c" * 64
SYSTEMD = "/lib/systemd/systemd"
UNITS = "/etc/systemd/system"


def booted_host(root: str, cmdline: str, *, units: bool = True) -> FakeKernel:
    """systemd, and the monitor's units where mkinitrd --rootfs puts them."""
    kernel = FakeKernel(root=root, cmdline=cmdline)
    make_executable(kernel, SYSTEMD)
    if units:
        kernel.mkdir(UNITS)
        for os_file in monitor.HOOK.os_files:
            kernel.write_text(os_file.path, os_file.text)
    return kernel


def read(kernel: FakeKernel, path: str) -> str:
    with open(kernel.path(path)) as f:
        return f.read()


def test_the_units_come_with_the_hook_and_the_monitor_is_enabled() -> None:
    files = {f.path: f for f in monitor.HOOK.os_files}
    service = files[f"{UNITS}/initpy-monitor.service"]
    assert service.wanted_by == "multi-user.target"
    for line in (
        "Type=notify",
        "User=initpy-monitor",
        "Group=initpy-monitor",
        "WorkingDirectory=/",
        "RuntimeDirectory=initpy-monitor",
        f"Environment=PYTHONPATH={layout.HOST_PYTHONPATH}",
        "ExecStart=/usr/bin/python3 -s -B -P -m initpy.host.monitor",
        "SyslogIdentifier=initpy-monitor",
        "Restart=always",
        "Wants=network-online.target initpy-reboot.path",
        "WantedBy=multi-user.target",
    ):
        assert f"\n{line}\n" in service.text, line
    path_unit = files[f"{UNITS}/initpy-reboot.path"].text
    assert "\nPathExists=/run/initpy-monitor/reboot\n" in path_unit
    assert "\nUnit=initpy-reboot.service\n" in path_unit
    reboot = files[f"{UNITS}/initpy-reboot.service"]
    assert "\nExecStart=/bin/systemctl reboot\n" in reboot.text
    assert reboot.wanted_by is None  # started by the path unit only
    # Root's half reads no file of the monitor's, and cannot hang for ever.
    assert "/run/initpy-monitor" not in reboot.text and "\nTimeoutStartSec=60\n" in reboot.text
    assert [(p.name, p.path) for p in monitor.HOOK.os_packages] == [
        ("python3", "/usr/bin/python3"),
        ("postfix", "/usr/sbin/postdrop"),
    ]


def test_the_settings_are_written_when_systemd_comes_next(tmp_path: os.PathLike[str]) -> None:
    kernel = booted_host(
        str(tmp_path),
        "buildos.buildid_url=tftp://10.0.2.2/buildos/buildos-buildid "
        "buildos.admin_email=admin@example.org initpy.monitor.interval=30 "
        'initpy.monitor.agent="/opt/bbot/agent --mode agent"',
    )
    ended = run_boot(kernel, [services.HOOK, monitor.HOOK])
    assert isinstance(ended, HandedOff) and ended.path == SYSTEMD
    assert any(
        line.startswith("initpy: monitor: ok in ")
        and line.endswith(
            "initpy-monitor.service enabled (poll every 30 s, as initpy-monitor); "
            "initpy-agent.service runs /opt/bbot/agent as build"
        )
        for line in kernel.console_lines
    )
    # The monitor keeps its own uid: nothing changes its unit.
    assert not kernel.exists(f"{UNITS}/initpy-monitor.service.d")
    assert (
        "initpy-monitor:*:1102:1102:initpy monitor:/:/usr/sbin/nologin"
        in read(kernel, "/etc/passwd").splitlines()
    )
    # What the monitor will read is what the command line said.
    settings, problems = host_settings.load_settings(
        kernel.path(layout.BUILDOS_ENV), kernel.path(layout.MONITOR_ENV)
    )
    assert problems == []
    assert settings == host_settings.Settings(
        "tftp://10.0.2.2/buildos/buildos-buildid", "admin@example.org", 30.0
    )
    # And what initpy-agent will run: the agent's own file, its words as quoted.
    argv = host_settings.load_agent(kernel.path(layout.AGENT_ENV))
    assert argv == ("/opt/bbot/agent", "--mode", "agent")


def test_without_an_agent_its_unit_is_skipped(tmp_path: os.PathLike[str]) -> None:
    kernel = booted_host(str(tmp_path), "initpy.monitor.interval=30")
    # A root that a boot with an agent wrote before (its file must not start one now).
    kernel.mkdir(layout.ETC_DIR)
    kernel.write_text(layout.AGENT_ENV, "INITPY_MONITOR_AGENT=/opt/bbot/agent\n")
    ended = run_boot(kernel, [services.HOOK, monitor.HOOK])
    assert isinstance(ended, HandedOff)
    assert any(
        line.endswith(
            "(poll every 30 s, as initpy-monitor); "
            "no initpy.monitor.agent: initpy-agent.service is skipped"
        )
        for line in kernel.console_lines
    )
    assert not kernel.exists(layout.AGENT_ENV)
    assert any(line.startswith("initpy-monitor:") for line in read(kernel, "/etc/passwd").split())


def test_an_agent_that_does_not_split_into_words_is_a_warning_at_boot(
    tmp_path: os.PathLike[str],
) -> None:
    kernel = booted_host(str(tmp_path), """initpy.monitor.agent="/opt/agent --name 'a b" """)
    ended = run_boot(kernel, [services.HOOK, monitor.HOOK])
    assert isinstance(ended, HandedOff)
    command_line = read_report(kernel)["command_line"]
    assert isinstance(command_line, dict)
    assert any(
        "initpy.monitor.agent" in w and "cannot split it into words" in w
        for w in command_line["warnings"]
    ), command_line
    assert not kernel.exists(layout.AGENT_ENV)


@needs_systemd_analyze
def test_systemd_reads_the_units_without_a_complaint(tmp_path: os.PathLike[str]) -> None:
    units = {
        "initpy-monitor.service": monitor.MONITOR_SERVICE,
        "initpy-reboot.path": monitor.REBOOT_PATH,
        "initpy-reboot.service": monitor.REBOOT_SERVICE,
        "initpy-agent.service": monitor.AGENT_SERVICE,
    }
    # An unknown key or a bad value is only a warning on stderr.
    assert systemd_verify(str(tmp_path), units) == (0, "")


def test_sbin_init_that_is_systemd_counts_and_a_second_boot_rewrites_the_settings(
    tmp_path: os.PathLike[str],
) -> None:
    kernel = booted_host(str(tmp_path), "initpy.exec=/sbin/init")
    kernel.mkdir("/sbin")
    kernel.symlink(SYSTEMD, "/sbin/init")
    for _ in range(2):
        ended = run_boot(kernel, [monitor.HOOK])
        assert isinstance(ended, HandedOff) and ended.path == "/sbin/init"
        assert read(kernel, layout.MONITOR_ENV) == "INITPY_MONITOR_INTERVAL=600\n"
        kernel.write_text(layout.MONITOR_ENV, "stale\n")


@pytest.mark.parametrize(
    "cmdline, why",
    [
        ("", "the hand-off goes to /sbin/init, not systemd"),
        ("initpy.exec=/bin/sh", "the hand-off goes to /bin/sh, not systemd"),
    ],
)
def test_nothing_is_installed_when_something_else_comes_next(
    tmp_path: os.PathLike[str], cmdline: str, why: str
) -> None:
    kernel = FakeKernel(root=str(tmp_path), cmdline=cmdline)
    make_executable(kernel, "/sbin/init")
    make_executable(kernel, "/bin/sh")
    run_boot(kernel, [monitor.HOOK])
    assert any(line.endswith(f"not installed: {why}") for line in kernel.console_lines)
    assert not kernel.exists(layout.MONITOR_ENV)


def test_an_image_without_the_units_boots_with_a_warning(tmp_path: os.PathLike[str]) -> None:
    kernel = booted_host(str(tmp_path), "", units=False)
    ended = run_boot(kernel, [monitor.HOOK])
    assert isinstance(ended, HandedOff)
    warnings = read_report(kernel)["warnings"]
    assert isinstance(warnings, list)
    assert any("initpy-monitor.service is not in the image" in w for w in warnings)
    assert any("--rootfs" in w for w in warnings)
    assert not kernel.exists(layout.MONITOR_ENV)


def test_inside_the_frozen_init_the_hook_lists_no_host_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert monitor.host_python_files() == ()
    assert monitor.HOOK.files  # computed on the build host, when mkinitrd imported it


# -- what the image gets ----------------------------------------------------------------


def shipped(files: tuple[str, ...]) -> dict[str, str]:
    """Image path -> build host path, from the hook's "SRC:DST" list."""
    found = {}
    for spec in files:
        source, _, dest = spec.partition(":")
        assert os.path.isfile(source), spec
        found[dest] = source
    return found


@pytest.fixture
def tftp_root(tmp_path: os.PathLike[str]) -> Iterator[tuple[str, int]]:
    root = os.path.join(str(tmp_path), "tftp")
    os.makedirs(os.path.join(root, "buildos"))
    server = tftpy.TftpServer(root)
    thread = threading.Thread(
        target=server.listen,
        kwargs={"listenip": "127.0.0.1", "listenport": 0, "timeout": 0.2},
        daemon=True,
    )
    thread.start()
    assert server.is_running.wait(10)
    yield root, server.listenport
    server.stop(now=True)
    thread.join(10)


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs Debian's python3")
def test_debian_python3_runs_the_monitor_from_the_shipped_files_alone(
    tmp_path: os.PathLike[str], tftp_root: tuple[str, int]
) -> None:
    files = shipped(monitor.HOOK.files)
    python = layout.HOST_PYTHONPATH
    for needed in ("initpy/host/monitor.py", "initpy/host/tftp.py", "initpy/runtime/escape.py"):
        assert f"{python}/{needed}" in files
    # The standard library is all it needs: no third-party package is shipped.
    assert all(dest.startswith(f"{python}/initpy/") for dest in files)
    image = os.path.join(str(tmp_path), "image")
    for dest, source in files.items():
        os.makedirs(os.path.dirname(image + dest), exist_ok=True)
        shutil.copyfile(source, image + dest)
    manifest = os.path.join(image, layout.MANIFEST.lstrip("/"))
    with open(manifest, "wb") as f:
        f.write(layout.Manifest(BUILD_ID, ("monitor",)).to_json())
    root, port = tftp_root
    with open(os.path.join(root, "buildos", "buildos-buildid"), "w") as f:
        f.write(BUILD_ID + "\n")
    env_file = os.path.join(str(tmp_path), "buildos.env")
    with open(env_file, "w") as f:
        f.write(f"BUILDOS_BUILDID_URL=tftp://127.0.0.1:{port}/buildos/buildos-buildid\n")
    (exec_start,) = [
        line for line in monitor.MONITOR_SERVICE.splitlines() if line.startswith("ExecStart=")
    ]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[0] == "/usr/bin/python3"
    done = subprocess.run(
        [*argv, "--check", "--buildos-env", env_file, "--monitor-env", "/nonexistent"]
        + ["--manifest", manifest],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": image + python},
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"running build: {BUILD_ID}" in done.stdout
    assert "the same build: nothing to do" in done.stdout


@pytest.mark.skipif(
    not os.path.exists("/bin/busybox") or shutil.which("depmod") is None,
    reason="busybox-static and kmod are needed: run scripts/bootstrap",
)
def test_mkinitrd_puts_the_monitor_into_the_initrd(tmp_path: os.PathLike[str]) -> None:
    top = str(tmp_path)
    kernel = os.path.join(top, "vmlinuz")
    with open(kernel, "wb") as f:
        f.write(b"kernel image")
    # The hook alone, from a folder of its own (the shipped modules hook
    # wants a real kernel's modules): its files still come from this initpy.
    hooks = os.path.join(top, "hooks")
    os.makedirs(hooks)
    shutil.copy(os.path.join(HOOKS_DIR, "monitor.py"), hooks)
    result = mkinitrd.build(
        mkinitrd.Options(
            kernel=kernel,
            modules=module_tree(top),
            outdir=os.path.join(top, "out"),
            base_hooks_dir=None,
            hook_dirs=(hooks,),
            compress=mkinitrd.Compression.NONE,
        ),
        freezer=fake_freezer(top),
    )
    with open(result.initrd, "rb") as f:
        members = {m.path: m for m in cpio.read_newc(cpio.decompress(f.read()))}
    for dest, source in shipped(monitor.HOOK.files).items():
        with open(source, "rb") as f:
            assert members[dest.lstrip("/")].data == f.read(), dest
    assert "usr/lib/initpy/hooks/monitor.py" in members
    manifest = layout.Manifest.from_json(members[layout.MANIFEST.lstrip("/")].data)
    assert "monitor" in manifest.hooks
