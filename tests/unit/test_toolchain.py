"""initpy-toolchain against real servers on 127.0.0.1 and a stand-in toolchain built with `cc`.

The servers are test_monitor's (tftpy's TFTP server and http.server over
one folder); the stand-in (tests/unit/standin_toolchain.py) is build2's
shape: a checksums file, an install script and a tar.xz whose build
compiles C with the host's compiler and installs a stand-in agent. Waits
between tries are recorded, not slept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from initpy.host import toolchain
from initpy.host.checksums import CHECKSUMS_LIMIT, ChecksumsError, parse_checksums
from initpy.host.fetch import FetchError, fetch_to_file
from initpy.host.toolchain import Bootstrap, ToolchainError, bootstrap
from initpy.host.toolchain_cache import MANIFEST, CacheError, open_root
from tests.unit import standin_toolchain as standin
from tests.unit.test_monitor import SCHEMES, Servers, closed_port, servers  # noqa: F401

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")
SUM = "0123456789abcdef" * 4


@dataclasses.dataclass
class Run:
    """One bootstrap's world: its cache, what it logged and waited, what the scripts did."""

    top: str
    lines: list[str] = dataclasses.field(default_factory=list)
    waits: list[float] = dataclasses.field(default_factory=list)

    @property
    def cache(self) -> str:
        return os.path.join(self.top, "cache")

    @property
    def runs_file(self) -> str:
        return os.path.join(self.top, "runs")

    def job(self, url: str, **bounds: float) -> Bootstrap:
        return Bootstrap(
            url,
            "AB:" * 31 + "CD",
            self.cache,
            fetch_timeout=bounds.pop("fetch_timeout", 2.0),
            tries=int(bounds.pop("tries", 3)),
            backoff=1.0,
            log=self.lines.append,
            sleep=self.waits.append,
            **bounds,  # type: ignore[arg-type]
        )

    def runs(self) -> list[str]:
        try:
            with open(self.runs_file) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []


