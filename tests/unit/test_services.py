"""The services hook: postfix relay, root's mail, root's SSH key."""

from __future__ import annotations

import base64
import os
import struct
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from initpy.devtools.fake import FakeKernel
from initpy.runtime import etc
from initpy.runtime.cmdline import parse
from initpy.runtime.driver import CORE_PARAMETERS
from initpy.runtime.hook import BootContext
from initpy.runtime.layout import Manifest
from initpy.runtime.report import Report
from tests.unit.conftest import hook_module

services = hook_module("services")


def ed25519_key(comment: str = "me@host") -> str:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def context(tmp: str, cmdline: str) -> BootContext:
    kernel = FakeKernel(root=tmp, cmdline=cmdline)
    ctx = BootContext(kernel=kernel, report=Report(kernel))
    ctx.config = parse(cmdline, [*CORE_PARAMETERS, *services.HOOK.parameters])
    return ctx


def read(ctx: BootContext, path: str) -> str:
    assert isinstance(ctx.kernel, FakeKernel)
    with open(ctx.kernel.path(path)) as f:
        return f.read()


def test_key_is_added_once_with_safe_modes(tmp_path: os.PathLike[str]) -> None:
    key = ed25519_key()
    ctx = context(str(tmp_path), f'buildos.ssh_key="{key}"')
    assert ctx.kernel.exists("/root") is False
    services.ssh_key(ctx)
    services.ssh_key(ctx)  # a second run (or a key already in the OS tree) adds nothing
    assert read(ctx, "/root/.ssh/authorized_keys") == key + "\n"
    assert isinstance(ctx.kernel, FakeKernel)
    assert os.stat(ctx.kernel.path("/root/.ssh/authorized_keys")).st_mode & 0o777 == 0o600
    assert os.stat(ctx.kernel.path("/root/.ssh")).st_mode & 0o777 == 0o700
    assert "PasswordAuthentication no" in read(ctx, "/etc/ssh/sshd_config.d/initpy.conf")


def test_existing_keys_are_kept(tmp_path: os.PathLike[str]) -> None:
    ctx = context(str(tmp_path), f'buildos.ssh_key="{ed25519_key("new@host")}"')
    ctx.kernel.mkdir("/root/.ssh")
    ctx.kernel.write_text("/root/.ssh/authorized_keys", ed25519_key("old@host") + "\n")
    services.ssh_key(ctx)
    lines = read(ctx, "/root/.ssh/authorized_keys").splitlines()
    assert [ln.split()[-1] for ln in lines] == ["old@host", "new@host"]


def test_bad_keys_are_named_and_not_installed(tmp_path: os.PathLike[str]) -> None:
    good = ed25519_key()
    cases = {
        "ssh-ed25519 AAAA!!notbase64 x": "does not decode",
        "ssh-foo AAAAC3NzaC1lZDI1NTE5 x": "unknown key type 'ssh-foo'",
        "ssh-rsa " + good.split()[1] + " x": "does not match its type 'ssh-rsa'",
        "ssh-ed25519 " + good.split()[1][:8] + " x": "does not match its type",
    }
    for i, (key, problem) in enumerate(cases.items()):
        assert problem in (services.check_ssh_key(key) or "")
        ctx = context(os.path.join(str(tmp_path), str(i)), f'buildos.ssh_key="{key}"')
        detail = services.ssh_key(ctx)
        assert detail.startswith("key rejected")
        assert not ctx.kernel.exists("/root/.ssh/authorized_keys")
        assert any(problem in w for w in ctx.report.warnings)
        assert isinstance(ctx.kernel, FakeKernel)
        assert any(
            'buildos.ssh_key="ssh-ed25519 AAAA... you@host"' in line
            for line in ctx.kernel.console_lines
        )


