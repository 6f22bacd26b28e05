"""Fetching a URL: a build id (`fetch`), or a whole file to disk (`fetch_to_file`).

The host's one way to the network, for the URL schemes the spec's hosts
use: `tftp://HOST[:PORT]/path` (tftpy), `http://` and `https://` (urllib,
the system's CA certificates), and `file://` (a path on the host, for tests
and local mirrors). `fetch(url, timeout)` reads a short answer (the
monitor's build id and checksums file); `fetch_to_file` streams a file of
up to `limit` bytes to disk within an overall deadline, hashing it as it
goes (the toolchain's archives). Every failure, whatever its kind (a name
that does not resolve, a refused connection, a timeout, a 404, a file not
found, an answer too long), is a `FetchError` whose text says what failed.
Two kinds are told apart, for the callers that judge a file rather than
the network: `TooLong` (asking again gives the same) and `NotFound` (the
server answered that the file is not there).

A TFTP URL names the file after the host the way RFC 3617 does: the first
`/` separates, so `tftp://10.0.0.1/buildos/buildos-buildid` asks for
`buildos/buildos-buildid`, which a chrooted server (tftpd-hpa --secure,
QEMU's) resolves below its root; `tftp://HOST//srv/tftp/x` asks for
`/srv/tftp/x`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import BinaryIO

# A build id file is 65 bytes (64 hex digits and a newline); anything much
# longer is not one, and is not read to the end.
ANSWER_LIMIT = 4096
TFTP_PORT = 69
# tftpy waits `timeout / TFTP_TRIES` for each packet and sends the request
# again that many times, so one fetch takes at most about `timeout`.
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
        deadline: float,
        progress: Callable[[], None] | None = None,
    ) -> None:
        self.out, self.limit, self.what, self.deadline = out, limit, what, deadline
        self.progress = progress
        self.received = 0
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.received += len(data)
        if self.received > self.limit:
            raise TooLong(f"answer longer than {self.limit} bytes: {self.what}")
        if time.monotonic() > self.deadline:
            raise FetchError(f"not done within the deadline ({self.received} bytes so far)")
        self.sha256.update(data)
        if self.progress is not None:
            self.progress()
        return self.out.write(data)


def fetch(url: str, timeout: float, limit: int = ANSWER_LIMIT) -> bytes:
    """The body at `url` (at most `limit` bytes, a build id file's by default), or FetchError."""
    body = io.BytesIO()
    what = "not a build id file" if limit == ANSWER_LIMIT else "too long to be what was asked for"
    _transfer(url, _Sink(body, limit, what, float("inf")), timeout)
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
            sink = _Sink(
                out,
                limit,
                f"larger than the {limit}-byte cap",
                time.monotonic() + deadline,
                progress,
            )
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
    anything else (empty, truncated, an HTML error page) is refused.
    """
    try:
        text = answer.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        raise ValueError(f"not text ({len(answer)} bytes)") from None
    if not text:
        raise ValueError(f"empty answer ({len(answer)} bytes)")
    if not BUILD_ID.fullmatch(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"not 64 hex digits: {shown!r}")
    return text


def _fetch_tftp(parts: urllib.parse.SplitResult, sink: _Sink, timeout: float) -> None:
    import tftpy

    if not parts.hostname:
        raise FetchError("tftp URL without a host (expected tftp://HOST[:PORT]/path)")
    filename = urllib.parse.unquote(parts.path)
    filename = filename[1:] if filename.startswith("/") else filename
    if not filename:
        raise FetchError("tftp URL without a file (expected tftp://HOST[:PORT]/path)")
    # tftpy logs every timeout and retry at warning level; the caller says
    # once what failed.
    logging.getLogger("tftpy").setLevel(logging.CRITICAL)
    client = tftpy.TftpClient(parts.hostname, parts.port or TFTP_PORT, {}, flock=False)
    try:
        client.download(filename, sink, timeout=timeout / TFTP_TRIES, retries=TFTP_TRIES)
    except tftpy.TftpTimeout:
        raise FetchError(
            f"no answer from {parts.hostname}:{parts.port or TFTP_PORT} "
            f"within {timeout:g} s ({TFTP_TRIES} tries)"
        ) from None
    except tftpy.TftpFileNotFoundError as exc:
        raise NotFound(f"TFTP error from {parts.hostname}: {exc}") from None
    except tftpy.TftpException as exc:
        raise FetchError(f"TFTP error from {parts.hostname}: {exc}") from None


def _fetch_http(url: str, sink: _Sink, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "initpy-host"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            _copy(response, sink)
    except urllib.error.HTTPError as exc:
        kind = NotFound if exc.code in (404, 410) else FetchError
        raise kind(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise FetchError(f"timed out after {timeout:g} s") from None
        raise FetchError(f"{reason}") from None


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
