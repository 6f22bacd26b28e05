"""initpy-toolchain: bootstrap the build toolchain from `buildos.toolchain_url`, and its agent.

Runs on the booted OS, once per boot, after the network is online, under a
uid that is not the agent's (so that what it builds is read-only to the
agent). Its settings are the env file PID 1 left (initpy.host.settings:
`BUILDOS_TOOLCHAIN_URL`, `BUILDOS_TOOLCHAIN_TRUST`).

**The steps.**

1. Fetch the checksums file (initpy.host.checksums) and parse it; its
   sha256 is the toolchain's key.
2. A complete cache entry for that key (initpy.host.toolchain_cache) is
   verified file by file and used as it is: no script runs. A corrupt or
   partial one is removed and built again.
3. Otherwise fetch every listed file, relative to the checksums file's
   folder, into the entry's work folder, and check each one's sha256. Any
   missing file or mismatch stops here: nothing has run.
4. Run the install script: `sh SCRIPT --yes [--trust FP] PREFIX`, in the
   work folder with the verified archive beside it (build2's
   `build2-install-X.sh` finds `build2-toolchain-X.tar.xz` there). PREFIX is
   the entry's `install/` folder; afterwards it must hold `bin/`.
5. Build and install the agent with that toolchain: run
   `PREFIX/bin/build-agent` in an empty folder, with `PATH` starting at
   `PREFIX/bin` and `BUILDOS_TOOLCHAIN_ID`, `BUILDOS_TOOLCHAIN_TRUST` and
   `BUILDOS_TOOLCHAIN_PREFIX` in its environment. Afterwards
   `PREFIX/bin/bbot-agent` must be an executable (build2's bbot installs
   that name; `build-agent` is the toolchain's way to build it, e.g.
   `bpkg build --trust $BUILDOS_TOOLCHAIN_TRUST bbot` then `bpkg install`).
6. Seal the entry (MANIFEST last), and write the result file the agent's
   service reads: `BUILDOS_TOOLCHAIN_ID`, `_PREFIX`, `_AGENT`, `_TRUST`.

Fetches are retried `tries` times with a doubling wait; a mismatch, a
failing script or a deadline is not (it would fail again). Every step is a
line on stdout prefixed `initpy-toolchain:` (errors `<3>`, for the
journal); a failure mails the admin and exits 1. It never reboots: the
monitor's poll (initpy.host.monitor) reboots when the checksums file
changes.
"""

from __future__ import annotations

import argparse
import collections
import getpass
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TypeVar

from initpy.host import mail as mailer
from initpy.host import mailtext
from initpy.host.checksums import (
    FILE_DEADLINE,
    FILE_LIMIT,
    Checksums,
    ChecksumsError,
    Listed,
    Mismatch,
    fetch_checksums,
    fetch_verified,
    parse_checksums,
)
from initpy.host.fetch import FetchError, TooLong
from initpy.host.settings import BUILDOS_ENV, TOOLCHAIN_RESULT, load_toolchain_settings
from initpy.host.toolchain_cache import CHECKSUMS_COPY, CacheError, Entry, open_root

LOG_PREFIX = "initpy-toolchain: "
# On the machines disk, beside the machines (docs/toolchain.md).
CACHE_ROOT = "/build/machines/.toolchain"
AGENT_BUILDER = "bin/build-agent"
AGENT = "bin/bbot-agent"
FETCH_TIMEOUT = 30.0
INSTALL_DEADLINE = 4 * 3600.0  # build2 from source on a slow host
TRIES = 5
BACKOFF = 10.0  # the first wait between tries; it doubles
TAIL_LINES = 20
T = TypeVar("T")


class ToolchainError(Exception):
    """The bootstrap failed; `stage` says where, the text says why."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def log_to_stdout(line: str) -> None:
    """A journal line: the priority prefix (`<3>`, `<4>`) first, then ours."""
    priority = line[:3] if line[:1] == "<" and line[2:3] == ">" else ""
    print(f"{priority}{LOG_PREFIX}{line[len(priority) :]}", flush=True)


@dataclass(frozen=True)
class Bootstrap:
    """One bootstrap: what to fetch, where to build it, and its bounds."""

    url: str
    trust: str | None
    cache_root: str = CACHE_ROOT
    fetch_timeout: float = FETCH_TIMEOUT
    file_limit: int = FILE_LIMIT
    file_deadline: float = FILE_DEADLINE
    install_deadline: float = INSTALL_DEADLINE
    tries: int = TRIES
    backoff: float = BACKOFF
    log: Callable[[str], None] = log_to_stdout
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Toolchain:
    """A built toolchain, ready for the agent's service."""

    key: str
    prefix: str
    agent: str
    cached: bool
    seconds: float = field(default=0.0, compare=False)


