"""What initpy-monitor, initpy-toolchain and initpy-agent are told: the env files PID 1 left.

PID 1 parsed the kernel command line once (initpy.runtime.cmdline: the
kernel's quoting rules, checked values, warnings in the boot report) and
left the values in files, which the host's programs read and nothing
else: `buildos.env` (hooks/services: `BUILDOS_BUILDID_URL`,
`BUILDOS_ADMIN_EMAIL`, `BUILDOS_TOOLCHAIN_URL`, `BUILDOS_TOOLCHAIN_TRUST`),
`monitor.env` (hooks/monitor.py: `INITPY_MONITOR_INTERVAL`) and, with an
operator's agent, `agent.env` (hooks/monitor.py: `INITPY_MONITOR_AGENT`).
Reading /proc/cmdline again would be a second parser that could disagree
with the first. Each line is `KEY=VALUE`, the value verbatim. Also the
running image's build id and this boot's toolchain, which the monitor
compares with what its URLs say.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from initpy.host.fetch import BUILD_ID, parse_build_id
from initpy.runtime import layout

# The files PID 1 writes (hooks/services, hooks/monitor.py).
BUILDOS_ENV = layout.BUILDOS_ENV
MONITOR_ENV = layout.MONITOR_ENV
AGENT_ENV = layout.AGENT_ENV
# What initpy-toolchain leaves for the agent's service and the monitor (its
# RuntimeDirectory=, kept after it exits): BUILDOS_TOOLCHAIN_ID is the sha256
# of the checksums file this boot's toolchain was built from.
TOOLCHAIN_RESULT = "/run/initpy-toolchain/toolchain.env"
DEFAULT_INTERVAL = 600.0
MIN_INTERVAL = 1.0


@dataclass(frozen=True)
class Settings:
    """What PID 1 left for the monitor."""

    buildid_url: str | None = None
    admin_email: str | None = None
    interval: float = DEFAULT_INTERVAL
    toolchain_url: str | None = None


@dataclass(frozen=True)
class ToolchainSettings:
    """What PID 1 left for initpy-toolchain."""

    url: str | None
    trust: str | None
    admin_email: str | None


def read_env_file(path: str) -> dict[str, str]:
    """`KEY=VALUE` lines, each value unquoted as a shell would; a missing file is empty.

    PID 1 writes them with initpy.runtime.etc.env_file (shlex-quoted).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    found = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            try:
                words = shlex.split(value)
            except ValueError:  # unbalanced quotes: not ours; keep it as written
                words = [value]
            found[key.strip()] = words[0] if len(words) == 1 else value
    return found


def load_settings(
    buildos_env: str = BUILDOS_ENV, monitor_env: str = MONITOR_ENV
) -> tuple[Settings, list[str]]:
    """The settings, and the problems found in them (each already defaulted)."""
    buildos, own = read_env_file(buildos_env), read_env_file(monitor_env)
    problems = []
    interval = DEFAULT_INTERVAL
    raw = own.get("INITPY_MONITOR_INTERVAL")
    if raw:
        try:
            interval = float(raw)
            if not interval >= MIN_INTERVAL:
                raise ValueError
        except ValueError:
            interval = DEFAULT_INTERVAL
            problems.append(
                f"{monitor_env}: INITPY_MONITOR_INTERVAL={raw!r} is not a number of seconds "
                f">= {MIN_INTERVAL:g}; using {DEFAULT_INTERVAL:g}"
            )
    return (
        Settings(
            buildid_url=buildos.get("BUILDOS_BUILDID_URL") or None,
            admin_email=buildos.get("BUILDOS_ADMIN_EMAIL") or None,
            interval=interval,
            toolchain_url=buildos.get("BUILDOS_TOOLCHAIN_URL") or None,
        ),
        problems,
    )


def load_agent(agent_env: str = AGENT_ENV) -> tuple[str, ...]:
    """The operator's agent: its command line split into words as a shell would
    (quotes group them), the program first; ValueError says what is wrong."""
    raw = read_env_file(agent_env).get("INITPY_MONITOR_AGENT", "")
    try:
        argv = tuple(shlex.split(raw))
    except ValueError as exc:
        raise ValueError(f"{agent_env}: INITPY_MONITOR_AGENT={raw!r}: {exc}") from None
    if not argv:
        raise ValueError(f"{agent_env}: no INITPY_MONITOR_AGENT")
    return argv


def load_toolchain_settings(buildos_env: str = BUILDOS_ENV) -> ToolchainSettings:
    buildos = read_env_file(buildos_env)
    return ToolchainSettings(
        url=buildos.get("BUILDOS_TOOLCHAIN_URL") or None,
        trust=buildos.get("BUILDOS_TOOLCHAIN_TRUST") or None,
        admin_email=buildos.get("BUILDOS_ADMIN_EMAIL") or None,
    )


def running_build_id(manifest: str = layout.MANIFEST) -> tuple[str | None, str]:
    """The running image's build id from its manifest, or None and why not."""
    try:
        with open(manifest, encoding="utf-8") as f:
            build_id = layout.Manifest.from_json(f.read()).build_id
    except OSError as exc:
        return None, f"{manifest}: {exc.strerror or exc}"
    except layout.ManifestError as exc:
        return None, f"{manifest}: {exc}"
    try:
        return parse_build_id(build_id.encode()), ""
    except ValueError as exc:
        return None, f"{manifest}: build_id {exc}"


def running_toolchain(result: str = TOOLCHAIN_RESULT) -> str | None:
    """The sha256 of the checksums file this boot's toolchain came from, if it was built."""
    key = read_env_file(result).get("BUILDOS_TOOLCHAIN_ID", "").lower()
    return key if BUILD_ID.fullmatch(key) else None
