"""The builder's one contract with PID 1: where things are, and the manifest.

Every path inside the initrd that both sides know is named here once.
mkinitrd writes `MANIFEST` (JSON) and PID 1 reads it at boot: which hooks
were chosen, which kernel modules were packed with what they need first,
the kernel they were packed for, and the build id that `buildos-buildid`
carries. Nothing else passes between the two.

Only the standard library is imported: this module is on PID 1's start-up
path, and the builder imports it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# -- paths inside the initrd ---------------------------------------------------------

LIB = "/usr/lib/initpy"
HOOKS_DIR = f"{LIB}/hooks"
MANIFEST = f"{LIB}/manifest.json"
FROZEN_DIR = f"{LIB}/frozen"
FROZEN_EXE = f"{FROZEN_DIR}/initpy"
FROZEN_INTERNAL = f"{FROZEN_DIR}/_internal"
PRIVATE_LIB_DIR = f"{LIB}/lib"
PRIVATE_LOADER = f"{PRIVATE_LIB_DIR}/ld-linux-x86-64.so.2"
PRIVATE_BIN_DIR = f"{LIB}/bin"
PRIVATE_MODPROBE = f"{PRIVATE_BIN_DIR}/modprobe"
MODULES_ROOT = "/lib/modules"
# What PID 1 writes while it runs, for the rescue shell and the OS.
RUN_DIR = "/run/initpy"
REPORT = f"{RUN_DIR}/report.json"
# The Python tree of what runs on the booted host after the hand-off (the
# monitor: initpy/host, this module, tftpy), run by the OS's python3 with
# this folder as its PYTHONPATH; the monitor hook puts it into the image.
HOST_PYTHONPATH = f"{LIB}/python"
# What PID 1 leaves for the OS's services, KEY=VALUE lines from the parsed
# command line: the buildos.* values (hooks/services.py) and the monitor's
# own (hooks/monitor.py). The monitor reads both.
ETC_DIR = "/etc/initpy"
BUILDOS_ENV = f"{ETC_DIR}/buildos.env"
MONITOR_ENV = f"{ETC_DIR}/monitor.env"
# The state disk's mount point and the init's own folder on it.
STATE_MOUNT = "/state"
STATE_OWN_DIR = f"{STATE_MOUNT}/initpy"

# The PATH of PID 1, its shells and the hand-off (the kernel gives init none).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """The manifest is missing a field or has one of the wrong kind."""


@dataclass(frozen=True)
class PackedModule:
    """A kernel module in the initrd, and the modules it needs loaded first."""

    name: str
    path: str  # relative to /lib/modules/<version>
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """What the builder put into the initrd, for PID 1."""

    build_id: str
    hooks: tuple[str, ...]
    kernel_version: str = ""
    modules: tuple[PackedModule, ...] = ()  # in an order that loads dependencies first

    def to_json(self) -> bytes:
        body = {
            "version": MANIFEST_VERSION,
            "build_id": self.build_id,
            "hooks": list(self.hooks),
            "kernel_version": self.kernel_version,
            "modules": [
                {"name": m.name, "path": m.path, "needs": list(m.needs)} for m in self.modules
            ],
        }
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()

    @staticmethod
    def from_json(text: str | bytes) -> Manifest:
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ManifestError("not a JSON object")
        if body.get("version") != MANIFEST_VERSION:
            raise ManifestError(
                f"version {body.get('version')!r}, this init reads {MANIFEST_VERSION}"
            )
        modules = []
        for entry in _list(body, "modules"):
            if not isinstance(entry, dict):
                raise ManifestError(f"modules: {entry!r} is not an object")
            modules.append(
                PackedModule(
                    _text(entry, "name"), _text(entry, "path"), tuple(_strings(entry, "needs"))
                )
            )
        return Manifest(
            _text(body, "build_id"),
            tuple(_strings(body, "hooks")),
            _text(body, "kernel_version"),
            tuple(modules),
        )


def _list(body: dict[str, object], key: str) -> list[object]:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise ManifestError(f"{key}: expected a list, got {type(value).__name__}")
    return value


def _strings(body: dict[str, object], key: str) -> list[str]:
    values = _list(body, key)
    if not all(isinstance(v, str) for v in values):
        raise ManifestError(f"{key}: expected a list of strings")
    return [str(v) for v in values]


def _text(body: dict[str, object], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise ManifestError(f"{key}: expected a string, got {type(value).__name__}")
    return value
