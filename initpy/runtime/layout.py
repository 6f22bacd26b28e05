"""The builder's one contract with PID 1: where things are, and the manifest.

Every path inside the initrd that both sides know is named here once.
mkinitrd writes `MANIFEST` (JSON) and PID 1 reads it at boot: which hooks
were chosen, which kernel modules were packed with what they need first,
the kernel they were packed for, and the build id that `buildos-buildid`
carries. Nothing else passes between the two.

Only the standard library and initpy.runtime.record (which imports
nothing) are imported: this module is on PID 1's start-up path, the builder
imports it too, and the booted host's monitor runs it under the OS's python3.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from initpy.runtime.record import field, frozen, mutable

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
# Busybox: its applets, the rescue shell, and the kernel's
# module autoloader (PRIVATE_MODPROBE links to it).
BUSYBOX = "/usr/bin/busybox"
MODULES_ROOT = "/lib/modules"
# The OS image (mkinitrd --rootfs: the tree's /usr as a squashfs, an archive
# of its own in the initrd) and where the os_image hook mounts it at boot:
# the image read-only, a tmpfs for what the OS writes to /usr, and the
# overlay of both over /usr (hooks/os_image.py, docs/os.md).
OS_IMAGE = f"{LIB}/os.squashfs"
OS_IMAGE_HOOK = "os_image"
OS_OVERLAID = "/usr"
# The modalias index of the packed drivers (format in hooks/modules/modalias.py),
# written by initpy.builder.kmod.alias_index. A file of its own rather than a
# manifest field: the manifest is read at every boot before the hooks load,
# the index (about 300 kB for the generic set) only by load_modules.
MODALIAS_INDEX = f"{LIB}/modalias.json"
FIRMWARE_ROOT = "/lib/firmware"
# What PID 1 writes while it runs, for the rescue shell and the OS.
RUN_DIR = "/run/initpy"
REPORT = f"{RUN_DIR}/report.json"
OS_MOUNTED = f"{RUN_DIR}/os"
OS_WRITES = f"{RUN_DIR}/os-writes"
# The Python tree of what runs on the booted host after the hand-off (the
# monitor: initpy/host, this module and the other runtime modules it
# imports), run by the OS's python3 with this folder as its PYTHONPATH; the
# monitor hook puts it into the image.
HOST_PYTHONPATH = f"{LIB}/python"
# What PID 1 leaves for the OS's services, KEY=VALUE lines from the parsed
# command line: the buildos.* values (hooks/services) and the monitor's
# own (hooks/monitor.py), which the monitor reads; and the operator's agent
# (hooks/monitor.py, only when initpy.monitor.agent is set), which
# initpy-agent.service runs.
ETC_DIR = "/etc/initpy"
BUILDOS_ENV = f"{ETC_DIR}/buildos.env"
MONITOR_ENV = f"{ETC_DIR}/monitor.env"
AGENT_ENV = f"{ETC_DIR}/agent.env"
# The state disk's mount point and the init's own folder on it.
# The agent's TFTP servers for build machines (bbot's --tftp-port, 23400,
# and the per-task ports above it), first and last, inclusive: the only
# ports in.tftpd is started on for the agent (hooks/buildhost.py), and the
# only high ports of the host that br1's filter opens (hooks/network).
AGENT_TFTP_PORTS = (23400, 23999)
# Where the agent asks root's broker for such a server (initpy-agent-tftp.socket,
# hooks/buildhost.py; initpy/host/tftp_broker.py and tftp_client.py).
AGENT_TFTP_SOCKET = "/run/initpy-agent-tftp.sock"
STATE_MOUNT = "/state"
STATE_OWN_DIR = f"{STATE_MOUNT}/initpy"

# The PATH of PID 1, its shells and the hand-off (the kernel gives init none).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """The manifest is missing a field or has one of the wrong kind."""


@frozen
class PackedModule:
    """A kernel module in the initrd, and the modules it needs loaded first."""

    name: str
    path: str  # relative to /lib/modules/<version>
    needs: tuple[str, ...] = ()  # every module to load first (deps and softdeps)
    # Of `needs`, the softdep `pre:` ones: their failure does not stop this one
    # (crct10dif_pclmul refuses a CPU without PCLMUL; crc_t10dif works without it).
    optional: tuple[str, ...] = ()
    # The hooks that named it: loaded at every boot. None: a driver, loaded
    # when a device's modalias asks for it (or a dependency of one).
    hooks: tuple[str, ...] = ()


def load_order(
    packed: Mapping[str, PackedModule], modules: Sequence[str], tried: Iterable[str] = ()
) -> list[str]:
    """Modules to load for `modules`, dependencies first, none already tried.

    A module's `needs` holds its modules.dep (already transitive) and its
    softdeps; the softdeps of those are followed too (nvme needs crc_t10dif,
    which softdeps crct10dif_pclmul). `tried` holds every module tried
    before, loaded or not: an optional softdep such as crct10dif_pclmul
    fails with ENODEV on a CPU without PCLMUL (QEMU's default TCG CPU) and
    must not be tried again for every device that arrives. A module the
    initrd does not hold (a built-in one, a driver left out of this image)
    is not planned. Here, not in the modules hook: the preload
    (initpy.runtime.preload) plans the hooks' modules before any hook is
    imported.
    """
    done = set(tried)
    order: list[str] = []

    def visit(name: str) -> None:
        if name in done or name not in packed:
            return
        done.add(name)
        for need in packed[name].needs:
            visit(need)
        order.append(name)

    for module in modules:
        visit(module)
    return order


# The end of a module signed by its kernel's build (linux/scripts/sign-file):
# the ELF, then the PKCS#7 signature, its 12-byte `struct module_signature`,
# and this marker. Debian signs every module; Secure Boot's lockdown refuses
# a module without it, so mkinitrd packs the files with their signatures
# (decompressed, never stripped) and the modules hook names a refused one.
MODULE_SIGNATURE_MAGIC = b"~Module signature appended~\n"


def module_is_signed(data: bytes) -> bool:
    """Whether a module file (or its last bytes) carries an appended signature."""
    return data.endswith(MODULE_SIGNATURE_MAGIC)


@frozen
class Manifest:
    """What the builder put into the initrd, for PID 1."""

    build_id: str
    hooks: tuple[str, ...]
    kernel_version: str = ""
    modules: tuple[PackedModule, ...] = ()  # in an order that loads dependencies first
    # How the drivers were chosen: "generic", "host" or "none" (mkinitrd --drivers),
    # and the --driver names added to that.
    drivers: str = ""
    extra_drivers: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        body = {
            "version": MANIFEST_VERSION,
            "build_id": self.build_id,
            "hooks": list(self.hooks),
            "kernel_version": self.kernel_version,
            "modules": [
                {
                    "name": m.name,
                    "path": m.path,
                    "needs": list(m.needs),
                    "optional": list(m.optional),
                    "hooks": list(m.hooks),
                }
                for m in self.modules
            ],
            "drivers": self.drivers,
            "extra_drivers": list(self.extra_drivers),
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
                    _text(entry, "name"),
                    _text(entry, "path"),
                    tuple(_strings(entry, "needs")),
                    tuple(_strings(entry, "optional")),
                    tuple(_strings(entry, "hooks")),
                )
            )
        return Manifest(
            _text(body, "build_id"),
            tuple(_strings(body, "hooks")),
            _text(body, "kernel_version"),
            tuple(modules),
            _text(body, "drivers"),
            tuple(_strings(body, "extra_drivers")),
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


# -- the modalias index (MODALIAS_INDEX) ----------------------------------------------

INDEX_FORMAT = "initpy-modalias/1"
WILDCARDS = "*?["


class AliasIndexError(ValueError):
    """The modalias index is missing or not of this init's format."""


def literal_prefix(glob: str) -> str:
    """The text of a modules.alias glob before its first wildcard."""
    cut = min((i for i in (glob.find(c) for c in WILDCARDS) if i >= 0), default=len(glob))
    return glob[:cut]


@mutable
class AliasIndex:
    """modules.alias for the packed drivers, grouped so a modalias is matched fast.

    The generic kernel has about 26,000 aliases, and Python under TCG runs
    about 15 times slower than natively: fnmatch over all of them per device
    costs seconds. Each alias is a glob whose text before the first wildcard
    is literal (`pci:v00008086d0000100Esv` for e1000's 82540EM); the index
    groups the globs by that prefix. A modalias is sliced at each distinct
    prefix length (a few dozen) and each slice is one dict lookup, so only
    the few globs that share a prefix are matched (hypothesis-tested to
    equal fnmatch in tests/unit/test_modalias.py).

    JSON, `"format": "initpy-modalias/1"`:
        kernel    the kernel release
        lengths   sorted distinct prefix lengths
        buckets   {prefix: "GLOB MODULE\\nGLOB MODULE..."}: one string per
                  prefix, split only when a device hits it (few objects to
                  decode at boot)
        builtin   modules built into the kernel; their aliases are in the
                  buckets, so a device they drive is explained, not "missing"
    """

    kernel: str
    lengths: tuple[int, ...]
    buckets: dict[str, str]
    builtin: frozenset[str] = frozenset()
    _split: dict[str, tuple[tuple[str, str, str], ...]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, kernel: str, aliases: Iterable[tuple[str, str]], builtin: Iterable[str] = ()
    ) -> AliasIndex:
        """From (glob, module) pairs; aliases that name no device (no `:`) are dropped."""
        groups: dict[str, set[str]] = {}
        for glob, module in aliases:
            if ":" not in glob or glob.startswith(("devname:", "symbol:")):
                continue
            groups.setdefault(literal_prefix(glob), set()).add(f"{glob} {module}")
        return cls(
            kernel,
            tuple(sorted({len(p) for p in groups})),
            {p: "\n".join(sorted(rows)) for p, rows in sorted(groups.items())},
            frozenset(builtin),
        )

    def to_json(self) -> bytes:
        body = {
            "format": INDEX_FORMAT,
            "kernel": self.kernel,
            "lengths": list(self.lengths),
            "buckets": self.buckets,
            "builtin": sorted(self.builtin),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> AliasIndex:
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise AliasIndexError(f"not JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("format") != INDEX_FORMAT:
            raise AliasIndexError(f"not {INDEX_FORMAT}; rebuild the initrd with this mkinitrd")
        buckets = body.get("buckets")
        if not isinstance(buckets, dict):
            raise AliasIndexError("buckets: expected an object")
        return cls(
            str(body.get("kernel", "")),
            tuple(int(n) for n in _list(body, "lengths")),  # type: ignore[call-overload]
            {str(k): str(v) for k, v in buckets.items()},
            frozenset(_strings(body, "builtin")),
        )

    def _bucket(self, prefix: str) -> tuple[tuple[str, str, str], ...]:
        rows = self._split.get(prefix)
        if rows is None:
            found = []
            for line in self.buckets[prefix].split("\n"):
                glob, _, module = line.rpartition(" ")
                found.append((glob, glob[len(prefix) :], module))
            rows = self._split[prefix] = tuple(found)
        return rows

    def match(self, modalias: str) -> list[tuple[str, str]]:
        """(module, glob) for every alias that matches the whole modalias."""
        found: list[tuple[str, str]] = []
        size = len(modalias)
        for length in self.lengths:
            if length > size:
                break
            prefix = modalias[:length]
            if prefix not in self.buckets:
                continue
            tail = modalias[length:]
            for glob, rest, module in self._bucket(prefix):
                if glob_tail_matches(rest, tail):
                    found.append((module, glob))
        return found

    def modules_for(self, modalias: str) -> dict[str, str]:
        """module -> the first glob that matched, each module once."""
        found: dict[str, str] = {}
        for module, glob in self.match(modalias):
            found.setdefault(module, glob)
        return found


def glob_tail_matches(rest: str, tail: str) -> bool:
    """Whether `rest` (a glob's part from its first wildcard, or "") matches `tail`.

    `*`-only globs, nearly all of modules.alias, are matched with str.find
    (leftmost placement of each literal piece is exact for `*`); the few
    with `?` or `[...]` (mdio PHY ids, some USB bcdDevice ranges) go to
    fnmatch.
    """
    if not rest:
        return not tail
    if "?" in rest or "[" in rest:
        import fnmatch

        return fnmatch.fnmatchcase(tail, rest)
    pieces = rest.split("*")
    last = pieces[-1]
    if last and not tail.endswith(last):
        return False
    end = len(tail) - len(last)
    pos = 0
    for piece in pieces[1:-1]:
        if not piece:
            continue
        i = tail.find(piece, pos, end)
        if i < 0:
            return False
        pos = i + len(piece)
    return pos <= end