def test_postfix_relay_and_root_alias_keep_the_rest(tmp_path: os.PathLike[str]) -> None:
    ctx = context(
        str(tmp_path),
        "buildos.smtp_relay=mail.example.org "
        "buildos.admin_email=admin@example.org "
        "buildos.buildid_url=tftp://10.0.0.1/buildos/buildos-buildid",
    )
    ctx.kernel.mkdir("/etc/postfix")
    ctx.kernel.write_text("/etc/postfix/main.cf", "# debian\nmyhostname = x\nrelayhost =\n")
    ctx.kernel.write_text("/etc/aliases", "postmaster: root\nroot: nobody\n")
    detail = services.mail_relay(ctx)
    main_cf = read(ctx, "/etc/postfix/main.cf")
    assert main_cf.splitlines()[:3] == [
        "# debian",
        "myhostname = x",
        "relayhost = [mail.example.org]",
    ]
    assert "inet_interfaces = loopback-only" in main_cf
    assert read(ctx, "/etc/aliases") == "postmaster: root\nroot: admin@example.org\n"
    assert "relays through [mail.example.org]" in detail
    env = read(ctx, "/etc/initpy/buildos.env")
    assert "BUILDOS_BUILDID_URL=tftp://10.0.0.1/buildos/buildos-buildid\n" in env


def test_admin_without_relay_is_a_warning(tmp_path: os.PathLike[str]) -> None:
    ctx = context(str(tmp_path), "buildos.admin_email=admin@example.org")
    assert services.mail_relay(ctx) == "no buildos.smtp_relay: mail stays local"
    assert not ctx.kernel.exists("/etc/postfix/main.cf")
    assert any("add buildos.smtp_relay=HOST" in w for w in ctx.report.warnings)


def test_postfix_is_a_null_client_that_rewrites_root_to_the_admin(
    tmp_path: os.PathLike[str],
) -> None:
    ctx = context(
        str(tmp_path), "buildos.smtp_relay=10.0.2.100 buildos.admin_email=ops@corp.example"
    )
    ctx.kernel.mkdir("/etc/postfix")
    ctx.kernel.write_text("/etc/hostname", "build-5400123456\n")
    ctx.manifest = Manifest(build_id="ab" * 32, hooks=("services",))
    services.mail_relay(ctx)
    options = dict(
        (key.strip(), value.strip())
        for key, _, value in (
            line.partition("=") for line in read(ctx, "/etc/postfix/main.cf").splitlines()
        )
    )
    assert options["relayhost"] == "[10.0.2.100]"
    # Nothing is delivered on the host; root is rewritten before routing,
    # in the envelope and in the To: header.
    assert options["mydestination"] == ""
    assert options["local_transport"].startswith("error:")
    assert options["virtual_alias_maps"] == "texthash:/etc/postfix/admin"
    assert options["recipient_canonical_maps"] == "texthash:/etc/postfix/admin"
    # No lease domain: the admin's domain qualifies the host (no .localdomain).
    assert options["myhostname"] == "build-5400123456.corp.example"
    assert options["mydomain"] == "corp.example"
    rows = [line.split("\t") for line in read(ctx, "/etc/postfix/admin").splitlines()]
    assert [r for r in rows if not r[0].startswith("#")] == [
        ["root", "ops@corp.example"],
        ["postmaster", "ops@corp.example"],
    ]
    assert f"BUILDOS_BUILD_ID={'ab' * 32}\n" in read(ctx, "/etc/initpy/buildos.env")


def test_the_lease_domain_names_the_host_in_mail(tmp_path: os.PathLike[str]) -> None:
    ctx = context(str(tmp_path), "buildos.smtp_relay=relay buildos.admin_email=a@b.example")
    ctx.kernel.mkdir("/etc/postfix")
    ctx.kernel.write_text("/etc/hostname", "host7\n")
    ctx.kernel.write_text(
        "/etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\thost7.lab.example host7\n"
    )
    services.mail_relay(ctx)
    main_cf = read(ctx, "/etc/postfix/main.cf")
    assert "myhostname = host7.lab.example\n" in main_cf
    assert "mydomain = lab.example\n" in main_cf
    ctx.kernel.write_text("/etc/hosts", "127.0.1.1\thost7\n")
    ctx.kernel.write_text("/etc/resolv.conf", "search dhcp.example\nnameserver 10.0.2.3\n")
    services.mail_relay(ctx)
    assert "myhostname = host7.dhcp.example\n" in read(ctx, "/etc/postfix/main.cf")


