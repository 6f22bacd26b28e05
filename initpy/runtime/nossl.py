"""A stand-in for `ssl` inside the frozen init, which carries no OpenSSL.

Nothing at boot speaks TLS, but `import pyroute2` imports `ssl` (its
`probe_msg` module, for a probe feature we never use), and that alone
brought libssl, libcrypto, `_ssl` and `_hashlib` into the initrd: 1.9 MB of
its 13 MB. The freeze leaves `ssl` out and the entry script maps this
module in its place when something imports it. It has the names other
modules touch at import time or in isinstance checks (asyncio's
`SSLWantReadError`, `SSLSocket`, ...); anything that would really need TLS
fails with a message that says why.
"""

from __future__ import annotations

from typing import NoReturn

CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2
PROTOCOL_TLS_CLIENT = 16
HAS_SNI = False
OPENSSL_VERSION = "none (initpy's initrd has no TLS)"


class SSLError(OSError):
    pass


class SSLWantReadError(SSLError):
    pass


class SSLWantWriteError(SSLError):
    pass


class SSLSyscallError(SSLError):
    pass


class SSLZeroReturnError(SSLError):
    pass


class SSLEOFError(SSLError):
    pass


class CertificateError(ValueError):
    pass


class SSLSocket:
    pass


class SSLObject:
    pass


class SSLContext:
    def __init__(self, *args: object, **kwargs: object) -> None:
        _unavailable()


def create_default_context(*args: object, **kwargs: object) -> NoReturn:
    _unavailable()


def _unavailable() -> NoReturn:
    raise SSLError("TLS is not available inside the initrd: initpy freezes no OpenSSL")
