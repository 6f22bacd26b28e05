"""The fake kernel stands in for the whole seam: nothing a test calls reaches the real machine."""

from __future__ import annotations

import errno
import inspect
from pathlib import Path

import pytest

from initpy.devtools.fake import FakeKernel
from initpy.runtime.kernel import Kernel


def test_the_fake_overrides_every_public_method_of_the_seam() -> None:
    """FakeKernel inherits Kernel for its types and file helpers; a public method it
    did not override would run the real one on the host running the tests. The
    seam's parts (files.py) count as the Kernel; the fake's (fake_files.py) as the fake."""
    seam = Kernel.__mro__[: Kernel.__mro__.index(object)]
    fake = FakeKernel.__mro__[: FakeKernel.__mro__.index(Kernel)]
    public = sorted(
        name
        for part in seam
        for name, member in vars(part).items()
        if inspect.isfunction(member) and not name.startswith("_")
    )
    assert len(public) > 40 and "read_file" in public  # the seam and its parts were read
    overridden = {name for part in fake for name in vars(part)}
    inherited = [name for name in public if name not in overridden]
    assert not inherited, f"FakeKernel runs the real Kernel's {inherited}"


def test_the_fake_refuses_real_sockets_and_counts_its_own_cpus(tmp_path: Path) -> None:
    kernel = FakeKernel(root=str(tmp_path), cpu_count=3)
    assert kernel.cpus() == 3
    with pytest.raises(OSError) as requests:
        kernel.netlink_requests(0)
    with pytest.raises(OSError) as packets:
        kernel.packet_socket("eth0")
    assert requests.value.errno == packets.value.errno == errno.EPERM