def bootstrap(job: Bootstrap) -> Toolchain:
    """Fetch, verify, install (or take from the cache); ToolchainError on any failure."""
    started = time.monotonic()
    body = _retried(job, job.url, lambda: fetch_checksums(job.url, job.fetch_timeout))
    try:
        checksums = parse_checksums(body, job.url)
    except ChecksumsError as exc:
        raise ToolchainError("checksums", str(exc)) from None
    job.log(f"toolchain {checksums.key[:12]} at {job.url}: {len(checksums.files)} files")
    try:
        entry = Entry(open_root(job.cache_root), checksums.key)
        if entry.complete():
            try:
                paths = entry.verify()
            except CacheError as exc:
                job.log(f"<4>cache entry {entry.path} is corrupt ({exc}); building it again")
            else:
                seconds = time.monotonic() - started
                job.log(
                    f"toolchain {checksums.key[:12]} taken from the cache: {paths} paths "
                    f"verified in {seconds:.1f} s; no install script runs"
                )
                return Toolchain(checksums.key, entry.prefix, _agent(entry), True, seconds)
        entry.clear()
        os.mkdir(entry.path, 0o755)
        os.mkdir(entry.work, 0o700)
    except (CacheError, OSError) as exc:
        raise ToolchainError("cache", str(exc)) from None
    _fetch_all(job, checksums, entry)
    script = os.path.join(entry.work, checksums.install_script.filename)
    trust = ("--trust", job.trust) if job.trust else ()
    _run(job, "install", ["sh", script, "--yes", *trust, entry.prefix], entry.work, {})
    if not os.path.isdir(os.path.join(entry.prefix, "bin")):
        raise ToolchainError(
            "install", f"{checksums.install_script.name} left no {entry.prefix}/bin"
        )
    _build_agent(job, checksums, entry)
    try:
        with open(os.path.join(entry.path, CHECKSUMS_COPY), "wb") as f:
            f.write(body)
        shutil.rmtree(entry.work)
        paths = entry.seal()
    except (CacheError, OSError) as exc:
        raise ToolchainError("cache", f"cannot seal {entry.path}: {exc}") from None
    seconds = time.monotonic() - started
    job.log(
        f"toolchain {checksums.key[:12]} built and cached in {entry.path} "
        f"({paths} paths, {seconds:.1f} s)"
    )
    return Toolchain(checksums.key, entry.prefix, _agent(entry), False, seconds)


def _agent(entry: Entry) -> str:
    return os.path.join(entry.prefix, AGENT)


def _fetch_all(job: Bootstrap, checksums: Checksums, entry: Entry) -> None:
    """Every listed file, each checked against its sum, before anything runs."""
    for listed in checksums.files:
        url = checksums.url_of(job.url, listed)

        def one(url: str = url, listed: Listed = listed) -> str:
            return fetch_verified(
                url, listed, entry.work, job.fetch_timeout, job.file_limit, job.file_deadline
            )

        try:
            path = _retried(job, url, one)
        except Mismatch as exc:
            raise ToolchainError(
                "verify", f"{exc}: nothing was run; publish the file and its sum together"
            ) from None
        job.log(f"{listed.name}: sha256 verified ({os.path.getsize(path)} bytes)")


def _retried(job: Bootstrap, url: str, attempt: Callable[[], T]) -> T:
    """`attempt()`, tried again after a FetchError at most `tries` times in all.

    Not after TooLong: the same file is as long the next time.
    """
    wait = job.backoff
    for tries in range(1, job.tries + 1):
        try:
            return attempt()
        except TooLong as exc:
            raise ToolchainError("fetch", f"{url}: {exc}; refused") from None
        except FetchError as exc:
            if tries >= job.tries:
                raise ToolchainError("fetch", f"{url}: {exc} ({tries} tries)") from None
            job.log(f"<4>{url}: {exc}; try {tries + 1} of {job.tries} in {wait:g} s")
        job.sleep(wait)
        wait *= 2
    raise ToolchainError("fetch", f"{url}: not tried ({job.tries} tries asked for)")


