"""Persistence on /state: the random seed and the SSH host keys, across boots.

One state, `restore_state`, once /state is mounted: feed the saved random
seed to the kernel and save a fresh one at once; restore the SSH host keys
from /state/initpy/ssh, or generate each missing one once and save it. The
state is persistent but not precious: every problem here is a warning in
the report, never a rescue.

The init writes only its own files in /state/initpy/, each replaced
atomically (Kernel.write_atomic: temp file, fsync, rename, fsync of the
folder); it never formats, deletes or overwrites anything else there.

Nothing on /state is trusted: a file is read only if it is a regular file
and not a symlink, and only up to a size (Kernel.read_file); the own
folders must be real folders. A read-only, full or odd /state costs the
saved seed or keys, with a warning; the host keys are still made, and
installed in /etc/ssh.
"""

from __future__ import annotations

import shlex

from initpy.runtime import etc, layout
from initpy.runtime.hook import BootContext, Hook, Milestone, State
from initpy.runtime.run import CommandFailed, run

# The init's own folder on /state: the only place it writes there.
OWN_FOLDER = layout.STATE_OWN_DIR
SEED_PATH = f"{OWN_FOLDER}/random-seed"
HOST_KEY_FOLDER = f"{OWN_FOLDER}/ssh"
SEED_BYTES = 512  # as systemd-random-seed: the pool's size
SEED_READ_LIMIT = 4096  # more is never fed: a 64 MiB "seed" must not fill PID 1's memory
KEY_READ_LIMIT = 64 << 10  # an RSA-16384 private key is about 12 KiB
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")  # what sshd loads by default
KEYGEN_FOLDER = f"{layout.RUN_DIR}/hostkeys"
SSH_FOLDER = "/etc/ssh"


def _own_folder(ctx: BootContext, path: str) -> None:
    """Make one of the init's folders on /state; OSError if it is not a real folder.

    A symlink there (a disk prepared elsewhere, or by someone else) would
    send the writes anywhere.
    """
    k = ctx.kernel
    if k.is_symlink(path):
        raise OSError(f"{path} is a symlink to {k.readlink(path)}, not a folder")
    k.mkdir(path, 0o700)


def _feed_seed(ctx: BootContext) -> str:
    k = ctx.kernel
    _own_folder(ctx, OWN_FOLDER)
    fed = "no saved seed (first boot on this state disk)"
    if k.exists(SEED_PATH):
        try:
            old = k.read_file(SEED_PATH, SEED_READ_LIMIT)
            k.feed_urandom(old)
            fed = f"fed {len(old)} saved bytes to the kernel"
        except OSError as exc:
            ctx.warn(f"restore_state: cannot feed {SEED_PATH}: {exc}")
            fed = "saved seed unreadable"
    # Saved at once, so that a boot that dies later never reuses this seed.
    k.write_atomic(SEED_PATH, k.random_bytes(SEED_BYTES), 0o600)
    return f"random seed: {fed}, saved a fresh one"


def _looks_like_key(private: bytes) -> bool:
    return private.startswith(b"-----BEGIN ") and b"PRIVATE KEY-----" in private


def _generate_host_key(ctx: BootContext, kind: str) -> tuple[bytes, bytes]:
    k = ctx.kernel
    etc.ensure_root_account(k)
    k.mkdir(KEYGEN_FOLDER, 0o700)
    path = f"{KEYGEN_FOLDER}/ssh_host_{kind}_key"
    for leftover in (path, path + ".pub"):
        if k.exists(leftover):
            k.remove(leftover)
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "root@buildos", "-f", path]
    if kind == "rsa":
        argv[4:4] = ["-b", "3072"]
    run(k, argv, timeout=300, fix="rebuild the initrd with the persist hook (it ships ssh-keygen)")
    try:
        private, public = k.read_bytes(path), k.read_bytes(path + ".pub")
    except OSError:
        raise OSError(f"{shlex.join(argv)} succeeded but left no key in {path}") from None
    k.remove(path)
    k.remove(path + ".pub")
    return private, public


