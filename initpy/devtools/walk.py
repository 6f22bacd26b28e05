"""Walk the whole boot on a normal machine, against the fake kernel.

An operator can check a command line, and a developer a hook, without root
and without a VM: the same console lines and the same report as a real
boot, with syscalls recorded instead of made.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence

from initpy.devtools.disk_images import minimal_image
from initpy.devtools.fake import FakeKernel, HandedOff, Rebooted
from initpy.runtime import cmdline, layout
from initpy.runtime.driver import main
from initpy.runtime.kernel import Completed


def fake_ssh_keygen(kernel: FakeKernel) -> Callable[[Sequence[str]], Completed]:
    """`ssh-keygen -t KIND -f PATH` on the fake kernel: a placeholder key pair.

    The walk and the unit tests share it. Each pair names its kind and the
    call it came from, so that a test can tell a restored key from a new one.
    """

    def keygen(argv: Sequence[str]) -> Completed:
        path = kernel.path(argv[list(argv).index("-f") + 1])
        kind = argv[list(argv).index("-t") + 1]
        count = len(kernel.calls)
        private = (
            f"-----BEGIN OPENSSH PRIVATE KEY-----\n{kind} {count}\n"
            "-----END OPENSSH PRIVATE KEY-----\n"
        )
        public = f"ssh-{kind} AAAA{count} root@buildos\n"
        for suffix, text in (("", private), (".pub", public)):
            with open(path + suffix, "w") as f:
                f.write(text)
        return Completed(tuple(argv), 0, "", "")

    return keygen


# A few bare words the kernel takes for itself; the real kernel knows
# hundreds, so the walk's argv for init is an approximation.
KERNEL_FLAGS = frozenset({"quiet", "ro", "rw", "debug", "nosmp", "noapic", "nolapic", "nomodeset"})


def init_args_for(command_line: str) -> tuple[str, ...]:
    """Roughly what the kernel gives init as argv for this command line.

    Every bare word it does not know that has no `.`, then every word
    after `--`. (A `name=value` it does not know goes to init's environment.)
    """
    pairs, after_dashes, _ = cmdline.tokenize(command_line)
    bare = [k for k, v in pairs if v is None and "." not in k and k not in KERNEL_FLAGS]
    return (*bare, *after_dashes)


def walk(
    command_line: str,
    folders: Sequence[str],
    names: Sequence[str] | None,
    root: str | None = None,
) -> int:
    """Returns 0 when the walk reached the hand-off, 1 when it went to rescue."""
    with tempfile.TemporaryDirectory(prefix="initpy-walk-") as tmp:
        root = root or tmp
        kernel = FakeKernel(
            root=root, cmdline=command_line, kernel_argv=init_args_for(command_line), echo=True
        )
        for program in ("/sbin/init", "/lib/systemd/systemd"):
            path = kernel.path(program)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(path, 0o755)
        # The OS image (hooks/os_image.py): a file to attach, and the /usr
        # that mounting it shows.
        image = kernel.path(layout.OS_IMAGE)
        os.makedirs(os.path.dirname(image), exist_ok=True)
        with open(image, "wb") as f:
            f.write(b"hsqs")
        os.makedirs(kernel.path(f"{layout.OS_MOUNTED}{layout.OS_OVERLAID}"), exist_ok=True)
        # A state disk and a machines disk, so that the walk gets past storage.
        kernel.add_block_device("vda", minimal_image("ext4", "buildos.state"), serial="walk-state")
        kernel.add_block_device(
            "vdb", minimal_image("btrfs", "buildos.machines"), serial="walk-machines"
        )
        kernel.commands["ssh-keygen"] = fake_ssh_keygen(kernel)
        try:
            main(kernel, folders, names)
        except HandedOff as done:
            print(
                f"(walk) the init would now exec {' '.join(done.argv)}; "
                f"environment: {' '.join(sorted(done.env))}"
            )
        except Rebooted as done:
            print(f"(walk) the init would now {done.how}")
        report_path = kernel.path(layout.REPORT)
        report = json.load(open(report_path)) if os.path.exists(report_path) else {}
        print(
            f"(walk) report.json outcome: {report.get('outcome')}; syscalls made: "
            + ", ".join(sorted({str(c[0]) for c in kernel.calls}))
        )
        return 0 if report.get("outcome") == "handoff" else 1
