"""Fetching a URL: a build id (`fetch`), or a whole file to disk (`fetch_to_file`).

The host's one way to the network, for the URL schemes the spec's hosts
use: `tftp://HOST[:PORT]/path` (initpy/host/tftp.py, which takes answers
from the server alone), `http://` and `https://` (urllib; https verifies the
server's certificate and name against the OS's CA store), and `file://` (a
path on the host, for tests and local mirrors). `fetch(url, timeout)` reads
a short answer (the monitor's build id and checksums file) within
`timeout` in all; `fetch_to_file` streams a file of up to `limit` bytes to
disk within an overall deadline, hashing it as it goes (the toolchain's
archives). One deadline covers each fetch from the connect through every
read, whatever the scheme: a server that trickles a byte at a time is cut
off at it (`_Deadline`).

Every failure, whatever its kind (a name that does not resolve, a refused
connection, a timeout, a 404, a file not found, an answer too long), is a
`FetchError` whose text says what failed, made printable: a server's words
in it (an HTTP reason, a TFTP error message) reach the journal escaped
(initpy/runtime/escape.py). Two kinds are told apart, for the callers that
judge a file rather than the network: `TooLong` (asking again gives the
same) and `NotFound` (the server answered that the file is not there).

A TFTP URL names the file after the host the way RFC 3617 does: the first
`/` separates, so `tftp://10.0.0.1/buildos/buildos-buildid` asks for
`buildos/buildos-buildid`, which a chrooted server (tftpd-hpa --secure,
QEMU's) resolves below its root; `tftp://HOST//srv/tftp/x` asks for
`/srv/tftp/x`.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from types import TracebackType
from typing import Any, BinaryIO

from initpy.host import tftp
from initpy.runtime.escape import printable

# A build id file is 65 bytes (64 hex digits and a newline); anything much
# longer is not one, and is not read to the end.
ANSWER_LIMIT = 4096
TFTP_PORT = 69
# Each TFTP packet is waited for `timeout / TFTP_TRIES` and the last one sent
# again that many times, so a silent server costs about `timeout`.
TFTP_TRIES = 3
BUILD_ID = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 16


class FetchError(Exception):
    """The URL gave no answer; the text says why."""


class TooLong(FetchError):
    """The answer passed its limit: asking again would give the same."""


class NotFound(FetchError):
    """The server answered that there is no such file (HTTP 404 or 410, TFTP's
    error 1, a missing local file): not a network failure."""


class _Sink:
    """Where a transfer's bytes go: counted against a limit and a deadline, hashed."""

    def __init__(
        self,
        out: BinaryIO,
        limit: int,
        what: str,
        budget: float,
        progress: Callable[[], None] | None = None,
    ) -> None:
        self.out, self.limit, self.what, self.budget = out, limit, what, budget
        self.deadline = time.monotonic() + budget
        self.progress = progress
        self.received = 0
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.received += len(data)
        self.announce(self.received)
        self.check_deadline()
        self.sha256.update(data)
        if self.progress is not None:
            self.progress()
        return self.out.write(data)

    def announce(self, size: int) -> None:
        """Refuse an answer of `size` bytes (so far, or as the server announces it)."""
        if size > self.limit:
            raise TooLong(f"answer longer than {self.limit} bytes: {self.what}")

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise self.late()

    def late(self) -> FetchError:
        return FetchError(
            f"timed out after {self.budget:g} s in all ({self.received} bytes so far)"
        )


def fetch(url: str, timeout: float, limit: int = ANSWER_LIMIT) -> bytes:
    """The body at `url` (at most `limit` bytes, a build id file's by default),
    all of it within `timeout` seconds, or FetchError."""
    body = io.BytesIO()
    what = "not a build id file" if limit == ANSWER_LIMIT else "too long to be what was asked for"
    _transfer(url, _Sink(body, limit, what, timeout), timeout)
    return body.getvalue()


def fetch_to_file(
    url: str,
    path: str,
    limit: int,
    timeout: float,
    deadline: float,
    progress: Callable[[], None] | None = None,
) -> str:
    """Stream `url` into a new file at `path`; its sha256 (hex), or FetchError.

    `timeout` bounds each wait for the server, `deadline` (seconds) the
    whole transfer; more than `limit` bytes stops it. On any failure the
    partial file is removed. `progress` is called for every chunk that
    arrives (the monitor's watchdog pings from it).
    """
    try:
        with open(path, "xb") as out:
            sink = _Sink(out, limit, f"larger than the {limit}-byte cap", deadline, progress)
            _transfer(url, sink, timeout)
    except FetchError:
        _remove(path)
        raise
    except OSError as exc:
        _remove(path)
        raise FetchError(f"{path}: {exc.strerror or exc}") from None
    return sink.sha256.hexdigest()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _transfer(url: str, sink: _Sink, timeout: float) -> None:
    """One fetch; any failure a FetchError (its kind kept) with a printable text."""
    try:
        _dispatch(url, sink, min(timeout, sink.budget))
    except FetchError as exc:
        raise type(exc)(printable(str(exc))) from None


def _dispatch(url: str, sink: _Sink, timeout: float) -> None:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        if scheme == "tftp":
            return _fetch_tftp(parts, sink, timeout)
        if scheme in ("http", "https"):
            return _fetch_http(url, sink, timeout)
        if scheme == "file":
            return _fetch_file(parts, sink)
    except FetchError:
        raise
    except TimeoutError as exc:
        raise FetchError(f"timed out after {timeout:g} s ({exc or 'no answer'})") from None
    except Exception as exc:  # any library's own error is one failed fetch, told as such
        raise FetchError(f"{type(exc).__name__}: {exc}") from None
    raise FetchError(f"unsupported URL scheme {parts.scheme!r} (use tftp, http, https or file)")


