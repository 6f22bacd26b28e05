"""The buildhost hook on the fake kernel: the build user in /etc, the /build/tftp tmpfs.

Each test boots the two standard disks with the hooks around storage
(tests/unit/storage_boot.py), as a build host boots.
"""

from __future__ import annotations

import os
import re

import pytest

from hooks import buildhost
from initpy.devtools.fake import FakeKernel
from initpy.devtools.walk import fake_ssh_keygen
from initpy.runtime.hook import BootContext
from initpy.runtime.report import Report
from tests.unit.conftest import make_executable
from tests.unit.storage_boot import boot, etc_text, mounts, rescue_text, standard_disks, write_etc


@pytest.fixture
def k(kernel: FakeKernel) -> FakeKernel:
    kernel.commands["ssh-keygen"] = fake_ssh_keygen(kernel)
    standard_disks(kernel)
    return kernel


def test_build_user_is_created_in_passwd_group_and_shadow(k: FakeKernel) -> None:
    make_executable(k, "/bin/bash")
    write_etc(k, "passwd", "root:x:0:0:root:/root:/bin/bash\n")
    write_etc(k, "group", "root:x:0:\n")
    write_etc(k, "shadow", "root:*:19000:0:99999:7:::\n", 0o640)
    boot(k)
    assert etc_text(k, "passwd").splitlines()[-1] == "build:x:1100:1100:build:/build:/bin/bash"
    assert etc_text(k, "group").splitlines()[-1] == "build:x:1100:"
    assert etc_text(k, "shadow").splitlines()[-1] == "build:!::0:99999:7:::"
    assert os.stat(k.path("/etc/shadow")).st_mode & 0o777 == 0o640
    assert ("chown", "/build", 1100, 1100) in k.calls


def test_build_user_joins_the_oss_kvm_group_once(k: FakeKernel) -> None:
    write_etc(k, "passwd", "root:x:0:0:root:/root:/bin/sh\n")
    write_etc(k, "group", "root:x:0:\nkvm:x:106:alice\n")
    write_etc(k, "gshadow", "root:*::\nkvm:!::alice\n", 0o640)
    boot(k)
    assert "kvm:x:106:alice,build" in etc_text(k, "group").splitlines()
    assert "kvm:!::alice,build" in etc_text(k, "gshadow").splitlines()
    group = etc_text(k, "group")
    buildhost.build_user(BootContext(kernel=k, report=Report(k)))
    assert etc_text(k, "group") == group
    assert any("build added to group kvm" in line for line in k.console_lines)


def test_build_user_without_any_passwd_file(k: FakeKernel) -> None:
    boot(k)
    assert etc_text(k, "passwd") == (
        "root:*:0:0:root:/root:/bin/sh\nbuild:*:1100:1100:build:/build:/bin/sh\n"
    )
    assert etc_text(k, "group") == "root:x:0:\nbuild:x:1100:\n"
    assert not os.path.exists(k.path("/etc/shadow"))


def test_build_user_is_idempotent_and_an_existing_one_is_kept(k: FakeKernel) -> None:
    write_etc(k, "passwd", "root:x:0:0:root:/root:/bin/sh\nbuild:x:2000:2000::/build:/bin/sh\n")
    write_etc(k, "group", "root:x:0:\nbuild:x:2000:\n")
    boot(k)
    assert [ln for ln in etc_text(k, "passwd").splitlines() if ln.startswith("build:")] == [
        "build:x:2000:2000::/build:/bin/sh"
    ]
    assert [ln for ln in etc_text(k, "group").splitlines() if ln.startswith("build:")] == [
        "build:x:2000:"
    ]
    tftp = [c for c in mounts(k) if c[1] == "/build/tftp"]
    assert tftp[0][4] == "size=10%,mode=0755,uid=2000,gid=2000"
    # And running the state again changes nothing.
    passwd, group = etc_text(k, "passwd"), etc_text(k, "group")
    buildhost.build_user(BootContext(kernel=k, report=Report(k)))
    assert (etc_text(k, "passwd"), etc_text(k, "group")) == (passwd, group)


def test_build_uid_taken_by_someone_else_is_a_rescue(k: FakeKernel) -> None:
    write_etc(k, "passwd", "root:x:0:0:root:/root:/bin/sh\nalice:x:1100:1100::/home/a:/bin/sh\n")
    write_etc(k, "group", "root:x:0:\n")
    boot(k)
    assert "uid 1100 already belongs to 'alice'" in rescue_text(k)


def test_tftp_size_parameter_and_a_bad_value(k: FakeKernel) -> None:
    k.cmdline = "initpy.tftp_size=4G"
    with open(k.path("/proc/cmdline"), "w") as f:
        f.write(k.cmdline + "\n")
    boot(k)
    tftp_options = [c for c in mounts(k) if c[1] == "/build/tftp"][0][4]
    assert isinstance(tftp_options, str) and tftp_options.startswith("size=4G,")
    with pytest.raises(Exception, match="tmpfs size like 2G"):
        buildhost.TFTP_SIZE.parse("lots")


def _tftp_line(k: FakeKernel) -> str:
    lines = [ln for ln in k.console_lines if "initpy: tftp: ok" in ln]
    assert len(lines) == 1, k.console_lines
    return lines[0]


def test_tftp_is_served_on_br0_too_by_default(k: FakeKernel) -> None:
    boot(k)
    with open(k.path(buildhost.TFTP_LAN_CONF)) as f:
        conf = f.read().splitlines()
    # TFTP only (no DNS, no DHCP), on br0's own addresses, of /build/tftp.
    assert {"port=0", "interface=br0", "except-interface=lo", "bind-dynamic"} <= set(conf)
    assert {"enable-tftp", "tftp-root=/build/tftp"} <= set(conf)
    assert not [ln for ln in conf if ln.startswith(("dhcp-", "enable-tftp="))]
    assert _tftp_line(k).endswith("; TFTP on br1 and br0 (read-only)")


def test_initpy_tftp_br1_keeps_it_private_and_a_bad_value_is_refused(k: FakeKernel) -> None:
    os.makedirs(k.path("/etc/initpy"), exist_ok=True)
    with open(k.path(buildhost.TFTP_LAN_CONF), "w") as f:
        f.write("left by an earlier run of the state\n")
    k.cmdline = "initpy.tftp=br1"
    with open(k.path("/proc/cmdline"), "w") as f:
        f.write(k.cmdline + "\n")
    boot(k)
    assert not os.path.exists(k.path(buildhost.TFTP_LAN_CONF))
    assert _tftp_line(k).endswith("; TFTP on br1 only (initpy.tftp=br1)")
    with pytest.raises(Exception, match=re.escape("expected one of lan|br1, got 'br0'")):
        buildhost.TFTP_ON.parse("br0")


def test_the_lan_unit_starts_only_when_the_state_wrote_its_config() -> None:
    files = {f.path: f for f in buildhost.HOOK.os_files}
    unit = files[f"/etc/systemd/system/{buildhost.TFTP_LAN_UNIT}"]
    assert unit.wanted_by == "multi-user.target"
    lines = unit.text.splitlines()
    assert f"ConditionPathExists={buildhost.TFTP_LAN_CONF}" in lines
    assert (
        f"ExecStart=/usr/sbin/dnsmasq --keep-in-foreground --conf-file={buildhost.TFTP_LAN_CONF}"
        in lines
    )
    # The main dnsmasq reads /etc/dnsmasq.d: the br0 server's file is not there.
    assert not buildhost.TFTP_LAN_CONF.startswith("/etc/dnsmasq.d/")
