#!/usr/bin/env python3
"""Boot time in QEMU: initpy against a busybox-only /init, on the kernel's clock.

    .venv/bin/python benchmarks/boot_time.py [--runs N] [--initrd-dir OUTDIR]
                                             [--compare OUTDIR] [--no-baseline]

Boots the initpy initrd (built with mkinitrd.py and the VM tests' guest
program, or taken from OUTDIR) N times with the whole-boot VM arguments
(tests/harness/scenario.py), then boots a busybox-only initrd N times with the
same VM arguments: its /init does the classic steps (sequential insmod of
the same modules in dependency order, findfs/blkid for labels, udhcpc on
each NIC). It prints, per boot and as medians:

- kernel -> /init: the kernel's "Run /init as init process" timestamp;
- kernel -> first line: the first `initpy:` (or `baseline:`) line in the
  kernel log;
- kernel -> hand-off: `initpy: handoff: exec` (or `baseline: handoff`);
- wall: from starting QEMU to the hand-off line on the console, on this
  host's clock (firmware and QEMU's start included);

and for initpy the time of each state (report.json, CLOCK_BOOTTIME).
With --compare OUTDIR, an other initpy build (an mkinitrd OUTDIR made with
the guest program, e.g. from a `git worktree` of the commit before) boots
in each round too, as "before", so a change is measured against its parent
in the same run.
Times come from the kernel's printk clock (dmesg, read by the guest), so
they do not include QEMU's start or the firmware. Other VMs on the machine
slow TCG, so by default the benchmark holds both VM slots while it boots
(other people's VM tests wait a few minutes); --shared takes one.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from initpy.builder import cpio  # noqa: E402
from initpy.runtime.driver import load_registry  # noqa: E402
from tests.harness import qemu  # noqa: E402
from tests.harness.guest_output import read_sections, report  # noqa: E402
from tests.harness.qemu import BootArgs  # noqa: E402
from tests.harness.scenario import GUEST_PATH, GUEST_PROGRAM, full_boot_args  # noqa: E402

BOOT_TIMEOUT = 300
SYSTEMD_STANDIN = "/lib/systemd/systemd"
# mkinitrd packs these whatever --hooks says.
ALWAYS_HOOKS = ("modules", "rescue_tools")
KMSG_LINE = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$", re.M)


@dataclass
class Boot:
    """The figures of one boot, in seconds of kernel time (wall: host time)."""

    to_init: float | None
    to_first_line: float | None
    to_handoff: float | None
    wall: float
    states: dict[str, int] = field(default_factory=dict)  # state -> duration_ms


def kernel_files() -> tuple[Path, Path]:
    folder = Path(
        subprocess.run(
            [REPO / "scripts" / "fetch-kernel"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    return folder / "vmlinuz", (folder / "modules").resolve()


def build_initpy(
    vmlinuz: Path, modules: Path, outdir: Path, hooks: str | None, generic: bool = False
) -> float:
    start = time.monotonic()
    # mkinitrd keeps one destination per --include source: the stand-in is a copy.
    standin = outdir.parent / f"{outdir.name}-systemd-standin"
    standin.write_bytes(GUEST_PROGRAM.read_bytes())
    standin.chmod(0o755)
    subprocess.run(
        [
            sys.executable,
            str(REPO / "mkinitrd.py"),
            "--kernel",
            str(vmlinuz),
            "--modules",
            str(modules),
            "-o",
            str(outdir),
            "--include",
            f"{GUEST_PROGRAM}:{GUEST_PATH}",
            # A stand-in for systemd, for --first-boot: the hand-off persist
            # treats as systemd (RSA may go on past it). Unused otherwise.
            "--include",
            f"{standin}:{SYSTEMD_STANDIN}",
            *(["--hooks", hooks] if hooks else []),
            # The same modules as the baseline's (the "same steps"): the
            # scenario's drivers and the hooks' modules, not mkinitrd's
            # generic set of drivers for real hardware.
            *(
                []
                if generic
                else ["--drivers", "none", *(f"--driver={d}" for d in SCENARIO_DRIVERS)]
            ),
        ],
        check=True,
        cwd=REPO,
    )
    return time.monotonic() - start


def modules_in_order(modules: Path, names: list[str]) -> list[Path]:
    """The .ko files of `names` with their dependencies first (kmod's resolver)."""
    kernel_root = modules.parents[2]
    ordered: list[Path] = []
    for name in names:
        shown = subprocess.run(
            ["modprobe", "--show-depends", "-d", str(kernel_root), "-S", modules.name, name],
            capture_output=True,
            text=True,
        )
        for line in shown.stdout.splitlines():
            words = line.split()
            if words and words[0] == "insmod":
                path = Path(words[1])
                if path not in ordered:
                    ordered.append(path)
    return ordered


BASELINE_INIT = r"""#!/bin/sh
# The classic busybox initramfs /init: what initpy must not be slower than.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "<6>baseline: start" > /dev/kmsg
for m in MODULES; do insmod "/lib/modules/$m"; done
echo "<6>baseline: modules loaded" > /dev/kmsg
findfs LABEL=buildos.state >/dev/null 2>&1
findfs LABEL=buildos.machines >/dev/null 2>&1
blkid >/dev/null 2>&1
echo "<6>baseline: labels probed" > /dev/kmsg
for dev in /sys/class/net/*; do
  n=${dev##*/}
  [ "$n" = lo ] && continue
  ip link set "$n" up
  udhcpc -i "$n" -n -q -t 5 -T 1 -s /bin/udhcpc-script >/dev/null 2>&1
done
echo "<6>baseline: handoff" > /dev/kmsg
echo "baseline: handoff"
echo "==vmcheck:begin:kmsg=="
dmesg | grep -E 'Run /init|Freeing unused kernel|baseline:'
echo "==vmcheck:end:kmsg=="
echo "==vmcheck:done=="
poweroff -f
"""

UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
ip addr add "$ip/${mask:-24}" dev "$interface"
[ -n "$router" ] && ip route add default via "${router%% *}"
exit 0
"""


def build_baseline(modules: Path, names: list[str], out: Path) -> list[str]:
    """A busybox-only initrd (lz4, like mkinitrd's default) with the same modules; their names."""
    busybox = "/bin/busybox"
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    kos = modules_in_order(modules, names)
    init = BASELINE_INIT.replace("MODULES", " ".join(p.name for p in kos))
    entries = [
        cpio.regular("bin/busybox", source=busybox, perm=0o755),
        *(cpio.symlink(f"bin/{a}", "busybox") for a in applets if a != "busybox"),
        cpio.regular("init", data=init.encode(), perm=0o755),
        cpio.regular("bin/udhcpc-script", data=UDHCPC_SCRIPT.encode(), perm=0o755),
        cpio.char_device("dev/console", 5, 1),
        cpio.char_device("dev/kmsg", 1, 11, 0o644),
        cpio.char_device("dev/null", 1, 3, 0o666),
        cpio.directory("proc"),
        cpio.directory("sys"),
        *(cpio.regular(f"lib/modules/{p.name}", source=str(p)) for p in kos),
    ]
    data = cpio.compress(cpio.archive(cpio.with_parents(entries), 0), "lz4")
    out.write_bytes(data)
    return [p.name for p in kos]


# The drivers of the whole-boot scenario's devices (virtio NIC and disks), which
# initpy loads from their modaliases and the baseline must name.
SCENARIO_DRIVERS = ("virtio_pci", "virtio_net", "virtio_blk")


def hook_modules(hooks: str | None) -> list[str]:
    """The modules initpy loads: the scenario's drivers and those the packed hooks name."""
    names = hooks.split(",") if hooks else None
    if names is not None:
        names = list(dict.fromkeys([*names, *ALWAYS_HOOKS]))
    return [*SCENARIO_DRIVERS, *load_registry([str(REPO / "hooks")], names).modules()]


def kernel_times(kmsg: str, first: str, handoff: str) -> tuple[float | None, ...]:
    to_init = to_first = to_handoff = None
    for stamp, text in KMSG_LINE.findall(kmsg):
        t = float(stamp)
        if to_init is None and text.startswith("Run /init"):
            to_init = t
        if to_first is None and text.startswith(first):
            to_first = t
        if to_handoff is None and text.startswith(handoff):
            to_handoff = t
    return to_init, to_first, to_handoff


def boot_once(
    vmlinuz: Path, initrd: Path, args: BootArgs, name: str, initpy: bool, smp: int = 1
) -> Boot:
    # printk.devkmsg=on: by default the kernel keeps only a burst of 10 lines
    # written to /dev/kmsg per 5 s and drops the rest, hand-off line included.
    # QEMU takes the last -smp: the harness's 1 unless asked.
    args = args.plus(["quiet", "printk.devkmsg=on"], ["-smp", str(smp)] if smp != 1 else [])
    handoff_line = r"initpy: handoff: exec" if initpy else r"baseline: handoff"
    with qemu.boot(vmlinuz, initrd, args, name=name) as vm:
        vm.expect(handoff_line, BOOT_TIMEOUT, fail_on=r"initpy: rescue: .*")
        wall = vm.seconds
        sections = read_sections(vm, BOOT_TIMEOUT)
        vm.wait_exit(60)
    if initpy:
        to_init, to_first, to_handoff = kernel_times(
            sections["kmsg"], "initpy:", "initpy: handoff: exec"
        )
        states = {s["name"]: s["duration_ms"] for s in report(sections, vm)["states"]}
    else:
        to_init, to_first, to_handoff = kernel_times(
            sections["kmsg"], "baseline: start", "baseline: handoff"
        )
        states = {}
    return Boot(to_init, to_first, to_handoff, wall, states)


def seconds(value: float | None) -> str:
    return f"{value:8.2f}" if value is not None else "       -"


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def least(values: list[float | None]) -> float | None:
    """The least loaded boot: the host's other work only ever adds time."""
    known = [v for v in values if v is not None]
    return min(known) if known else None


def print_table(label: str, boots: list[Boot]) -> None:
    for i, b in enumerate(boots, 1):
        print(
            f"{label + ' #' + str(i):<14}{seconds(b.to_init)}{seconds(b.to_first_line)}"
            f"{seconds(b.to_handoff)}{seconds(b.wall)}"
        )
    for name, pick in (("median", median), ("min", least)):
        print(
            f"{label + ' ' + name:<14}{seconds(pick([b.to_init for b in boots]))}"
            f"{seconds(pick([b.to_first_line for b in boots]))}"
            f"{seconds(pick([b.to_handoff for b in boots]))}"
            f"{seconds(pick([b.wall for b in boots]))}"
        )


@contextlib.contextmanager
def holding_both_slots() -> Iterator[None]:
    """Hold one VM slot for the run, so each boot takes the other.

    Two benchmarks at once would each hold one slot and wait for the other
    forever, so benchmarks first queue on a lock of their own.
    """
    with open("/tmp/initpy-vm-bench.lock", "w") as queue:
        fcntl.flock(queue, fcntl.LOCK_EX)
        with qemu.vm_slot():
            yield


def print_paired(label: str, minuends: list[Boot], subtrahends: list[Boot]) -> None:
    """The per-round differences of the hand-off's uptime, and their median."""
    gaps = [
        a.to_handoff - b.to_handoff
        for a, b in zip(minuends, subtrahends, strict=False)
        if a.to_handoff is not None and b.to_handoff is not None
    ]
    if gaps:
        print(
            f"{label}, hand-off: median {statistics.median(gaps):+.2f} s "
            f"(rounds: {' '.join(f'{g:+.2f}' for g in gaps)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="boots of each initrd (default 3)")
    parser.add_argument(
        "--initrd-dir",
        type=Path,
        default=None,
        help="an mkinitrd OUTDIR built with the guest program (default: build)",
    )
    parser.add_argument(
        "--hooks",
        default=None,
        help="mkinitrd --hooks NAMES (default: every hook); the baseline "
        "loads the same hooks' modules",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="OUTDIR",
        help="also boot this initpy build (an mkinitrd OUTDIR with the guest program) each "
        "round, as 'before'",
    )
    parser.add_argument(
        "--generic-drivers",
        action="store_true",
        help="build initpy with mkinitrd's generic drivers (default: the modules the "
        "baseline loads: the scenario's drivers and the hooks' modules)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="boot initpy only")
    parser.add_argument(
        "--first-boot",
        action="store_true",
        help="also boot initpy on a state disk without SSH host keys (a host's first boot) "
        "each round; initpy then hands off to the guest program as /lib/systemd/systemd",
    )
    parser.add_argument(
        "--smp",
        type=int,
        default=2,
        help="vCPUs of every VM, initpy's and busybox's alike (default 2: a build host has "
        "several CPUs, and initpy loads the hooks' modules on one while Python starts)",
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="keep one VM slot for the run, not both (default: hold the second slot too, "
        "so no other VM shares the 2 cores while we measure)",
    )
    ns = parser.parse_args()

    vmlinuz, modules = kernel_files()
    with tempfile.TemporaryDirectory(prefix="initpy-bench-") as tmp:
        work = Path(tmp)
        outdir = ns.initrd_dir
        if outdir is None:
            outdir = work / "initpy"
            took = build_initpy(vmlinuz, modules, outdir, ns.hooks, ns.generic_drivers)
            print(f"mkinitrd.py: {took:.1f} s")
        initrd = outdir / "buildos-initrd"
        args = full_boot_args(work, SYSTEMD_STANDIN if ns.first_boot else GUEST_PATH)
        print(
            f"kernel {vmlinuz}\nVM: -accel {os.environ.get('INITPY_QEMU_ACCEL', 'tcg')}, "
            f"-m {args.memory}, append {' '.join(args.append)} quiet printk.devkmsg=on; "
            f"{len(args.disks)} disk(s), {len(args.nics)} NIC(s)"
        )
        print(f"initpy initrd:  {initrd.stat().st_size / 1e6:6.2f} MB")

        baseline = work / "baseline.cpio.lz4"
        names = hook_modules(ns.hooks)
        loaded: list[str] = []
        if not ns.no_baseline:
            loaded = build_baseline(modules, names, baseline)
            print(
                f"busybox initrd: {baseline.stat().st_size / 1e6:6.2f} MB "
                f"({len(loaded)} modules: {' '.join(loaded) or 'none'})"
            )

        # Holding one slot here makes each boot below take the other: no VM
        # of anyone else's runs beside ours (builds and tests still may).
        # The two kinds take turns, so that both see the same load on the host.
        ours: list[Boot] = []
        theirs: list[Boot] = []
        firsts: list[Boot] = []
        befores: list[Boot] = []
        if ns.compare is not None:
            size = (ns.compare / "buildos-initrd").stat().st_size
            print(f"before initrd:  {size / 1e6:6.2f} MB ({ns.compare})")
        with qemu.keeping_slot() if ns.shared else holding_both_slots():
            for i in range(ns.runs):
                # Fresh disks for every boot, so that every boot does the same work.
                (work / f"i{i}").mkdir()
                (work / f"b{i}").mkdir()
                exec_path = SYSTEMD_STANDIN if ns.first_boot else GUEST_PATH
                if ns.compare is not None:
                    (work / f"c{i}").mkdir()
                    befores.append(
                        boot_once(
                            vmlinuz,
                            ns.compare / "buildos-initrd",
                            full_boot_args(work / f"c{i}", exec_path),
                            f"bench-before-{i}",
                            True,
                            ns.smp,
                        )
                    )
                ours.append(
                    boot_once(
                        vmlinuz,
                        initrd,
                        full_boot_args(work / f"i{i}", exec_path),
                        f"bench-initpy-{i}",
                        True,
                        ns.smp,
                    )
                )
                if ns.first_boot:
                    (work / f"f{i}").mkdir()
                    firsts.append(
                        boot_once(
                            vmlinuz,
                            initrd,
                            full_boot_args(work / f"f{i}", exec_path, host_keys=False),
                            f"bench-first-{i}",
                            True,
                            ns.smp,
                        )
                    )
                if not ns.no_baseline:
                    theirs.append(
                        boot_once(
                            vmlinuz,
                            baseline,
                            full_boot_args(work / f"b{i}", "/nonexistent"),
                            f"bench-busybox-{i}",
                            False,
                            ns.smp,
                        )
                    )

    print()
    print("seconds since kernel start   ->/init  ->first ->handoff  wall(QEMU start->handoff)")
    if befores:
        print_table("before", befores)
    print_table("initpy", ours)
    if theirs:
        print_table("busybox", theirs)
    if firsts:
        print_table("first boot", firsts)
    print()
    if theirs:
        # Acceptance 1 of issue 13: the hand-off's uptime, initpy over busybox.
        for label, boots in (("before", befores), ("initpy", ours)):
            ratios = [
                a.to_handoff / b.to_handoff
                for a, b in zip(boots, theirs, strict=False)
                if a.to_handoff is not None and b.to_handoff
            ]
            mine = median([b.to_handoff for b in boots])
            base = median([b.to_handoff for b in theirs])
            if ratios and mine is not None and base:
                print(
                    f"hand-off uptime, {label}/busybox: median of per-round ratios "
                    f"{statistics.median(ratios):.2f} "
                    f"(rounds: {' '.join(f'{r:.2f}' for r in ratios)});"
                    f" ratio of medians {mine / base:.2f}"
                )
    # Acceptance 2: a first boot on a blank state disk against a usual one.
    print_paired("first boot - usual boot", firsts, ours)
    print_paired("before - initpy", befores, ours)
    for label, boots in (("before", befores), ("initpy", ours), ("first boot", firsts)):
        if not boots:
            continue
        print()
        print(f"{label} per state, ms (median of runs):")
        for state in boots[0].states:
            runs = [b.states.get(state) for b in boots]
            known = [r for r in runs if r is not None]
            print(
                f"  {state:<20}{statistics.median(known) if known else '-':>8}   "
                f"runs: {' '.join(str(r) for r in runs)}"
            )


if __name__ == "__main__":
    main()