def parse_build_id(answer: bytes) -> str:
    """The build id in a buildos-buildid file, or ValueError saying what is wrong.

    The file mkinitrd writes is 64 lowercase hex digits and a newline;
    surrounding white space is allowed, upper case is read as lower case,
    anything else (empty, truncated, an HTML error page) is refused, its
    start quoted escaped.
    """
    try:
        text = answer.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        raise ValueError(f"not text ({len(answer)} bytes)") from None
    if not text:
        raise ValueError(f"empty answer ({len(answer)} bytes)")
    if not BUILD_ID.fullmatch(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"not 64 hex digits: '{printable(shown)}'")
    return text


def _fetch_tftp(parts: urllib.parse.SplitResult, sink: _Sink, timeout: float) -> None:
    if not parts.hostname:
        raise FetchError("tftp URL without a host (expected tftp://HOST[:PORT]/path)")
    filename = urllib.parse.unquote(parts.path)
    filename = filename[1:] if filename.startswith("/") else filename
    if not filename:
        raise FetchError("tftp URL without a file (expected tftp://HOST[:PORT]/path)")
    host = parts.hostname
    try:
        tftp.download(
            host,
            parts.port or TFTP_PORT,
            filename,
            sink.write,
            announce=sink.announce,
            wait=timeout / TFTP_TRIES,
            tries=TFTP_TRIES,
            deadline=sink.deadline,
        )
    except tftp.TftpTimeout as exc:
        raise sink.late() if exc.late else FetchError(str(exc)) from None
    except tftp.TftpError as exc:
        kind = NotFound if exc.code == tftp.NOT_FOUND else FetchError
        raise kind(f"TFTP error from {host}: {exc}") from None


# -- http(s) under one deadline ----------------------------------------------------------


class _Deadline:
    """Shuts every socket of one HTTP fetch down when its deadline passes.

    A socket timeout bounds one wait only: a server that sends a byte just
    before each would hold a fetch for as long as it likes, in the status
    line, the headers or the body, and in TLS's handshake too. So each
    connection's socket (before TLS wraps it) is kept as a duplicate file
    descriptor, and a timer shuts the socket down at the deadline: the read
    that waits returns at once, and the fetch fails as late.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._fds: list[int] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._fds.append(os.dup(sock.fileno()))
            if self.fired:
                _shut(self._fds[-1])

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for fd in self._fds:
                _shut(fd)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()


def _shut(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected (yet, or any more): nothing waits on it
    finally:
        sock.detach()  # the descriptor stays the deadline's, closed on its exit


class _Watched(http.client.HTTPConnection):
    """A connection whose socket the deadline may shut down (`_watched` sets it)."""

    guard: _Deadline

    def connect(self) -> None:
        super().connect()  # the TCP connection: HTTPSConnection wraps it after this
        assert self.sock is not None
        self.guard.watch(self.sock)


# The MRO runs HTTPSConnection.connect, then _Watched.connect (the TCP
# connection, watched), then wraps it in TLS: the handshake is covered too.
class _WatchedTls(http.client.HTTPSConnection, _Watched):
    pass


def _watched(kind: type[_Watched], guard: _Deadline) -> Callable[..., _Watched]:
    def connection(*args: Any, **kwargs: Any) -> _Watched:
        made = kind(*args, **kwargs)
        made.guard = guard
        return made

    return connection


class _Handler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's http and https, each connection under the fetch's deadline."""

    def __init__(self, deadline: _Deadline) -> None:
        urllib.request.HTTPHandler.__init__(self)
        urllib.request.HTTPSHandler.__init__(self)
        self.guard = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(_Watched, self.guard), req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        # Named, not left to http.client's default (which a process may
        # change): the OS's CA store, the certificate's name checked.
        context = ssl.create_default_context()
        return self.do_open(_watched(_WatchedTls, self.guard), req, context=context)


def _fetch_http(url: str, sink: _Sink, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "initpy-host"})
    with _Deadline(sink.deadline) as deadline:
        opener = urllib.request.build_opener(_Handler(deadline))
        try:
            with opener.open(request, timeout=timeout) as response:
                _copy(response, sink)
        except urllib.error.HTTPError as exc:
            kind = NotFound if exc.code in (404, 410) else FetchError
            raise kind(f"HTTP {exc.code} {exc.reason}") from None
        except Exception as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):  # one wait's timeout, the likelier word
                raise FetchError(f"timed out after {timeout:g} s") from None
            if deadline.fired:
                raise sink.late() from None
            if isinstance(exc, urllib.error.URLError):
                raise FetchError(f"{exc.reason}") from None
            raise
        if deadline.fired:  # an answer cut short by the deadline's shutdown
            raise sink.late()


def _fetch_file(parts: urllib.parse.SplitResult, sink: _Sink) -> None:
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"file URL names host {parts.netloc!r} (use file:///path)")
    path = urllib.request.url2pathname(parts.path)
    try:
        with open(path, "rb") as f:
            _copy(f, sink)
    except FileNotFoundError as exc:
        raise NotFound(f"{path}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise FetchError(f"{path}: {exc.strerror or exc}") from None


def _copy(source: BinaryIO, sink: _Sink) -> None:
    while chunk := source.read(CHUNK):
        sink.write(chunk)