def _build_agent(job: Bootstrap, checksums: Checksums, entry: Entry) -> None:
    builder = os.path.join(entry.prefix, AGENT_BUILDER)
    if not os.access(builder, os.X_OK):
        raise ToolchainError("agent", f"the toolchain has no {AGENT_BUILDER} to build the agent")
    folder = os.path.join(entry.work, "agent-build")
    os.mkdir(folder, 0o700)
    env = {
        "PATH": f"{entry.prefix}/bin:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "BUILDOS_TOOLCHAIN_ID": checksums.key,
        "BUILDOS_TOOLCHAIN_TRUST": job.trust or "",
        "BUILDOS_TOOLCHAIN_PREFIX": entry.prefix,
    }
    _run(job, "agent", [builder], folder, env)
    if not os.access(_agent(entry), os.X_OK):
        raise ToolchainError("agent", f"{AGENT_BUILDER} left no executable {_agent(entry)}")


def _run(job: Bootstrap, stage: str, argv: list[str], cwd: str, env: dict[str, str]) -> None:
    """Run one step, its output to the journal line by line, within the install deadline."""
    job.log(f"{stage}: {shlex.join(argv)} (in {cwd})")
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its whole group is killed at the deadline
        )
    except OSError as exc:
        raise ToolchainError(stage, f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    assert process.stdout is not None

    def relay() -> None:
        for raw in process.stdout or ():
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            job.log(f"{stage}| {line}")

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        code = process.wait(job.install_deadline)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
        raise ToolchainError(
            stage, f"{shlex.join(argv)} still ran after {job.install_deadline:g} s; killed"
        ) from None
    finally:
        reader.join(10)
    if code != 0:
        said = "\n".join(tail)
        raise ToolchainError(stage, f"{shlex.join(argv)} exited with {code}:\n{said}")
    job.log(f"{stage}: done in {time.monotonic() - started:.1f} s")


def write_result(path: str, toolchain: Toolchain, trust: str | None) -> None:
    """The file the agent's service reads (EnvironmentFile=), written atomically."""
    values = {
        "BUILDOS_TOOLCHAIN_ID": toolchain.key,
        "BUILDOS_TOOLCHAIN_PREFIX": toolchain.prefix,
        "BUILDOS_TOOLCHAIN_AGENT": toolchain.agent,
        "BUILDOS_TOOLCHAIN_TRUST": trust or "",
    }
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(f"{key}={shlex.quote(value)}\n" for key, value in values.items())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(
    argv: list[str] | None = None,
    mail: Callable[[EmailMessage], None] = mailer.sendmail,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    parser = argparse.ArgumentParser(
        prog="initpy-toolchain",
        description="Bootstrap the build toolchain and its agent from buildos.toolchain_url.",
    )
    parser.add_argument("--buildos-env", default=BUILDOS_ENV, help="default: %(default)s")
    parser.add_argument("--cache", default=CACHE_ROOT, help="default: %(default)s")
    parser.add_argument("--result", default=TOOLCHAIN_RESULT, help="default: %(default)s")
    args = parser.parse_args(argv)
    os.umask(0o022)  # what it builds is readable by the agent, writable by nobody else
    settings = load_toolchain_settings(args.buildos_env)
    if settings.url is None:
        log_to_stdout("no buildos.toolchain_url on the command line: nothing to bootstrap")
        return 0
    try:
        job = Bootstrap(settings.url, settings.trust, args.cache, sleep=sleep)
        toolchain = bootstrap(job)
        write_result(args.result, toolchain, settings.trust)
    except ToolchainError as exc:
        return _failed(settings.url, settings.admin_email, exc.stage, str(exc), mail)
    except OSError as exc:
        error = f"{args.result}: {exc.strerror or exc}"
        return _failed(settings.url, settings.admin_email, "result", error, mail)
    log_to_stdout(f"agent ready: {toolchain.agent} (toolchain {toolchain.key})")
    return 0


def _failed(
    url: str, admin: str | None, stage: str, error: str, mail: Callable[[EmailMessage], None]
) -> int:
    for line in error.splitlines():
        log_to_stdout(f"<3>{stage} failed: {line}")
    log_to_stdout("<3>no toolchain this boot; the host keeps running and does not reboot")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "root"
    sender = mailtext.Sender(user, socket.gethostname(), admin or "root")
    message: EmailMessage = mailtext.toolchain_failed(sender, url, stage, error)
    try:
        mail(message)
        log_to_stdout(f"mailed {message['To']}: {message['Subject']}")
    except mailer.MailError as exc:
        log_to_stdout(f"<3>mail to {message['To']} not sent: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
