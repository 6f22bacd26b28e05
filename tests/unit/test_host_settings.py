"""initpy.host.settings: the env files PID 1 leaves and the running image's build id, read back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from initpy.host import settings
from initpy.runtime import layout

OLD = "a" * 64


def test_the_running_id_comes_from_the_manifest(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(str(tmp_path), "manifest.json")
    assert settings.running_build_id(path)[0] is None
    with open(path, "wb") as f:
        f.write(layout.Manifest(OLD, ("modules",)).to_json())
    assert settings.running_build_id(path) == (OLD, "")
    with open(path, "wb") as f:
        f.write(layout.Manifest("", ("modules",)).to_json())
    running, why = settings.running_build_id(path)
    assert running is None and "empty answer" in why


def test_settings_are_read_verbatim_and_bad_values_defaulted(tmp_path: os.PathLike[str]) -> None:
    buildos = os.path.join(str(tmp_path), "buildos.env")
    own = os.path.join(str(tmp_path), "monitor.env")
    with open(buildos, "w") as f:
        f.write("BUILDOS_BUILDID_URL=tftp://10.0.0.1/buildos/buildos-buildid\n")
        f.write("BUILDOS_ADMIN_EMAIL=admin@example.org\n")
    with open(own, "w") as f:
        f.write("INITPY_MONITOR_INTERVAL=0\n")
    found, problems = settings.load_settings(buildos, own)
    assert found == settings.Settings(
        "tftp://10.0.0.1/buildos/buildos-buildid",
        "admin@example.org",
        settings.DEFAULT_INTERVAL,
    )
    assert "INITPY_MONITOR_INTERVAL='0'" in problems[0]
    assert settings.load_settings("/nonexistent", "/nonexistent") == (settings.Settings(), [])


def test_the_env_files_pid1_writes_read_back_whole(tmp_path: Path) -> None:
    """PID 1 quotes every value for the shell; the monitor reads the same values back."""
    from initpy.runtime.etc import env_file

    values = {
        "BUILDOS_BUILDID_URL": "http://10.0.0.1/buildos/buildos-buildid?a=1&b=$(x)",
        "INITPY_MONITOR_AGENT": "/usr/local/bin/agent --name 'build host'",
        "INITPY_MONITOR_INTERVAL": "600",
    }
    path = tmp_path / "buildos.env"
    path.write_text(env_file(values))
    assert settings.read_env_file(str(path)) == values


def test_the_agents_command_line_is_split_as_a_shell_would(tmp_path: Path) -> None:
    """initpy-agent's words: quotes group them; what cannot be split is named."""
    from initpy.runtime.etc import env_file

    path = tmp_path / "agent.env"
    path.write_text(env_file({"INITPY_MONITOR_AGENT": "/opt/agent --name 'build host' -v"}))
    assert settings.load_agent(str(path)) == ("/opt/agent", "--name", "build host", "-v")
    path.write_text(env_file({"INITPY_MONITOR_AGENT": "/opt/agent --name 'build host"}))
    unclosed = r"agent\.env: INITPY_MONITOR_AGENT=.*No closing quotation"
    with pytest.raises(ValueError, match=unclosed):
        settings.load_agent(str(path))
    with pytest.raises(ValueError, match=r"nonexistent: no INITPY_MONITOR_AGENT"):
        settings.load_agent("/nonexistent")
