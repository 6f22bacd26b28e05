"""Files taken from Debian's packages into the cache, never installed on the host.

The network boot programs (pxelinux, shim, GRUB's network image) and the
initrd's busybox come from the distribution's own packages: `apt-get download` at apt's candidate
version (or a pinned one), `dpkg-deb -x` into a temporary folder, and the
named files copied into ~/.cache/initpy/<kind>/<versions>, which is renamed
into place complete (a `.complete` file lists the packages and versions).
A second call with the same versions reads the cache and downloads nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence

from initpy.builder import freeze
from initpy.builder.command import BuildError, run

# name in the product folder -> (package, path inside the package)
Files = Mapping[str, tuple[str, str]]


def cache_root(kind: str) -> str:
    return os.path.join(os.path.dirname(freeze.cache_root()), kind)


def candidates(packages: Sequence[str], hint: str) -> dict[str, str]:
    """Each package's candidate version (one apt-cache call; apt-get update if unknown)."""
    for attempt in range(2):
        policy = run(["apt-cache", "policy", *packages]).decode()
        found = dict(re.findall(r"(?m)^(\S+):\n\s+Installed:.*\n\s+Candidate:\s*(\S+)", policy))
        versions = {p: found[p] for p in packages if found.get(p, "(none)") != "(none)"}
        if len(versions) == len(packages):
            return versions
        if attempt == 0:
            run(["apt-get", "update", "-qq"], hint="apt-get update must reach Debian's mirror")
    missing = [p for p in packages if p not in versions]
    raise BuildError(
        f"apt knows no package {', '.join(missing)}",
        f"check /etc/apt/sources.list (Debian main), or {hint}",
    )


def fetch(kind: str, files: Files, versions: Mapping[str, str], hint: str) -> str:
    """A folder with `files` from the packages at `versions`, cached by those versions."""
    key = "_".join(sorted(set(versions.values()))).replace(":", "%3a")
    cache = cache_root(kind)
    dest = os.path.join(cache, key)
    if os.path.exists(os.path.join(dest, ".complete")):
        return dest
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch.", dir=cache) as work:
        run(
            ["apt-get", "download", "-q", *(f"{p}={v}" for p, v in sorted(versions.items()))],
            cwd=work,
            hint=f"apt-get must reach Debian's mirror (or {hint})",
        )
        unpacked = os.path.join(work, "root")
        for deb in sorted(n for n in os.listdir(work) if n.endswith(".deb")):
            run(["dpkg-deb", "-x", os.path.join(work, deb), unpacked])
        product = os.path.join(work, "product")
        for name, (package, path) in files.items():
            source = os.path.join(unpacked, path)
            if not os.path.isfile(source):
                raise BuildError(f"{package} {versions[package]} has no /{path}")
            os.makedirs(os.path.dirname(os.path.join(product, name)), exist_ok=True)
            shutil.copy(source, os.path.join(product, name))  # with its mode: busybox runs
        with open(os.path.join(product, ".complete"), "w") as f:
            f.write("".join(f"{p} {v}\n" for p, v in sorted(versions.items())))
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(product, dest)
    return dest


def check_folder(folder: str, files: Files, option: str) -> None:
    """A folder given instead of the packages holds every file."""
    missing = [n for n in files if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise BuildError(
            f"{folder} has no {', '.join(missing)}",
            f"give {option} a folder that holds {', '.join(files)}",
        )
