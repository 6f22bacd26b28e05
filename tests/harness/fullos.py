"""The full image: the Debian OS tree, packed with initpy, booted to systemd.

One place for the VM tests (tests/vm/test_fullos.py), the demo
(`scripts/demo --full`) and the benchmark (benchmarks/full_os.py):

- `build_tree()`: scripts/mkrootfs (cached in ~/.cache/initpy/rootfs);
- `build_image(...)`: mkinitrd.py --rootfs TREE, at a fast zstd level by
  default (zstd:3 packs in seconds; zstd:19, the release default, takes
  minutes for the same boot);
- `full_os_args(...)`: the boot's disks, NIC (SSH forwarded to a loopback
  port, the SMTP sink at 10.0.2.100:25) and command line;
- `Ssh`: OpenSSH's client against that port, with the test's own key.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from . import qemu, smtp_sink
from .disks import state_and_machines
from .images import InitrdFiles
from .qemu import REPO
from .qemu_rules import BootArgs, Nic
from .scenario import FULL_BOOT_MAC

TEST_COMPRESS = "zstd:3"
# The OS image at zstd's level 3 too: it packs in seconds (level 19, the
# release default, takes minutes); the boot reads it just the same.
TEST_OS_IMAGE = "zstd:3"
ADMIN = "admin@example.org"
HOSTNAME = "fullos"
# The line buildos-ready.service prints on the console once systemd is done,
# matched only once its end has arrived: an open `(.*)` at the end of the
# console buffer matched a half-received line, with the services' states
# still on their way (test_fullos failed so once).
READY = (
    r"buildos: up: (\w+); multi-user.target at (\d+) ms, systemd at (\d+) ms; "
    r"failed: \[(.*?)\]; ([^\r\n]*)\r?\n"
)
# Under TCG a full boot reaches multi-user.target after 60-90 s of uptime,
# longer on a loaded machine; this bounds a hang, not the speed.
BOOT_TIMEOUT = 900
MEMORY = 2048


def _run(argv: list[str], timeout: float) -> str:
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-3000:]}"
        )
    return done.stdout


def build_tree(source: Path = REPO) -> Path:
    """The OS tree (scripts/mkrootfs; cached); mkinitrd adds the kernel's modules.

    `source`: another checkout's scripts (benchmarks/full_image.py builds
    an older commit's image from its `git archive`).
    """
    out = _run([str(source / "scripts" / "mkrootfs")], 1800)
    return Path(out.strip().splitlines()[-1])


def pxe_layout(*args: str) -> str:
    """Run scripts/pxe-layout with `args`; its progress lines (stderr), or the test fails."""
    done = subprocess.run(
        [str(REPO / "scripts" / "pxe-layout"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"scripts/pxe-layout {' '.join(args)}:\n{done.stderr}"
    return done.stderr


def build_image(
    vmlinuz: Path,
    modules: Path,
    tree: Path,
    outdir: Path,
    compress: str = TEST_COMPRESS,
    no_cache: bool = False,
    includes: Sequence[str] = (),
    source: Path = REPO,
    os_image: str | None = TEST_OS_IMAGE,
) -> Path:
    """mkinitrd.py --rootfs TREE into `outdir` (buildos-image, -initrd, -buildid).

    `includes` are mkinitrd's `--include SRC[:DST]`: another build of the
    same tree with one small file more costs seconds (the compressed
    parts are cached by content; only the small part is new). `source`:
    the checkout whose mkinitrd.py runs (as for build_tree). `os_image`:
    mkinitrd's `--os-image`; None passes none (mkinitrd's default, and the
    only choice for a checkout older than the option).
    """
    argv = [sys.executable, str(source / "mkinitrd.py"), "--kernel", str(vmlinuz)]
    argv += ["--modules", str(modules), "--rootfs", str(tree), "-o", str(outdir)]
    argv += ["--compress", compress]
    argv += ["--os-image", os_image] if os_image is not None else []
    argv += ["--no-cache"] if no_cache else []
    argv += [word for spec in includes for word in ("--include", spec)]
    _run(argv, 1800)
    return outdir


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for hostfwd)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_key(folder: Path) -> Path:
    """A fresh ed25519 key pair for this test; returns the private key's path."""
    key = folder / "id_ed25519"
    if not key.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vm-test", "-f", str(key)], 60)
    return key


