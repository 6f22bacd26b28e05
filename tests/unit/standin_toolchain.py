"""A stand-in toolchain in build2's shape, for initpy-toolchain's tests.

Three files, as build2 publishes them: `toolchain.sha256` (sha256sum's
output), `build2-install-X.sh` and `build2-toolchain-X.tar.xz`. The install
script takes build2's options (`--yes`, `--trust FP`, the install directory
last), unpacks the archive it finds beside itself, compiles a small C
program with the host's `cc` into `PREFIX/bin/b`, and installs
`PREFIX/bin/build-agent`, which compiles the stand-in agent into
`PREFIX/bin/bbot-agent` (the contract in initpy/host/toolchain.py). Each
script appends a line to `$STANDIN_RUNS` when that is set, so a test sees
what ran. CXX_INSTALL_SH builds `b` from a C++ source with `c++` instead
(the image's compiler, tests/vm/test_toolchain.py). The agent prints its
toolchain and trust and exits; as a service (its parent is PID 1) it then
stays up, as a real agent does.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

VERSION = "0.1.0"
SCRIPT = f"build2-install-{VERSION}.sh"
ARCHIVE = f"build2-toolchain-{VERSION}.tar.xz"

INSTALL_SH = f"""\
#!/bin/sh
set -eu
[ -n "${{STANDIN_RUNS-}}" ] && echo "install $*" >> "$STANDIN_RUNS"
trust=
while [ $# -gt 1 ]; do
  case $1 in
    --yes) shift ;;
    --trust) trust=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
prefix=$1
echo "installing build2-toolchain-{VERSION} into $prefix (trust: ${{trust:-none}})"
tar -xJf build2-toolchain-{VERSION}.tar.xz
cd build2-toolchain-{VERSION}
mkdir -p "$prefix/bin" "$prefix/share/agent"
cc -O1 -o "$prefix/bin/b" b.c
cp agent.c "$prefix/share/agent/"
cp build-agent "$prefix/bin/build-agent"
chmod 755 "$prefix/bin/build-agent"
"$prefix/bin/b" --version
"""

CXX_INSTALL_SH = INSTALL_SH.replace(
    'cc -O1 -o "$prefix/bin/b" b.c', 'c++ -O1 -o "$prefix/bin/b" b.cxx'
)

B_C = """\
#include <stdio.h>
int main(void) { puts("build2 stand-in " "VERSION"); return 0; }
""".replace("VERSION", VERSION)

B_CXX = """\
#include <iostream>
#include <string>
int main() { std::cout << std::string("build2 stand-in (C++) ") + "VERSION" << std::endl; }
""".replace("VERSION", VERSION)

BUILD_AGENT = """\
#!/bin/sh
set -eu
[ -n "${STANDIN_RUNS-}" ] && echo "build-agent $(pwd)" >> "$STANDIN_RUNS"
cc -O1 -o "$BUILDOS_TOOLCHAIN_PREFIX/bin/bbot-agent" \
  -DTOOLCHAIN_ID="\\"$BUILDOS_TOOLCHAIN_ID\\"" "$BUILDOS_TOOLCHAIN_PREFIX/share/agent/agent.c"
echo "bbot-agent built"
"""

AGENT_C = """\
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
  const char *trust = getenv("BUILDOS_TOOLCHAIN_TRUST");
  printf("bbot-agent stand-in, toolchain %s, trust %s\\n", TOOLCHAIN_ID, trust ? trust : "-");
  fflush(stdout);
  if (getppid() == 1) /* a service of systemd's: stay up */
    pause();
  return 0;
}
"""


def archive(extra: bytes = b"") -> bytes:
    """The source archive (tar.xz); `extra` makes another one with other bytes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:xz") as tar:
        for name, body, mode in (
            ("b.c", B_C.encode() + extra, 0o644),
            ("b.cxx", B_CXX.encode(), 0o644),
            ("agent.c", AGENT_C.encode(), 0o644),
            ("build-agent", BUILD_AGENT.encode(), 0o755),
        ):
            info = tarfile.TarInfo(f"build2-toolchain-{VERSION}/{name}")
            info.size, info.mode = len(body), mode
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def publish(folder: str, install: str = INSTALL_SH, extra: bytes = b"") -> dict[str, bytes]:
    """Write the three files into `folder` (made if missing); the files, by name."""
    os.makedirs(folder, exist_ok=True)
    files = {SCRIPT: install.encode(), ARCHIVE: archive(extra)}
    lines = [f"{hashlib.sha256(body).hexdigest()} *{name}\n" for name, body in files.items()]
    files["toolchain.sha256"] = "".join(lines).encode()
    for name, body in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(body)
    return files
