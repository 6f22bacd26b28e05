"""Network namespaces for the network tests and the DHCP benchmark.

Everything here happens inside namespaces this process creates (named
`initpy-<pid>-...`) and is removed on exit: veth pairs and taps live in
them, dnsmasq runs in them and is stopped by its own PID, and only private
addresses inside them are used. Nothing touches the host's own network.

- `Netns(label)`: a namespace; `.run(argv)` runs a command inside it.
- `.veth(name, peer_ns, peer_name)`, `.tap(name)`: links.
- `.dnsmasq(interface, ...)`: a DHCP server (no DNS service: port 0) whose
  leases offer a router and DNS server only when asked to.
- `.dnsmasq_conf(name, text, ready)`: dnsmasq with a configuration of
  initpy's (`local_conf` makes one runnable here); `.spawn(argv, log)`:
  any other daemon.
- `entered(ns)`: the calling thread inside the namespace, so that a QEMU
  started there can open the namespace's tap by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence

CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Netns:
    """A network namespace of this process; `close()` removes it and its daemons."""

    def __init__(self, label: str) -> None:
        self.name = f"initpy-{os.getpid()}-{label}"
        self._daemons: list[subprocess.Popen[bytes]] = []
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.name}-")
        _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"in {self.name}: {' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def veth(
        self,
        name: str,
        peer: Netns,
        peer_name: str,
        address: str | None = None,
        peer_mac: str | None = None,
    ) -> None:
        """A veth pair: `name` here (with `address`, up) and `peer_name` in `peer`."""
        _ip(
            "-n",
            self.name,
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer.name,
        )
        if peer_mac:
            _ip("-n", peer.name, "link", "set", peer_name, "address", peer_mac)
        if address:
            _ip("-n", self.name, "addr", "add", address, "dev", name)
        _ip("-n", self.name, "link", "set", name, "up")

    def tap(self, name: str, address: str | None = None) -> None:
        """A tap for a QEMU started inside this namespace (see `entered`)."""
        _ip("-n", self.name, "tuntap", "add", "dev", name, "mode", "tap")
        if address:
            _ip("-n", self.name, "addr", "add", address, "dev", name)
        _ip("-n", self.name, "link", "set", name, "up")

    def dnsmasq(
        self,
        interface: str,
        first: str,
        last: str,
        *,
        router: str | None = None,
        dns: str | None = None,
        hostname_for: tuple[str, str] | None = None,
        lease_time: str = "1h",
        options: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """Serve DHCP on `interface` only; no DNS service (port 0).

        `options` are more dnsmasq arguments, e.g. `--dhcp-option-force=15,TEXT`:
        dnsmasq sends a string option's text as it is in its argv, newlines and
        ESC included (tests/vm/test_network.py's hostile server).
        """
        argv = [
            "ip",
            "netns",
            "exec",
            self.name,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            f"--interface={interface}",
            "--bind-interfaces",
            "--except-interface=lo",
            "--port=0",
            "--log-dhcp",
            "--log-facility=-",
            # dnsmasq pings a new address for 3 s before offering it: a
            # lab without strangers needs no such check.
            "--no-ping",
            f"--dhcp-leasefile={self._tmp.name}/{interface}.leases",
            f"--pid-file={self._tmp.name}/{interface}.pid",
            f"--dhcp-range={first},{last},255.255.255.0,{lease_time}",
        ]
        # dnsmasq offers itself as router and DNS unless told otherwise;
        # an empty option 3/6 sends none.
        argv.append(f"--dhcp-option=3{',' + router if router else ''}")
        argv.append(f"--dhcp-option=6{',' + dns if dns else ''}")
        if hostname_for:
            argv.append(f"--dhcp-host={hostname_for[0]},{hostname_for[1]}")
        argv += options
        log = open(f"{self._tmp.name}/{interface}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._daemons.append(proc)
        # Ready once it has logged its DHCP range (it binds before that).
        deadline = time.monotonic() + 10
        while "DHCP, IP range" not in self.dnsmasq_log(interface):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"dnsmasq in {self.name} did not start: {self.dnsmasq_log(interface)[-500:]}"
                )
            time.sleep(0.05)
        return proc

    def spawn(self, argv: Sequence[str], log: str) -> subprocess.Popen[bytes]:
        """A daemon in this namespace (stopped by `close`), its output in the file `log`."""
        with open(log, "wb") as out:
            # `ip netns exec` execs the program: this PID is the daemon itself.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._daemons.append(proc)
        return proc

    def dnsmasq_conf(self, name: str, text: str, ready: str) -> subprocess.Popen[bytes]:
        """dnsmasq with `text` as its configuration, once its log shows `ready`."""
        conf = f"{self._tmp.name}/{name}.conf"
        with open(conf, "w") as f:
            f.write(text)
        argv = ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"]
        argv += [f"--log-facility={self._tmp.name}/{name}.log"]
        argv += [f"--pid-file={self._tmp.name}/{name}.pid"]
        argv += [f"--dhcp-leasefile={self._tmp.name}/{name}.leases"]
        proc = self.spawn(argv, f"{self._tmp.name}/{name}.out")
        deadline = time.monotonic() + 10
        while ready not in self.dnsmasq_log(name):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(f"{self._tmp.name}/{name}.out") as f:
                    said = f.read()[-500:]
                raise RuntimeError(f"dnsmasq {name} in {self.name} did not start: {said}")
            time.sleep(0.05)
        return proc

    def dnsmasq_log(self, interface: str) -> str:
        try:
            with open(f"{self._tmp.name}/{interface}.log") as f:
                return f.read()
        except OSError:
            return ""

    def close(self) -> None:
        for proc in self._daemons:
            if proc.poll() is None:
                # `ip netns exec` execs dnsmasq: this PID is dnsmasq itself.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        self._daemons.clear()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        self._tmp.cleanup()


def local_conf(text: str, tftp_root: str) -> str:
    """An initpy dnsmasq configuration with `tftp-root` here, run as root.

    The dnsmasq user may not exist here, and pytest's folders are private.
    """
    text = re.sub(r"^tftp-root=.*$", f"tftp-root={tftp_root}", text, flags=re.M)
    return re.sub(r"^user=dnsmasq$", "user=root", text, flags=re.M)


@contextlib.contextmanager
def entered(ns: Netns) -> Iterator[None]:
    """Run the calling thread inside `ns` (a child started now stays there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns.name}: {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back home: {os.strerror(err)}")
    finally:
        os.close(home)
        os.close(target)