def full_os_args(
    workdir: Path,
    ssh_port: int,
    public_key: str,
    mail_folder: Path,
    disks: list[str] | None = None,
    tftp: Path | None = None,
) -> BootArgs:
    """The full image's boot: state and machines disks, SSH and the SMTP sink.

    `tftp`: a folder QEMU's user network serves at tftp://10.0.2.2/.
    """
    forwards = f"hostname={HOSTNAME},hostfwd=tcp:127.0.0.1:{ssh_port}-:22,"
    forwards += f"tftp={tftp}," if tftp is not None else ""
    forwards += smtp_sink.guestfwd(mail_folder)
    args = BootArgs(memory=MEMORY)
    args.disks += disks if disks is not None else state_and_machines(workdir)
    args.nics.append(Nic.user("net0", mac=FULL_BOOT_MAC, options=forwards))
    args.append += [
        f"buildos.smtp_relay={smtp_sink.SINK_ADDRESS}",
        f"buildos.admin_email={ADMIN}",
        f'buildos.ssh_key="{public_key}"',
        # The SMTP sink is the only "outside" a restricted user network has,
        # and it is on br0's private subnet: GUEST_BR1_SCRIPT's build machine
        # reaches it through the NAT only when br1 may reach the LAN (the
        # default, deny, is shown by tests/root/test_br1_filter.py).
        "initpy.br1_lan=allow",
    ]
    return args


def sections_script(commands: dict[str, str]) -> str:
    """One shell script that runs each command, its output between markers named after it."""
    return "".join(
        f"echo '==begin:{name}=='; {{ {cmd}; }} 2>&1; echo '==end:{name}=='\n"
        for name, cmd in commands.items()
    )


def read_sections(commands: dict[str, str], out: str) -> dict[str, str]:
    """sections_script's output: each command's, by name; every one must be there."""
    found = dict(re.findall(r"==begin:(\w+)==\n(.*?)==end:\1==", out, re.S))
    assert set(found) == set(commands), out
    return {k: v.strip() for k, v in found.items()}