# -- what postfix and a shell would read as syntax --------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "ops@example.org,|/usr/bin/touch${IFS}/tmp/pwned",
        "ops@example.org,root",
        "|/bin/sh@example.org",
        "/etc/passwd@example.org",
        ":include:/etc/x@example.org",
        "it's@example.org",
        "ops@example.org\x1b[2J",
        "-oQ@example.org",
        "ops@exa mple.org",
        "ops@@example.org",
        "ops.@example.org",
    ],
)
def test_an_admin_address_with_alias_syntax_is_refused_and_aliases_untouched(
    tmp_path: os.PathLike[str], raw: str
) -> None:
    ctx = context(str(tmp_path), f'buildos.smtp_relay=mail.example.org "buildos.admin_email={raw}"')
    assert ctx.value(services.ADMIN_EMAIL) is None
    assert any(
        p.startswith("buildos.admin_email: expected an email address such as admin@example.org")
        and repr(raw) in p
        for p in ctx.config.problems
    ), ctx.config.problems
    ctx.kernel.mkdir("/etc")
    ctx.kernel.write_text("/etc/aliases", "postmaster: root\n")
    services.mail_relay(ctx)
    assert read(ctx, "/etc/aliases") == "postmaster: root\n"


@pytest.mark.parametrize(
    "raw", ["ops@example.org", "first.last+builds@mail.example.org", "a_b-c@host", "x@10.0.0.1"]
)
def test_a_plain_admin_address_goes_to_aliases(tmp_path: os.PathLike[str], raw: str) -> None:
    ctx = context(str(tmp_path), f"buildos.smtp_relay=mail.example.org buildos.admin_email={raw}")
    services.mail_relay(ctx)
    assert read(ctx, "/etc/aliases") == f"root: {raw}\n"


@pytest.mark.parametrize(
    ("raw", "relayhost"),
    [
        ("mail.example.org", "[mail.example.org]"),
        ("mail.example.org:587", "[mail.example.org]:587"),
        ("[mail.example.org]", "[mail.example.org]"),
        ("[mail.example.org]:587", "[mail.example.org]:587"),
        ("10.0.0.25:25", "[10.0.0.25]:25"),
    ],
)
def test_the_relay_becomes_postfixs_host_and_port(
    tmp_path: os.PathLike[str], raw: str, relayhost: str
) -> None:
    ctx = context(str(tmp_path), f"buildos.smtp_relay={raw}")
    services.mail_relay(ctx)
    assert f"relayhost = {relayhost}\n" in read(ctx, "/etc/postfix/main.cf")


@pytest.mark.parametrize(
    "raw",
    ["host:0", "host:65536", "host:", "[host", "host]:25", "a,b", "-host", "[host:587]", "h;x"],
)
def test_a_bad_relay_is_a_warning_and_postfix_is_left_alone(
    tmp_path: os.PathLike[str], raw: str
) -> None:
    ctx = context(str(tmp_path), f"buildos.smtp_relay={raw}")
    assert ctx.value(services.SMTP_RELAY) is None
    assert any(p.startswith("buildos.smtp_relay: expected a host") for p in ctx.config.problems)
    services.mail_relay(ctx)
    assert not ctx.kernel.exists("/etc/postfix/main.cf")


def sourced(path: str, names: list[str], cwd: str) -> list[str]:
    """The variables as `sh` sees them after `. PATH`, each value exactly."""
    shown = "".join(f'printf "%s\\0" "${name}"; ' for name in names)
    done = subprocess.run(
        ["sh", "-c", f'. "$1" && {shown}', "sh", path],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
    )
    return done.stdout.split("\0")[:-1]


