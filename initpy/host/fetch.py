"""Fetching `buildos.buildid_url`, and reading what came back as a build id.

The monitor's one way to the network: `fetch(url, timeout)` for the URL
schemes the spec's hosts use, `tftp://HOST[:PORT]/path` (tftpy),
`http://` and `https://` (urllib, the system's CA certificates), and
`file://` (a path on the host, for tests and local mirrors). Every failure,
whatever its kind (a name that does not resolve, a refused connection, a
timeout, a 404, a file not found, an answer too long), is a `FetchError`
whose text says what failed: the monitor only ever needs "it failed, and
why".

A TFTP URL names the file after the host the way RFC 3617 does: the first
`/` separates, so `tftp://10.0.0.1/buildos/buildos-buildid` asks for
`buildos/buildos-buildid`, which a chrooted server (tftpd-hpa --secure,
QEMU's) resolves below its root; `tftp://HOST//srv/tftp/x` asks for
`/srv/tftp/x`.
"""

from __future__ import annotations

import io
import logging
import re
import urllib.error
import urllib.parse
import urllib.request

# A build id file is 65 bytes (64 hex digits and a newline); anything much
# longer is not one, and is not read to the end.
ANSWER_LIMIT = 4096
TFTP_PORT = 69
# tftpy waits `timeout / TFTP_TRIES` for each packet and sends the request
# again that many times, so one fetch takes at most about `timeout`.
TFTP_TRIES = 3
BUILD_ID = re.compile(r"[0-9a-f]{64}")


class FetchError(Exception):
    """The URL gave no answer; the text says why."""


def fetch(url: str, timeout: float) -> bytes:
    """The body at `url` (at most ANSWER_LIMIT bytes), or FetchError."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        if scheme == "tftp":
            return _fetch_tftp(parts, timeout)
        if scheme in ("http", "https"):
            return _fetch_http(url, timeout)
        if scheme == "file":
            return _fetch_file(parts)
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


def _fetch_tftp(parts: urllib.parse.SplitResult, timeout: float) -> bytes:
    import tftpy

    if not parts.hostname:
        raise FetchError("tftp URL without a host (expected tftp://HOST[:PORT]/path)")
    filename = urllib.parse.unquote(parts.path)
    filename = filename[1:] if filename.startswith("/") else filename
    if not filename:
        raise FetchError("tftp URL without a file (expected tftp://HOST[:PORT]/path)")
    # tftpy logs every timeout and retry at warning level; the monitor says
    # once what failed.
    logging.getLogger("tftpy").setLevel(logging.CRITICAL)
    body = _Capped()
    client = tftpy.TftpClient(parts.hostname, parts.port or TFTP_PORT, {}, flock=False)
    try:
        client.download(
            filename, body, timeout=timeout / TFTP_TRIES, retries=TFTP_TRIES, packethook=body.count
        )
    except tftpy.TftpTimeout:
        raise FetchError(
            f"no answer from {parts.hostname}:{parts.port or TFTP_PORT} "
            f"within {timeout:g} s ({TFTP_TRIES} tries)"
        ) from None
    except tftpy.TftpException as exc:
        raise FetchError(f"TFTP error from {parts.hostname}: {exc}") from None
    return body.getvalue()


class _Capped(io.BytesIO):
    """tftpy's download target, which stops a transfer that is far too long."""

    def __init__(self) -> None:
        super().__init__()
        self.received = 0

    def count(self, packet: object) -> None:
        self.received += len(getattr(packet, "data", b"") or b"")
        if self.received > ANSWER_LIMIT:
            raise FetchError(f"answer longer than {ANSWER_LIMIT} bytes: not a build id file")


def _fetch_http(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "initpy-monitor"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return _capped(response.read(ANSWER_LIMIT + 1))
    except urllib.error.HTTPError as exc:
        raise FetchError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise FetchError(f"timed out after {timeout:g} s") from None
        raise FetchError(f"{reason}") from None


def _fetch_file(parts: urllib.parse.SplitResult) -> bytes:
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"file URL names host {parts.netloc!r} (use file:///path)")
    path = urllib.request.url2pathname(parts.path)
    try:
        with open(path, "rb") as f:
            return _capped(f.read(ANSWER_LIMIT + 1))
    except OSError as exc:
        raise FetchError(f"{path}: {exc.strerror or exc}") from None


def _capped(body: bytes) -> bytes:
    if len(body) > ANSWER_LIMIT:
        raise FetchError(f"answer longer than {ANSWER_LIMIT} bytes: not a build id file")
    return body