@dataclass(frozen=True)
class Ssh:
    """OpenSSH's client as root@127.0.0.1:port with the test's key."""

    port: int
    key: Path

    def options(self) -> list[str]:
        return [
            "-p", str(self.port), "-i", str(self.key),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
            "-o", "IdentitiesOnly=yes",
        ]  # fmt: skip

    def run(
        self, command: str, stdin: str = "", timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", *self.options(), "root@127.0.0.1", command]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(
                f"ssh {command!r} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done

    def wait(self, timeout: float = 120) -> None:
        """Until sshd lets us in (it starts about when multi-user.target is reached)."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.run("true", timeout=60, check=False)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no SSH login in {timeout:g} s: {done.stderr}")
            time.sleep(3)

    def until(self, command: str, wanted: str, timeout: float) -> str:
        """`command`'s output (stripped), once it holds `wanted` or `timeout` has passed."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(command).stdout.strip()
            if wanted in out or time.monotonic() > deadline:
                return out
            time.sleep(2)

    def sections(self, commands: dict[str, str]) -> dict[str, str]:
        """Run each command in one SSH session; their outputs by name."""
        return read_sections(commands, self.run("sh -s", stdin=sections_script(commands)).stdout)

    def host_keys(self, types: tuple[str, ...] = ("ed25519", "ecdsa", "rsa")) -> dict[str, str]:
        """The host keys sshd presents, by key type (ssh-keyscan from the host).

        One type at a time, each tried a few times: under TCG a scan of all
        three at once sometimes loses one to its timeout.
        """
        keys: dict[str, str] = {}
        for kind in types:
            for _attempt in range(3):
                done = subprocess.run(
                    ["ssh-keyscan", "-t", kind, "-p", str(self.port), "-T", "30", "127.0.0.1"],
                    capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                found = [
                    line.split()[1:3]
                    for line in done.stdout.splitlines()
                    if len(line.split()) >= 3 and not line.startswith("#")
                ]
                if found:
                    keys.update(dict(found))
                    break
        return keys


def wait_for_mail(
    folder: Path, subject_part: str, timeout: float = 180, index: int = 0
) -> EmailMessage:
    """The sink's first message (or `index`-th, from 0) whose Subject has `subject_part`."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            m for m in smtp_sink.read_mail(folder) if subject_part in str(m.get("Subject", ""))
        ]
        if len(found) > index:
            return found[index]
        if time.monotonic() > deadline:
            seen = [str(m.get("Subject")) for m in smtp_sink.read_mail(folder)]
            raise AssertionError(f"no mail with {subject_part!r} in {timeout:g} s; got {seen}")
        time.sleep(2)


def env_flag(name: str) -> str | None:
    return os.environ.get(name) or None


@dataclass
class Host:
    """One boot of the full image, with its SSH client and the SMTP sink's folder."""

    vm: qemu.Vm
    ssh: Ssh
    mail: Path
    ready: re.Match[str]
    host_keys: dict[str, str]
    image: InitrdFiles
    workdir: Path
    disks: list[str]
    stack: contextlib.ExitStack = field(repr=False)

    def sections(self, commands: dict[str, str]) -> dict[str, str]:
        """Run each command in one SSH session; their outputs by name."""
        return self.ssh.sections(commands)

    def close(self) -> None:
        self.stack.close()


def boot_full(
    image: InitrdFiles,
    workdir: Path,
    name: str,
    disks: list[str] | None = None,
    tftp: Path | None = None,
    append: Sequence[str] = (),
) -> Host:
    """Boot the full image and wait for the console's `buildos: up` line and SSH.

    `tftp` is served at tftp://10.0.2.2/; `append` are more command-line words.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    key = make_key(workdir)
    mail = workdir / "mail"
    mail.mkdir(exist_ok=True)
    port = free_port()
    args: BootArgs = full_os_args(
        workdir, port, key.with_suffix(".pub").read_text().strip(), mail, disks, tftp
    )
    args.append += list(append)
    stack = contextlib.ExitStack()
    try:
        vm = stack.enter_context(
            qemu.boot(image.image, image.initrd, args.plus(append=["initpy.debug"]), name=name)
        )
        ready = vm.expect(READY, BOOT_TIMEOUT, fail_on=r"initpy: rescue: .*")
        ssh = Ssh(port, key)
        ssh.wait()
        keys = ssh.host_keys()
    except BaseException:
        stack.close()
        raise
    disk_paths = [d for d in args.disks if isinstance(d, str)]
    return Host(vm, ssh, mail, ready, keys, image, workdir, disk_paths, stack)


# A namespace on br1 in the guest: a lease (busybox udhcpc), the sink through
# the NAT, and a file over TFTP from /build/tftp.
GUEST_BR1_SCRIPT = r"""
set -e
cat > /run/udhcpc.sh <<'EOS'
#!/bin/sh
case $1 in
  bound|renew)
    ip addr add "$ip/$mask" dev "$interface"
    ip route add default via "${router%% *}"
    echo "lease $ip/$mask router ${router%% *}" ;;
esac
EOS
chmod +x /run/udhcpc.sh
ip netns add lan
ip link add vbr1 type veth peer name eth0 netns lan
ip link set vbr1 master br1 up
ip -n lan link set lo up
ip -n lan link set eth0 up
ip netns exec lan busybox udhcpc -i eth0 -n -q -t 10 -T 3 -s /run/udhcpc.sh 2>&1 | grep '^lease'
echo "==sink"
printf 'QUIT\r\n' | ip netns exec lan busybox nc -w 20 SINK 25
echo "==tftp"
echo TOKEN > /build/tftp/hello.txt
server=$(ip -4 -o addr show br1 | awk '{print $4}' | cut -d/ -f1)
cd /run && ip netns exec lan busybox tftp -g -r hello.txt -l /run/fetched.txt "$server"
cat /run/fetched.txt
"""
