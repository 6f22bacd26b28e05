"""Why the kernel refused a module for its signature: the words of the boot report.

Owned by the modules hook (load_modules). Under Secure Boot the kernel
refuses a module without a valid signature by its build key (or an
enrolled MOK key): Debian's kernel then enforces module signatures
(`EKEYREJECTED`, "Loading of unsigned module is rejected" in its log,
tests/vm/test_secureboot.py), and lockdown alone answers `EPERM`
("Lockdown: ...: unsigned module loading is restricted"). The errno alone
reads "Key was rejected by service" or "Operation not permitted"; this
looks at the module's own file for its signature and says which case it
is, so that the report names the module and the cause.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from initpy.runtime.layout import module_is_signed

if TYPE_CHECKING:
    from initpy.runtime.kernel import Kernel

# Every refusal's text starts so: the loader reports it even for a dependency.
REFUSED = "refused by the kernel: "
MODULES_DISABLED = "/proc/sys/kernel/modules_disabled"
# What module_sig_check() and the lockdown hook return (kernel/module/signing.c).
SIGNATURE_ERRNOS = (errno.EPERM, errno.EKEYREJECTED, errno.ENOKEY, errno.EBADMSG, errno.ENOPKG)


def refusal(k: Kernel, path: str, err: int) -> str | None:
    """The cause of `err` from finit_module(`path`) if it is about signatures, else None."""
    if err not in SIGNATURE_ERRNOS:
        return None
    try:
        if k.read_text(MODULES_DISABLED).strip() == "1":
            return REFUSED + "module loading is disabled (kernel.modules_disabled=1)"
    except OSError:
        pass  # no /proc/sys: the signature is still worth a look
    try:
        signed = module_is_signed(k.read_bytes(path))
    except OSError:
        return None
    if not signed:
        if err in (errno.EPERM, errno.EKEYREJECTED):
            return REFUSED + (
                "the module carries no signature, and this kernel loads only signed "
                "modules (lockdown: Secure Boot is on, or module.sig_enforce=1); use the "
                "module as its kernel's build signed it"
            )
        return None
    if err in (errno.EKEYREJECTED, errno.ENOKEY):
        return REFUSED + (
            "its signature is not by a key this kernel trusts (a module of another kernel "
            "build, or signed with a key that is not enrolled as a MOK)"
        )
    if err == errno.EBADMSG:
        return REFUSED + "its signature is malformed (the file was altered after signing)"
    if err == errno.ENOPKG:
        return REFUSED + "its signature uses a hash or key kind this kernel lacks"
    return None
