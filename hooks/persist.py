"""Persistence on /state: the random seed and the SSH host keys, across boots.

One state, `restore_state`, once /state is mounted: feed the saved random
seed to the kernel and save a fresh one at once; restore the SSH host keys
from /state/initpy/ssh, or generate each missing one once and save it. The
state is persistent but not precious: every problem here is a warning in
the report, never a rescue.

The init writes only its own files in /state/initpy/, each replaced
atomically (Kernel.write_atomic: temp file, fsync, rename, fsync of the
folder); it never formats, deletes or overwrites anything else there.
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
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")  # what sshd loads by default
KEYGEN_FOLDER = f"{layout.RUN_DIR}/hostkeys"
SSH_FOLDER = "/etc/ssh"


def _feed_seed(ctx: BootContext) -> str:
    k = ctx.kernel
    fed = "no saved seed (first boot on this state disk)"
    if k.exists(SEED_PATH):
        try:
            old = k.read_bytes(SEED_PATH)
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


def _host_keys(ctx: BootContext) -> str:
    k = ctx.kernel
    k.mkdir(HOST_KEY_FOLDER, 0o700)
    k.mkdir(SSH_FOLDER)
    restored, generated = [], []
    for kind in HOST_KEY_TYPES:
        name = f"ssh_host_{kind}_key"
        saved = f"{HOST_KEY_FOLDER}/{name}"
        private = public = b""
        if k.exists(saved) and k.exists(saved + ".pub"):
            private, public = k.read_bytes(saved), k.read_bytes(saved + ".pub")
        if _looks_like_key(private) and public.strip():
            restored.append(kind)
        else:
            if private:
                ctx.warn(f"restore_state: {saved} is not a key; generating a new one")
            private, public = _generate_host_key(ctx, kind)
            # Public first: a private key on /state always has its .pub beside it.
            k.write_atomic(saved + ".pub", public, 0o600)
            k.write_atomic(saved, private, 0o600)
            generated.append(kind)
        k.write_atomic(f"{SSH_FOLDER}/{name}", private, 0o600)
        k.write_atomic(f"{SSH_FOLDER}/{name}.pub", public, 0o644)
    parts = []
    if restored:
        parts.append("restored " + ", ".join(restored))
    if generated:
        parts.append("generated and saved " + ", ".join(generated))
    return "host keys: " + "; ".join(parts)


def restore_state(ctx: BootContext) -> str:
    """The state is persistent but not precious: a problem is a warning, not a rescue."""
    details = []
    ctx.kernel.mkdir(OWN_FOLDER, 0o700)
    for what, step in (("random seed", _feed_seed), ("host keys", _host_keys)):
        try:
            details.append(step(ctx))
        except (OSError, CommandFailed) as exc:
            text = exc.reason if isinstance(exc, CommandFailed) else str(exc)
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