def test_the_env_file_runs_nothing_when_a_shell_sources_it(tmp_path: os.PathLike[str]) -> None:
    url = "http://x/$(touch${IFS}pwned)`touch${IFS}pwned2`;touch${IFS}pwned3&a='b'\"c\"\\d"
    ctx = context(
        str(tmp_path),
        f"buildos.buildid_url={url} buildos.smtp_relay=mail.example.org:587 "
        "buildos.admin_email=ops@example.org",
    )
    assert ctx.value(services.BUILDID_URL) == url
    services.mail_relay(ctx)
    assert isinstance(ctx.kernel, FakeKernel)
    env = ctx.kernel.path("/etc/initpy/buildos.env")
    names = ["BUILDOS_SMTP_RELAY", "BUILDOS_ADMIN_EMAIL", "BUILDOS_BUILDID_URL"]
    assert sourced(env, names, str(tmp_path)) == ["mail.example.org:587", "ops@example.org", url]
    assert not [n for n in os.listdir(tmp_path) if n.startswith("pwned")]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_any_printable_value_comes_back_whole_from_a_sourced_env_file(
    tmp_path_factory: pytest.TempPathFactory, value: str
) -> None:
    folder = tmp_path_factory.mktemp("env")
    path = folder / "x.env"
    path.write_text(etc.env_file({"VALUE": value}))
    assert sourced(str(path), ["VALUE"], str(folder)) == [value]
    assert os.listdir(folder) == ["x.env"]


def test_the_env_file_refuses_what_it_cannot_write_safely() -> None:
    with pytest.raises(ValueError, match="control character"):
        etc.env_file({"A": "x\ny=1"})
    with pytest.raises(ValueError, match="not an environment variable name"):
        etc.env_file({"A;B": "x"})


FINGERPRINT = ":".join(f"{i:02X}" for i in range(32))


def test_the_toolchain_parameters_go_to_the_env_file(tmp_path: os.PathLike[str]) -> None:
    url = "tftp://10.0.2.2/toolchain/toolchain.sha256"
    ctx = context(
        str(tmp_path),
        f"buildos.toolchain_url={url} buildos.toolchain_trust={FINGERPRINT.lower()}",
    )
    services.mail_relay(ctx)
    assert isinstance(ctx.kernel, FakeKernel)
    env = ctx.kernel.path("/etc/initpy/buildos.env")
    names = ["BUILDOS_TOOLCHAIN_URL", "BUILDOS_TOOLCHAIN_TRUST"]
    assert sourced(env, names, str(tmp_path)) == [url, FINGERPRINT.lower()]


@pytest.mark.parametrize(
    ("cmdline", "problem"),
    [
        ("buildos.toolchain_url=ftp://x/toolchain.sha256", "expected a URL (tftp, http"),
        ("buildos.toolchain_url=x/toolchain.sha256", "expected a URL"),
        ("buildos.toolchain_url=http://x/\x1b[2Jt.sha256", "expected a URL"),
        ("buildos.toolchain_url", "got no value"),
        ("buildos.buildid_url=gopher://x/buildos-buildid", "expected a URL (tftp, http"),
        ("buildos.toolchain_trust=" + FINGERPRINT[:-3], "32 hex pairs"),
        ("buildos.toolchain_trust=" + FINGERPRINT.replace(":", "-"), "32 hex pairs"),
        ("buildos.toolchain_trust=" + FINGERPRINT + ":00", "32 hex pairs"),
        ("buildos.toolchain_trust=" + FINGERPRINT.replace("1F", "1G"), "32 hex pairs"),
    ],
)
def test_a_bad_toolchain_or_build_id_url_is_refused_at_boot(cmdline: str, problem: str) -> None:
    config = parse(cmdline, [*CORE_PARAMETERS, *services.HOOK.parameters])
    assert [p for p in config.problems if problem in p], config.problems


@pytest.mark.parametrize(
    "url",
    [
        "tftp://10.0.0.1/toolchain.sha256",
        "HTTP://download.build2.org/toolchain.sha256",
        "https://download.build2.org/toolchain.sha256",
        "file:///srv/toolchain.sha256",
    ],
)
def test_every_scheme_the_host_fetches_is_taken(url: str) -> None:
    config = parse(
        f"buildos.toolchain_url={url} buildos.buildid_url={url}",
        [*CORE_PARAMETERS, *services.HOOK.parameters],
    )
    assert config.problems == ()
    assert config.values["buildos.toolchain_url"] == config.values["buildos.buildid_url"] == url
