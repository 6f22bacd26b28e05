"""One running guest: its serial console, its human monitor, its QEMU process.

`qemu.boot()` makes a `Vm`; its `expect()`/`send()`/`monitor()`/`wait_exit()`
drive the guest. The console is read by a thread into a buffer and the
artefact log as it arrives, so even a hung or killed run leaves its log;
failures carry its path and its tail.
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

LOG_TAIL_LINES = 40
# Firmware and loaders (pxelinux, OVMF, GRUB) move the serial console's
# cursor with escape sequences, which can land inside a word
# ("Loadin\x1b[25;06H\x1b[25;07Hg /buildos/..."): their lines are matched
# with escapes allowed anywhere.
ESCAPES = r"(?:\x1b\[[0-9;]*[A-Za-z])*"


def loosely(text: str) -> str:
    """A regex for `text` with terminal escape sequences allowed between its characters."""
    return ESCAPES.join(re.escape(c) for c in text)


class VmError(AssertionError):
    """A VM did not do what the test expected; the message carries the log tail."""


class Vm:
    """A running guest: its serial console, its monitor, its QEMU process."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        monitor_path: str,
        log_path: Path,
        argv: list[str],
        stderr: IO[bytes],
    ) -> None:
        self.proc = proc
        self._stderr = stderr
        self.monitor_path = monitor_path
        self.log_path = log_path
        self.argv = argv
        self.started = time.monotonic()
        self._text = ""  # the whole console so far, \r removed
        # (length of _text, monotonic time) after each chunk: when text came.
        self._arrivals: list[tuple[int, float]] = []
        self._cursor = 0  # expect() searches from here
        self._changed = threading.Condition()
        self._eof = False
        self._monitor: socket.socket | None = None
        self._log = open(log_path, "w", encoding="utf-8")  # closed in close()
        self._log.write("# " + " ".join(argv) + "\n")
        self._log.flush()
        self._reader = threading.Thread(
            target=self._read_console, daemon=True, name=f"serial:{log_path.name}"
        )
        self._reader.start()

    # -- the serial console ------------------------------------------------------

    def _read_console(self) -> None:
        assert self.proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            text = decoder.decode(chunk, final=not chunk).replace("\r", "")
            with self._changed:
                if text:
                    self._text += text
                    self._arrivals.append((len(self._text), time.monotonic()))
                    if not self._log.closed:
                        self._log.write(text)
                        self._log.flush()
                if not chunk:
                    self._eof = True
                self._changed.notify_all()
            if not chunk:
                return

    @property
    def console(self) -> str:
        """Everything the guest printed on the serial console so far."""
        with self._changed:
            return self._text

    def expect(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 60,
        flags: int = 0,
        fail_on: str | None = None,
    ) -> re.Match[str]:
        """Wait for `pattern` on the console, after the previous match; return the match.

        Fails with the log's tail and path when the pattern does not come in
        time or QEMU ends first, or at once when `fail_on` (a regex, e.g.
        `initpy: rescue:`) shows up first: a boot that went to rescue will
        not reach the hand-off, so waiting out the timeout only wastes minutes.
        """
        regex = re.compile(pattern, flags) if isinstance(pattern, str) else pattern
        failure = re.compile(fail_on, flags) if fail_on else None
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = regex.search(self._text, self._cursor)
                if match:
                    self._cursor = match.end()
                    return match
                if failure is not None and (bad := failure.search(self._text, self._cursor)):
                    # Let the lines after it (the reason, the fix) arrive.
                    self._changed.wait(2.0)
                    raise VmError(self._failure(f"{bad.group(0)!r} came before {regex.pattern!r}"))
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "QEMU ended" if self._eof else f"{timeout:g} s passed"
                    raise VmError(self._failure(f"{why} before {regex.pattern!r} appeared"))
                self._changed.wait(min(left, 1.0))

    def seconds_at(self, offset: int) -> float:
        """When the console character at `offset` arrived, in seconds since QEMU started.

        For timing what the guest printed (a match's `start()`), however
        late the test looked at it.
        """
        with self._changed:
            index = bisect.bisect_right(self._arrivals, offset, key=lambda a: a[0])
            if index == len(self._arrivals):
                raise ValueError(f"console offset {offset} has not arrived yet")
            return self._arrivals[index][1] - self.started

    def send(self, line: str) -> None:
        """Type one line into the serial console (the guest's tty sees Enter)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise VmError(self._failure(f"cannot send {line!r}: QEMU has ended")) from exc

    # -- the monitor and the process -------------------------------------------

    def monitor(self, command: str, timeout: float = 10) -> str:
        """Run a human-monitor command (e.g. `set_link net0 off`); return its output."""
        if self._monitor is None:
            deadline = time.monotonic() + timeout
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(self.monitor_path)
                    break
                except OSError:
                    sock.close()
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise VmError(self._failure("the QEMU monitor does not answer")) from None
                    time.sleep(0.1)
            sock.settimeout(timeout)
            self._monitor = sock
            self._monitor_read()  # the banner and the first prompt
        self._monitor.sendall(command.encode() + b"\n")
        reply = self._monitor_read()
        # The monitor echoes the command line (with terminal escapes) first.
        lines = re.sub(r"\x1b\[[0-9;]*[A-Za-z]|\x1b[A-Za-z]", "", reply).replace("\r", "")
        return "\n".join(lines.splitlines()[1:]).strip()

    def _monitor_read(self) -> str:
        assert self._monitor is not None
        buffer = b""
        while not buffer.endswith(b"(qemu) "):
            chunk = self._monitor.recv(4096)
            if not chunk:
                break
            buffer += chunk
        return buffer.decode(errors="replace").removesuffix("(qemu) ")

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for QEMU to end (with -no-reboot, a guest reboot or power-off ends it)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise VmError(self._failure(f"QEMU still runs after {timeout:g} s")) from None
        self._reader.join(5)
        return code

    def leave_rescue_shell(self, timeout: float = 60) -> None:
        """Type `exit` in the rescue shell and see the guest reboot, ending QEMU."""
        self.send("exit")
        self.expect(r"initpy: rescue: shell left with status 0; rebooting", timeout)
        self.expect(r"reboot: Restarting system", timeout)
        code = self.wait_exit(timeout)
        if code != 0:
            raise VmError(self._failure(f"QEMU ended with {code} after the reboot"))

    @property
    def seconds(self) -> float:
        """Wall time since QEMU started."""
        return time.monotonic() - self.started

    def close(self) -> None:
        """Kill our QEMU by its PID (never by name) and keep the log."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self._monitor is not None:
            self._monitor.close()
        self._reader.join(5)
        self._stderr.seek(0)
        stderr = self._stderr.read().decode(errors="replace")
        with self._changed:
            if stderr.strip():
                self._log.write("\n# QEMU stderr:\n" + stderr)
            self._log.write(f"\n# QEMU exit {self.proc.returncode} after {self.seconds:.1f} s\n")
            self._log.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _failure(self, what: str) -> str:
        tail = "\n".join(self._text.splitlines()[-LOG_TAIL_LINES:])
        return (
            f"{what}\n--- last {LOG_TAIL_LINES} console lines (whole log: {self.log_path})"
            f" ---\n{tail}\n---"
        )