@pytest.fixture
def run(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    world = Run(str(tmp_path))
    monkeypatch.setenv("STANDIN_RUNS", world.runs_file)
    yield world


# -- the checksums file --------------------------------------------------------------------


def test_a_sha256sum_file_is_read_in_both_modes() -> None:
    body = f"{SUM}  build2-install-0.17.0.sh\n{SUM.upper()} *0.17.0/build2-toolchain.tar.xz\n\n"
    checksums = parse_checksums(body.encode())
    assert [(f.name, f.filename, f.sha256) for f in checksums.files] == [
        ("build2-install-0.17.0.sh", "build2-install-0.17.0.sh", SUM),
        ("0.17.0/build2-toolchain.tar.xz", "build2-toolchain.tar.xz", SUM),
    ]
    assert checksums.install_script.name == "build2-install-0.17.0.sh"
    assert checksums.key == hashlib.sha256(body.encode()).hexdigest()
    assert (
        checksums.url_of("tftp://10.0.0.1/tc/toolchain.sha256", checksums.files[1])
        == "tftp://10.0.0.1/tc/0.17.0/build2-toolchain.tar.xz"
    )


BAD = {
    "short sum": (f"{SUM[:63]}  x.sh\n", "line 1 .*not '<64 hex digits>  <name>'"),
    "no separator": (f"{SUM}x.sh\n", "line 1"),
    "a tab": (f"{SUM}\tx.sh\n", "line 1"),
    "not hex": ("g" * 64 + "  x.sh\n", "line 1"),
    "dot dot": (f"{SUM}  x.sh\n{SUM}  ../etc/passwd\n", "line 2 .*'..' component"),
    "dot dot inside": (f"{SUM}  x.sh\n{SUM}  a/../b\n", "'..' component"),
    "absolute": (f"{SUM}  x.sh\n{SUM}  /etc/passwd\n", "is an absolute path"),
    "dot": (f"{SUM}  ./x.sh\n", "'.' component"),
    "empty component": (f"{SUM}  a//x.sh\n", "an empty component"),
    "hidden": (f"{SUM}  x.sh\n{SUM}  .profile\n", "not a plain file name"),
    "backslash": (f"{SUM}  x.sh\n{SUM}  a\\b\n", "not a plain file name"),
    "duplicate": (f"{SUM}  x.sh\n{SUM}  a.tar.xz\n{SUM}  a.tar.xz\n", "listed again .*line 2"),
    "duplicate last component": (f"{SUM}  x.sh\n{SUM}  a/t.xz\n{SUM}  b/t.xz\n", "again"),
    "no script": (f"{SUM}  a.tar.xz\n", "0 files ending in .sh"),
    "two scripts": (f"{SUM}  a.sh\n{SUM}  b.sh\n", "2 files ending in .sh"),
    "empty": ("\n", "lists no file"),
    "binary": ("\xff\xfe", "not ASCII"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_checksums_file_names_its_line_and_the_fix(case: str) -> None:
    body, words = BAD[case]
    with pytest.raises(ChecksumsError, match=words):
        parse_checksums(body.encode("latin-1"), "toolchain.sha256")


def test_a_checksums_file_too_long_is_refused() -> None:
    with pytest.raises(ChecksumsError, match=f"more than {CHECKSUMS_LIMIT}"):
        parse_checksums(f"{SUM}  x.sh\n".encode() * 1000)


# -- fetching whole files ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_file_is_streamed_hashed_and_capped(
    servers: Servers,  # noqa: F811
    tmp_path: os.PathLike[str],
    scheme: str,
) -> None:
    body = os.urandom(100_000)
    servers.put("stream/big", body)
    target = os.path.join(str(tmp_path), "big")
    url = servers.url(scheme, "stream/big")
    assert fetch_to_file(url, target, 100_000, 5.0, 60.0) == hashlib.sha256(body).hexdigest()
    with open(target, "rb") as f:
        assert f.read() == body
    os.unlink(target)
    with pytest.raises(FetchError, match="answer longer than 99999 bytes"):
        fetch_to_file(url, target, 99_999, 5.0, 60.0)
    assert not os.path.exists(target)  # no partial file is left


# -- the bootstrap, end to end --------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_fresh_bootstrap_builds_the_toolchain_and_its_agent(
    servers: Servers,  # noqa: F811
    run: Run,
    scheme: str,
) -> None:
    standin.publish(os.path.join(servers.root, f"tc-{scheme}"))
    got = bootstrap(run.job(servers.url(scheme, f"tc-{scheme}/toolchain.sha256")))
    assert not got.cached and got.prefix == os.path.join(run.cache, got.key, "install")
    assert run.runs()[0].startswith(f"install --yes --trust {'AB:' * 31}CD {got.prefix}")
    assert run.runs()[1].startswith("build-agent ")
    said = subprocess.run([got.agent], capture_output=True, text=True, check=True).stdout
    assert said == f"bbot-agent stand-in, toolchain {got.key}, trust -\n"
    b = os.path.join(got.prefix, "bin", "b")
    assert subprocess.run([b], capture_output=True, text=True).stdout == "build2 stand-in 0.1.0\n"
    assert any(line.startswith("install| installing build2-toolchain") for line in run.lines)
    assert not os.path.exists(os.path.join(run.cache, f".work-{got.key}"))
    root = os.stat(run.cache)
    assert stat.S_IMODE(root.st_mode) == 0o755 and root.st_uid == os.geteuid()


def test_the_cache_is_reused_without_running_a_script_and_faster(
    servers: Servers,  # noqa: F811
    run: Run,
    capsys: pytest.CaptureFixture[str],
) -> None:
    standin.publish(os.path.join(servers.root, "tc-cache"))
    url = servers.url("http", "tc-cache/toolchain.sha256")
    fresh = bootstrap(run.job(url))
    cached = bootstrap(run.job(url))
    assert cached.cached and cached.key == fresh.key and cached.agent == fresh.agent
    assert len(run.runs()) == 2  # install and build-agent, once
    assert any(
        "taken from the cache" in line and "no install script runs" in line for line in run.lines
    )
    assert cached.seconds < fresh.seconds
    with capsys.disabled():
        print(f"\n  stand-in toolchain: fresh {fresh.seconds:.2f} s, cached {cached.seconds:.3f} s")


def test_a_new_checksums_file_is_a_new_entry_and_the_old_one_stays(
    servers: Servers,  # noqa: F811
    run: Run,
) -> None:
    folder = os.path.join(servers.root, "tc-new")
    standin.publish(folder)
    url = servers.url("file", "tc-new/toolchain.sha256")
    first = bootstrap(run.job(url))
    standin.publish(folder, extra=b"/* 0.1.1 */\n")
    second = bootstrap(run.job(url))
    assert second.key != first.key and not second.cached
    assert os.path.exists(os.path.join(run.cache, first.key, MANIFEST))


def corrupt(prefix: str) -> None:
    path = os.path.join(prefix, "bin", "b")
    os.chmod(path, 0o755)
    with open(path, "ab") as f:
        f.write(b"\0")


@pytest.mark.parametrize(
    "damage",
    ["a changed file", "an extra file", "a missing file", "no MANIFEST", "writable by others"],
)
def test_a_damaged_entry_is_built_again_never_used(
    servers: Servers,  # noqa: F811
    run: Run,
    damage: str,
) -> None:
    standin.publish(os.path.join(servers.root, "tc-damage"))
    url = servers.url("http", "tc-damage/toolchain.sha256")
    got = bootstrap(run.job(url))
    entry = os.path.dirname(got.prefix)
    if damage == "a changed file":
        corrupt(got.prefix)
    elif damage == "an extra file":
        with open(os.path.join(got.prefix, "bin", "evil"), "w") as f:
            f.write("#!/bin/sh\n")
    elif damage == "a missing file":
        os.unlink(got.agent)
    elif damage == "no MANIFEST":
        os.unlink(os.path.join(entry, MANIFEST))
    else:
        os.chmod(os.path.join(got.prefix, "bin"), 0o777)
    again = bootstrap(run.job(url))
    assert not again.cached and len(run.runs()) == 4  # built twice
    if damage != "no MANIFEST":
        assert any("is corrupt" in line for line in run.lines)
    assert bootstrap(run.job(url)).cached  # and the rebuilt entry is good


def test_a_cache_root_others_may_write_is_refused(
    servers: Servers,  # noqa: F811
    run: Run,
) -> None:
    standin.publish(os.path.join(servers.root, "tc-root"))
    os.mkdir(run.cache, 0o755)
    os.chmod(run.cache, 0o775)
    with pytest.raises(ToolchainError, match="writable by others") as failed:
        bootstrap(run.job(servers.url("file", "tc-root/toolchain.sha256")))
    assert failed.value.stage == "cache" and run.runs() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another uid")
def test_a_cache_root_of_another_uid_is_refused(tmp_path: os.PathLike[str]) -> None:
    root = os.path.join(str(tmp_path), "cache")
    os.mkdir(root, 0o755)
    os.chown(root, 65534, 65534)
    with pytest.raises(CacheError, match="owned by uid 65534"):
        open_root(root)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another uid")
def test_an_entry_with_a_file_of_another_uid_is_built_again(
    servers: Servers,  # noqa: F811
    run: Run,
) -> None:
    """What the agent's uid wrote (or swapped in) is never used, even with the same bytes."""
    standin.publish(os.path.join(servers.root, "tc-uid"))
    url = servers.url("file", "tc-uid/toolchain.sha256")
    got = bootstrap(run.job(url))
    os.chown(got.agent, 65534, 65534)
    again = bootstrap(run.job(url))
    assert not again.cached and any("owned by uid 65534" in line for line in run.lines)
    assert os.stat(again.agent).st_uid == os.geteuid()


# -- verified before anything runs ---------------------------------------------------------


MARKER_SCRIPT = 'touch "$STANDIN_RUNS.marker"\n' + standin.INSTALL_SH.split("\n", 1)[1]


@pytest.mark.parametrize("how", ["archive mismatch", "script mismatch", "missing archive"])
def test_nothing_runs_unless_every_file_matches(
    servers: Servers,  # noqa: F811
    run: Run,
    how: str,
) -> None:
    folder = os.path.join(servers.root, f"tc-bad-{how.replace(' ', '-')}")
    files = standin.publish(folder, install="#!/bin/sh\n" + MARKER_SCRIPT)
    changed = standin.ARCHIVE if "archive" in how else standin.SCRIPT
    if how == "missing archive":
        os.unlink(os.path.join(folder, changed))
    else:
        with open(os.path.join(folder, changed), "wb") as f:
            f.write(files[changed] + b"\n")
    url = servers.url("http", os.path.relpath(folder, servers.root) + "/toolchain.sha256")
    with pytest.raises(ToolchainError) as failed:
        bootstrap(run.job(url, tries=2))
    assert failed.value.stage == ("fetch" if how == "missing archive" else "verify")
    assert "HTTP 404" in str(failed.value) or "nothing was run" in str(failed.value)
    assert not os.path.exists(run.runs_file + ".marker") and run.runs() == []


def test_an_oversized_file_is_refused(servers: Servers, run: Run) -> None:  # noqa: F811
    standin.publish(os.path.join(servers.root, "tc-big"))
    job = dataclasses.replace(
        run.job(servers.url("tftp", "tc-big/toolchain.sha256"), tries=3), file_limit=200
    )
    with pytest.raises(ToolchainError, match="answer longer than 200 bytes: .*; refused"):
        bootstrap(job)
    assert run.runs() == [] and run.waits == []  # not tried again: it would be as long


# -- failures: bounded, told, never a reboot ---------------------------------------------------


def test_fetch_retries_are_bounded_and_back_off(run: Run) -> None:
    url = f"http://127.0.0.1:{closed_port(socket.SOCK_STREAM)}/toolchain.sha256"
    with pytest.raises(ToolchainError, match=r"Connection refused \(4 tries\)") as failed:
        bootstrap(run.job(url, tries=4))
    assert failed.value.stage == "fetch"
    assert run.waits == [1.0, 2.0, 4.0]


def test_a_fetch_that_recovers_within_its_tries_goes_on(
    servers: Servers,  # noqa: F811
    run: Run,
) -> None:
    folder = os.path.join(servers.root, "tc-late")
    url = servers.url("http", "tc-late/toolchain.sha256")

    def publish_while_waiting(seconds: float) -> None:
        run.waits.append(seconds)
        standin.publish(folder)

    job = dataclasses.replace(run.job(url), sleep=publish_while_waiting)
    assert not bootstrap(job).cached and run.waits == [1.0]


def test_a_failing_install_is_told_with_its_last_lines(servers: Servers, run: Run) -> None:  # noqa: F811
    standin.publish(os.path.join(servers.root, "tc-fail"), install="echo 'no space left'\nexit 3\n")
    with pytest.raises(ToolchainError, match="exited with 3:\nno space left") as failed:
        bootstrap(run.job(servers.url("file", "tc-fail/toolchain.sha256")))
    assert failed.value.stage == "install"


def test_an_install_past_its_deadline_is_killed(servers: Servers, run: Run) -> None:  # noqa: F811
    standin.publish(os.path.join(servers.root, "tc-slow"), install="sleep 60\n")
    started = time.monotonic()
    with pytest.raises(ToolchainError, match="still ran after 0.5 s; killed"):
        bootstrap(run.job(servers.url("file", "tc-slow/toolchain.sha256"), install_deadline=0.5))
    assert time.monotonic() - started < 30


def test_main_writes_the_result_or_mails_the_admin(
    servers: Servers,  # noqa: F811
    run: Run,
    capsys: pytest.CaptureFixture[str],
) -> None:
    standin.publish(os.path.join(servers.root, "tc-main"))
    env = os.path.join(run.top, "buildos.env")
    result = os.path.join(run.top, "toolchain.env")
    with open(env, "w") as f:
        f.write(f"BUILDOS_TOOLCHAIN_URL={servers.url('file', 'tc-main/toolchain.sha256')}\n")
        f.write(f"BUILDOS_TOOLCHAIN_TRUST={'AB:' * 31}CD\nBUILDOS_ADMIN_EMAIL=admin@example.org\n")
    argv = ["--buildos-env", env, "--cache", run.cache, "--result", result]
    mails: list[EmailMessage] = []
    assert toolchain.main(argv, mail=mails.append) == 0
    out = capsys.readouterr().out
    assert "initpy-toolchain: agent ready: " in out and mails == []
    with open(result) as f:
        lines = f.read().splitlines()
    assert (
        lines[0].startswith("BUILDOS_TOOLCHAIN_ID=")
        and lines[3] == f"BUILDOS_TOOLCHAIN_TRUST={'AB:' * 31}CD"
    )
    with open(env, "a") as f:
        f.write(f"BUILDOS_TOOLCHAIN_URL={servers.url('file', 'tc-main/missing.sha256')}\n")
    assert toolchain.main(argv, mail=mails.append, sleep=lambda s: None) == 1
    out = capsys.readouterr().out
    assert "<3>initpy-toolchain: fetch failed: " in out and "does not reboot" in out
    (mail,) = mails
    assert mail["Subject"].endswith("toolchain bootstrap failed (fetch)")
    assert mail["From"].startswith("initpy-toolchain <")


def test_main_without_a_url_does_nothing(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    env = os.path.join(run.top, "buildos.env")
    with open(env, "w") as f:
        f.write("BUILDOS_ADMIN_EMAIL=admin@example.org\n")
    result = os.path.join(run.top, "toolchain.env")
    argv = ["--buildos-env", env, "--cache", run.cache, "--result", result]
    assert toolchain.main(argv, mail=lambda message: None) == 0
    assert "no buildos.toolchain_url" in capsys.readouterr().out
    assert not os.path.exists(run.cache) and not os.path.exists(result)
