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
folders must be real folders, root's and writable by root alone
(initpy/runtime/state_folders.py: the driver moves aside, at the mount,
what is not). A read-only, full or odd /state costs the
saved seed or keys, with a warning; the host keys are still made, and
installed in /etc/ssh.
"""

from __future__ import annotations

import shlex

from initpy.runtime import etc, layout
from initpy.runtime.handoff import handoff_to_systemd
from initpy.runtime.hook import BootContext, Fact, Hook, Milestone, State
from initpy.runtime.kernel import DAEMON_NICE, Kernel
from initpy.runtime.record import frozen
from initpy.runtime.run import CommandFailed, run
from initpy.runtime.state_folders import own_folder

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
# RSA-3072 takes 16-21 s of CPU under TCG (ed25519 and ecdsa a fraction of a
# second): generated at the lowest priority, and past the hand-off to systemd.
SLOW_KEY_TYPES = ("rsa",)
SLOW_KEYGEN_NICE = 19
UNIT_DIR = "/etc/systemd/system"
SSHD_UNITS = ("ssh.service", "sshd.service")  # Debian's name, and everyone else's
DROPIN_NAME = "initpy-host-keys.conf"
SSHD_DROPIN = """\
# Written by initpy (hooks/persist.py): this boot's {kinds} host key is still
# being generated; sshd must not start without it. The file below appears
# once the key is in /etc/ssh (or its generation failed).
[Service]
ExecStartPre=/bin/sh -c 'while [ ! -e {done} ]; do sleep 0.2; done'
TimeoutStartSec=15min
"""


def _feed_seed(ctx: BootContext) -> str:
    k = ctx.kernel
    own_folder(k, OWN_FOLDER, ctx.warn)
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


def _generate_host_key(k: Kernel, kind: str) -> tuple[bytes, bytes]:
    path = f"{KEYGEN_FOLDER}/ssh_host_{kind}_key"
    for leftover in (path, path + ".pub"):
        if k.exists(leftover):
            k.remove(leftover)
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "root@buildos", "-f", path]
    if kind == "rsa":
        argv[4:4] = ["-b", "3072"]
    run(k, argv, timeout=600, fix="rebuild the initrd with the persist hook (it ships ssh-keygen)")
    try:
        private, public = k.read_bytes(path), k.read_bytes(path + ".pub")
    except OSError:
        raise OSError(f"{shlex.join(argv)} succeeded but left no key in {path}") from None
    k.remove(path)
    k.remove(path + ".pub")
    return private, public


def _install_host_key(k: Kernel, kind: str, private: bytes, public: bytes) -> None:
    name = f"{SSH_FOLDER}/ssh_host_{kind}_key"
    k.write_atomic(name, private, 0o600)
    k.write_atomic(name + ".pub", public, 0o644)


@frozen
class Keygen:
    """Host keys that a background process (a joinable daemon) generates.

    It saves each key on /state and installs it in /etc/ssh as soon as it
    has it, then notes what it did in `log`, one line per event ("saved
    KIND", "unsaved KIND", "failed KIND", "warn TEXT"), and creates `done`
    last: ssh.service's drop-in waits for that file.
    """

    pid: int
    kinds: tuple[str, ...]
    log: str
    done: str


KEYGENS: Fact[tuple[Keygen, ...]] = Fact("persist.keygens")


def _keygen(k: Kernel, kinds: tuple[str, ...], save: bool, log: str, done: str) -> None:
    """The background process's work: no import, no ctx (it is a fork of PID 1)."""

    def note(line: str) -> None:
        k.append_text(log, line.replace("\n", " ") + "\n")

    try:
        for kind in kinds:
            try:
                private, public = _generate_host_key(k, kind)
            except (OSError, CommandFailed) as exc:
                text = exc.reason if isinstance(exc, CommandFailed) else str(exc)
                note(f"warn host_keys: cannot generate the {kind} key: {text}")
                note(f"failed {kind}")
                continue
            saved = f"{HOST_KEY_FOLDER}/ssh_host_{kind}_key"
            outcome = "unsaved"
            if save:
                try:
                    # Public first: a private key on /state always has its .pub beside it.
                    k.write_atomic(saved + ".pub", public, 0o600)
                    k.write_atomic(saved, private, 0o600)
                    outcome = "saved"
                except OSError as exc:
                    note(f"warn host_keys: cannot save {saved}: {exc}")
            try:
                _install_host_key(k, kind, private, public)
            except OSError as exc:
                note(f"warn host_keys: cannot install the {kind} key in {SSH_FOLDER}: {exc}")
                outcome = "failed"
            note(f"{outcome} {kind}")
    finally:
        k.write_text(done, "")


def _start_keygens(ctx: BootContext, kinds: list[str], save: bool) -> tuple[Keygen, ...]:
    """Start the missing keys' generation in the background; the `host_keys` state joins it.

    Two processes: the quick keys at DAEMON_NICE, joined before the
    hand-off; RSA-3072 (16-21 s of CPU under TCG) at nice 19, so that it
    takes only the CPU the boot leaves, and past the hand-off when systemd
    comes next (ssh.service then waits for it).
    """
    k = ctx.kernel
    etc.ensure_root_account(k)  # ssh-keygen wants root in /etc/passwd; done here, not raced
    k.mkdir(KEYGEN_FOLDER, 0o700)
    groups = (
        ("quick", tuple(kind for kind in kinds if kind not in SLOW_KEY_TYPES), DAEMON_NICE),
        ("slow", tuple(kind for kind in kinds if kind in SLOW_KEY_TYPES), SLOW_KEYGEN_NICE),
    )
    started = []
    for label, group, nice in groups:
        if not group:
            continue
        log, done = f"{KEYGEN_FOLDER}/{label}.log", f"{KEYGEN_FOLDER}/{label}.done"
        for leftover in (log, done):
            if k.exists(leftover):
                k.remove(leftover)
        k.write_text(log, "")

        def work(group: tuple[str, ...] = group, log: str = log, done: str = done) -> None:
            _keygen(k, group, save, log, done)

        pid = k.spawn_daemon(f"initpy-keygen-{label}", work, nice=nice, joinable=True)
        started.append(Keygen(pid, group, log, done))
    return tuple(started)


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
        own_folder(k, HOST_KEY_FOLDER, ctx.warn)  # and OWN_FOLDER above it
        unsaved: OSError | None = None
    except OSError as exc:
        ctx.warn(f"restore_state: host keys cannot be kept on /state: {exc}")
        unsaved = exc
    restored, missing = [], []
    for kind in HOST_KEY_TYPES:
        saved = f"{HOST_KEY_FOLDER}/ssh_host_{kind}_key"
        private, public = _saved_key(ctx, saved) if unsaved is None else (b"", b"")
        if _looks_like_key(private) and public.strip():
            _install_host_key(k, kind, private, public)
            restored.append(kind)
        else:
            if private:
                ctx.warn(f"restore_state: {saved} is not a key; generating a new one")
            missing.append(kind)
    parts = []
    if restored:
        parts.append("restored " + ", ".join(restored))
    if missing:
        ctx.put(KEYGENS, _start_keygens(ctx, missing, save=unsaved is None))
        parts.append("generating " + ", ".join(missing) + " in the background")
    return "host keys: " + "; ".join(parts)


def _sshd_waits_for(ctx: BootContext, keygen: Keygen) -> None:
    """Drop-ins that hold sshd back until the background keys are in /etc/ssh."""
    k = ctx.kernel
    text = SSHD_DROPIN.format(kinds=", ".join(keygen.kinds), done=keygen.done)
    for unit in SSHD_UNITS:
        folder = f"{UNIT_DIR}/{unit}.d"
        k.mkdir(folder)
        k.write_text(f"{folder}/{DROPIN_NAME}", text)


def host_keys(ctx: BootContext) -> str:
    """Join the background key generation: the keys are in /etc/ssh before the hand-off.

    Except RSA when systemd comes next and it is not done: it goes on after
    the hand-off, and a drop-in makes ssh.service wait for it.
    """
    k = ctx.kernel
    keygens = ctx.get(KEYGENS, ())
    if not keygens:
        return "no host key to generate"
    systemd, _ = handoff_to_systemd(ctx)
    outcomes: dict[str, list[str]] = {"saved": [], "unsaved": [], "failed": []}
    later: list[str] = []
    for keygen in keygens:
        if systemd and keygen.kinds[0] in SLOW_KEY_TYPES and not k.exists(keygen.done):
            _sshd_waits_for(ctx, keygen)
            later.extend(keygen.kinds)
            continue
        status = k.join_daemon(keygen.pid)
        try:
            lines = k.read_text(keygen.log).splitlines()
        except OSError as exc:
            lines = [f"warn host_keys: cannot read {keygen.log}: {exc}"]
        if status != 0:
            lines.append(
                f"warn host_keys: the generator of {', '.join(keygen.kinds)} "
                f"ended with status {status}"
            )
        for line in lines:
            word, _, rest = line.partition(" ")
            if word == "warn":
                ctx.warn(rest)
            elif word in outcomes:
                outcomes[word].append(rest)
    parts = []
    for word, text in (
        ("saved", "generated and saved "),
        ("unsaved", "generated, NOT saved on /state "),
        ("failed", "FAILED "),
    ):
        if outcomes[word]:
            parts.append(text + ", ".join(outcomes[word]))
    if later:
        parts.append(
            "still generating " + ", ".join(later) + " (after the hand-off; sshd waits for it)"
        )
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
            "feed the saved random seed and save a fresh one; restore the SSH host keys, "
            "start generating the missing ones in the background",
            needs=(Milestone.STATE,),
            provides=(Milestone.RESTORED,),
        ),
        State(
            "host_keys",
            host_keys,
            "wait for the generated SSH host keys (saved on /state, installed in /etc/ssh); "
            "RSA may go on past a hand-off to systemd, and ssh.service waits for it",
            wants=(Milestone.NETWORK, Milestone.MACHINES, Milestone.HOSTNAME),
        ),
    ),
    binaries=("ssh-keygen",),
)