def _saved_key(ctx: BootContext, saved: str) -> tuple[bytes, bytes]:
    """The key pair saved on /state, or empty halves (a warning if unreadable)."""
    k = ctx.kernel
    if not (k.exists(saved) and k.exists(saved + ".pub")):
        return b"", b""
    try:
        return k.read_file(saved, KEY_READ_LIMIT), k.read_file(saved + ".pub", KEY_READ_LIMIT)
    except OSError as exc:
        ctx.warn(f"restore_state: cannot read {saved}: {exc}; generating a new one")
        return b"", b""


def _host_keys(ctx: BootContext) -> str:
    k = ctx.kernel
    k.mkdir(SSH_FOLDER)
    try:
        _own_folder(ctx, OWN_FOLDER)
        _own_folder(ctx, HOST_KEY_FOLDER)
        unsaved: OSError | None = None
    except OSError as exc:
        ctx.warn(f"restore_state: host keys cannot be kept on /state: {exc}")
        unsaved = exc
    restored, generated, not_saved = [], [], []
    for kind in HOST_KEY_TYPES:
        name = f"ssh_host_{kind}_key"
        saved = f"{HOST_KEY_FOLDER}/{name}"
        private, public = _saved_key(ctx, saved) if unsaved is None else (b"", b"")
        if _looks_like_key(private) and public.strip():
            restored.append(kind)
        else:
            if private:
                ctx.warn(f"restore_state: {saved} is not a key; generating a new one")
            private, public = _generate_host_key(ctx, kind)
            generated.append(kind)
            if unsaved is None:
                try:
                    # Public first: a private key on /state always has its .pub beside it.
                    k.write_atomic(saved + ".pub", public, 0o600)
                    k.write_atomic(saved, private, 0o600)
                except OSError as exc:
                    ctx.warn(f"restore_state: cannot save {saved}: {exc}")
                    not_saved.append(kind)
            else:
                not_saved.append(kind)
        k.write_atomic(f"{SSH_FOLDER}/{name}", private, 0o600)
        k.write_atomic(f"{SSH_FOLDER}/{name}.pub", public, 0o644)
    parts = []
    if restored:
        parts.append("restored " + ", ".join(restored))
    saved_now = [kind for kind in generated if kind not in not_saved]
    if saved_now:
        parts.append("generated and saved " + ", ".join(saved_now))
    if not_saved:
        parts.append("generated, NOT saved on /state " + ", ".join(not_saved))
    return "host keys: " + "; ".join(parts)


def restore_state(ctx: BootContext) -> str:
    """The state is persistent but not precious: a problem is a warning, not a rescue.

    Whatever /state holds (a read-only or full filesystem, a file where a
    folder belongs, a symlink, a giant file), each step ends in a warning.
    """
    details = []
    for what, step in (("random seed", _feed_seed), ("host keys", _host_keys)):
        try:
            details.append(step(ctx))
        except (OSError, CommandFailed) as exc:
            text = exc.reason if isinstance(exc, CommandFailed) else str(exc)
            ctx.warn(f"restore_state: {what}: {text}")
            details.append(f"{what}: failed ({text})")
        except Exception as exc:  # a disk's contents must never send the boot to rescue
            text = f"{type(exc).__name__}: {exc}"
            ctx.warn(f"restore_state: {what}: {text}")
            details.append(f"{what}: failed ({text})")
    return "; ".join(details)


HOOK = Hook(
    name="persist",
    description="the random seed and the SSH host keys, kept on /state across boots",
    states=(
        State(
            "restore_state",
            restore_state,
            "feed the saved random seed and save a fresh one; restore or generate the SSH "
            "host keys",
            needs=(Milestone.STATE,),
            provides=(Milestone.RESTORED,),
        ),
    ),
    binaries=("ssh-keygen",),
)
