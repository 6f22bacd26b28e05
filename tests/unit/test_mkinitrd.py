"""mkinitrd end to end with a stand-in freezer; and the real one twice.

The stand-in freezer (the step is injectable) makes a tiny frozen tree, so
these tests check the layout, the merge rules, the errors and the
reproducibility of the archive without PyInstaller's ten seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence

import pytest

from initpy.builder import cpio, elf, freeze, hooks, mkinitrd, mkinitrd_cli, settings
from initpy.builder.command import BuildError
from initpy.builder.drivers import Drivers
from initpy.builder.options import SETTINGS
from initpy.runtime import layout
from tests.unit.conftest import REPO, run_mkinitrd

pytestmark = pytest.mark.skipif(
    not os.path.exists("/bin/busybox")
    or shutil.which("depmod") is None
    or shutil.which("patchelf") is None,
    reason="busybox-static, kmod and patchelf are needed: run scripts/bootstrap",
)
VERSION = "9.9-test"
HOOK = """
from initpy.runtime.hook import Hook, State

def hello(ctx):
    return "hello"

HOOK = Hook(name="{name}", description="a test hook", binaries={binaries!r},
            modules={modules!r}, files={files!r},
            states=(State("{name}_state", hello, "says hello", provides=("{name}d",)),))
"""


def fake_freezer(top: str) -> mkinitrd.Freezer:
    def freezer(hook_files: Sequence[str]) -> freeze.Frozen:
        tree = os.path.join(top, "frozen-product")
        if not os.path.exists(tree):
            os.makedirs(os.path.join(tree, "frozen", "_internal"))
            os.makedirs(os.path.join(tree, "lib"))
            exe = os.path.join(tree, "frozen", "initpy")
            with open(exe, "w") as f:
                f.write("#!/bin/sh\necho frozen\n")
            os.chmod(exe, 0o755)
            with open(os.path.join(tree, "frozen", "_internal", "base_library.zip"), "wb") as f:
                f.write(b"PK")
        return freeze.Frozen(tree, "test", True)

    return freezer


def write_hook(
    folder: str,
    name: str,
    binaries: tuple[str, ...] = (),
    modules: tuple[str, ...] = (),
    files: tuple[str, ...] = (),
) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.py")
    with open(path, "w") as f:
        f.write(HOOK.format(name=name, binaries=binaries, modules=modules, files=files))
    return path


def module_tree(top: str) -> str:
    mods = os.path.join(top, "lib", "modules", VERSION)
    os.makedirs(os.path.join(mods, "kernel"))
    for name in ("a", "b"):
        with open(os.path.join(mods, "kernel", f"{name}.ko"), "wb") as f:
            f.write(f"module {name}".encode())
    with open(os.path.join(mods, "modules.dep"), "w") as f:
        f.write("kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n")
    with open(os.path.join(mods, "modules.builtin"), "w") as f:
        f.write("kernel/fs/ext4/ext4.ko\n")
    return mods


@pytest.fixture
def setup(tmp_path: str) -> dict[str, str]:
    top = str(tmp_path)
    kernel = os.path.join(top, "vmlinuz")
    with open(kernel, "wb") as f:
        f.write(b"kernel image")
    hooks = os.path.join(top, "hooks")
    write_hook(hooks, "probe", binaries=("ls",), modules=("a", "ext4"))
    return {"top": top, "kernel": kernel, "modules": module_tree(top), "hooks": hooks}


def build(setup: dict[str, str], out: str, **changes: object) -> mkinitrd.BuildResult:
    options = mkinitrd.Options(
        kernel=setup["kernel"],
        modules=setup["modules"],
        outdir=os.path.join(setup["top"], out),
        base_hooks_dir=None,
        hook_dirs=(setup["hooks"],),
        compress=mkinitrd.Compression.GZIP,
        source_date_epoch=1_700_000_000,
        # The tree unpacked into the initramfs: these tests read the merged
        # archive (tests/unit/test_os_image_mount.py builds with the image).
        os_image=mkinitrd.ImageCompression.NONE,
    )
    options = mkinitrd.Options(**{**options.__dict__, **changes})
    return mkinitrd.build(options, freezer=fake_freezer(setup["top"]))


def members(result: mkinitrd.BuildResult) -> dict[str, cpio.Member]:
    with open(result.initrd, "rb") as f:
        return {m.path: m for m in cpio.read_newc(cpio.decompress(f.read()))}


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_layout_of_the_initrd(setup: dict[str, str]) -> None:
    result = build(setup, "out")
    assert read(result.image) == b"kernel image"
    files = members(result)
    init = files["init"]
    assert stat.S_ISLNK(init.mode) and init.data == b"/usr/lib/initpy/frozen/initpy"
    assert files["usr/lib/initpy/frozen/initpy"].data.startswith(b"#!/bin/sh")
    assert files["bin"].data == b"usr/bin" and files["lib"].data == b"usr/lib"
    for node, numbers in (
        ("dev/console", (5, 1)),
        ("dev/null", (1, 3)),
        ("dev/zero", (1, 5)),
        ("dev/random", (1, 8)),
        ("dev/urandom", (1, 9)),
        ("dev/tty", (5, 0)),
        ("dev/kmsg", (1, 11)),
    ):
        assert stat.S_ISCHR(files[node].mode)
        assert (files[node].rdevmajor, files[node].rdevminor) == numbers
    manifest = layout.Manifest.from_json(files[layout.MANIFEST.lstrip("/")].data)
    assert manifest.hooks == ("probe",)
    assert b'name="probe"' in files["usr/lib/initpy/hooks/probe.py"].data
    # Modules: the wanted one after its dependency; depmod's index of the subset.
    assert manifest.kernel_version == VERSION
    assert manifest.modules == (
        layout.PackedModule("b", "kernel/b.ko"),
        layout.PackedModule("a", "kernel/a.ko", ("b",), hooks=("probe",)),
    )
    # The build id names the content, and the manifest carries it.
    assert read(result.buildid).decode().strip() == manifest.build_id
    assert files[f"usr/lib/modules/{VERSION}/kernel/a.ko"].data == b"module a"
    assert f"usr/lib/modules/{VERSION}/modules.dep" in files
    assert any("ext4 is built into kernel" in n for n in result.notes)
    # Debian's busybox, dynamic: patched to the private loader like every
    # binary, its libc the init's; its applets link to it; sh is one of them.
    busybox = elf.parse(files["usr/bin/busybox"].data)
    assert busybox.interpreter == freeze.PRIVATE_LOADER
    assert busybox.rpath == (freeze.PRIVATE_LIB_DIR,)
    assert {"libc.so.6", "libresolv.so.2"} <= set(busybox.needed)
    assert "usr/lib/initpy/lib/libresolv.so.2" in files
    assert files["usr/bin/sh"].data == b"/usr/bin/busybox"
    assert files["usr/lib/initpy/bin/modprobe"].data == b"/usr/bin/busybox"
    # ls is patched to the private loader, which comes with libc.
    ls = elf.parse(files["usr/bin/ls"].data)
    assert ls.interpreter == freeze.PRIVATE_LOADER
    assert ls.rpath == (freeze.PRIVATE_LIB_DIR,)
    assert "usr/lib/initpy/lib/libc.so.6" in files
    assert "usr/lib/initpy/lib/ld-linux-x86-64.so.2" in files
    assert re.fullmatch(r"[0-9a-f]{64}\n", read(result.buildid).decode())


def test_two_builds_are_byte_identical_and_buildid_follows_content(setup: dict[str, str]) -> None:
    one = build(setup, "one")
    two = build(setup, "two", no_cache=True)
    assert read(one.initrd) == read(two.initrd)
    assert read(one.buildid) == read(two.buildid)
    # Touching a hook (a newer mtime, same bytes) changes nothing...
    hook = os.path.join(setup["hooks"], "probe.py")
    os.utime(hook, (2_000_000_000, 2_000_000_000))
    assert read(build(setup, "touched").buildid) == read(one.buildid)
    # ...editing it changes the build id.
    with open(hook, "a") as f:
        f.write("# edited\n")
    assert read(build(setup, "edited").buildid) != read(one.buildid)
    # Another SOURCE_DATE_EPOCH is other content.
    assert read(build(setup, "epoch", source_date_epoch=1).initrd) != read(one.initrd)


def test_missing_binary_names_the_hook(setup: dict[str, str]) -> None:
    write_hook(setup["hooks"], "wants", binaries=("no-such-tool-x",))
    with pytest.raises(mkinitrd.BuildError, match=r"no-such-tool-x \(wanted by hook wants\)"):
        build(setup, "out")


def test_unknown_module_names_the_hook(setup: dict[str, str]) -> None:
    write_hook(setup["hooks"], "wants", modules=("e1000",))
    with pytest.raises(mkinitrd.BuildError, match=r"'e1000' \(wanted by hook wants\)"):
        build(setup, "out")


def test_rootfs_goes_under_the_init_and_through_merged_usr(setup: dict[str, str]) -> None:
    rootfs = os.path.join(setup["top"], "rootfs")
    for folder in ("bin", "usr/bin", "etc", "sbin"):
        os.makedirs(os.path.join(rootfs, folder))
    for path, text in (
        ("bin/tool", "old layout"),
        ("usr/bin/ls", "rootfs ls"),
        ("etc/hostname", "rootfs"),
        ("sbin/init", "systemd"),
    ):
        with open(os.path.join(rootfs, path), "w") as f:
            f.write(text)
    os.symlink("dash", os.path.join(rootfs, "bin", "sh"))
    os.makedirs(os.path.join(rootfs, "mnt"), mode=0o700)
    os.chmod(os.path.join(rootfs, "mnt"), 0o700)
    if os.getuid() == 0:
        os.chown(os.path.join(rootfs, "etc", "hostname"), 107, 114)
    files = members(build(setup, "out", rootfs=rootfs))
    assert stat.S_IMODE(files["mnt"].mode) == 0o700  # the rootfs's folder modes win
    if os.getuid() == 0:
        assert (files["etc/hostname"].uid, files["etc/hostname"].gid) == (107, 114)
    assert (files["usr/bin/ls"].uid, files["usr/bin/ls"].gid) == (0, 0)
    assert files["usr/bin/tool"].data == b"old layout"  # bin/ is usr/bin in the initrd
    assert files["usr/sbin/init"].data == b"systemd"
    assert files["etc/hostname"].data == b"rootfs"
    assert files["usr/bin/ls"].data != b"rootfs ls"  # the init's file wins
    assert files["usr/bin/sh"].data == b"dash"  # the rootfs wins over busybox applets
    assert files["bin"].data == b"usr/bin" and "bin/tool" not in files


def test_include_brings_libraries(setup: dict[str, str]) -> None:
    true = shutil.which("true") or "/bin/true"
    result = build(setup, "out", includes=(f"{true}:/opt/tools/true",))
    files = members(result)
    assert elf.parse(files["opt/tools/true"].data).interpreter == freeze.PRIVATE_LOADER
    assert "usr/lib/initpy/lib/libc.so.6" in files


def test_one_file_may_be_included_twice(setup: dict[str, str]) -> None:
    # boot_time.py packs its guest program as the exec target and as systemd.
    true = shutil.which("true") or "/bin/true"
    files = members(build(setup, "out", includes=(f"{true}:/opt/a", f"{true}:/opt/b")))
    assert files["opt/a"].data == files["opt/b"].data
    assert elf.parse(files["opt/b"].data).interpreter == freeze.PRIVATE_LOADER


def test_hook_files_go_in_like_includes(setup: dict[str, str]) -> None:
    true = shutil.which("true") or "/bin/true"
    notes = os.path.join(setup["top"], "notes.txt")
    with open(notes, "w") as f:
        f.write("hello\n")
    write_hook(setup["hooks"], "extra", files=(f"{true}:/opt/true", f"{notes}:/etc/notes"))
    files = members(build(setup, "out"))
    assert elf.parse(files["opt/true"].data).interpreter == freeze.PRIVATE_LOADER
    assert files["etc/notes"].data == b"hello\n"
    write_hook(setup["hooks"], "extra", files=("/no/such/file",))
    with pytest.raises(mkinitrd.BuildError, match=r"/no/such/file \(wanted by hook extra\)"):
        build(setup, "again")


def test_a_hook_that_does_not_import_is_named(setup: dict[str, str]) -> None:
    broken = os.path.join(setup["hooks"], "broken.py")
    with open(broken, "w") as f:
        f.write("import no_such_module_xyz\n")
    with pytest.raises(
        BuildError, match=f"hook {re.escape(broken)} does not load: ModuleNotFoundError"
    ) as failure:
        build(setup, "out")
    assert "--hooks" in failure.value.hint
    with pytest.raises(BuildError, match="hooks folder /no/such/dir does not exist"):
        build(setup, "out", hook_dirs=("/no/such/dir",))


def test_missing_include_is_an_error(setup: dict[str, str]) -> None:
    with pytest.raises(mkinitrd.BuildError, match="--include /nope: /nope does not exist"):
        build(setup, "out", includes=("/nope",))


def test_busybox_may_be_given_and_must_be_a_program(setup: dict[str, str]) -> None:
    # The build host's static one: it goes in as it is, and no glibc for it.
    files = members(build(setup, "out", busybox="/bin/busybox"))
    assert files["usr/bin/busybox"].data == read("/bin/busybox")
    assert files["usr/bin/sh"].data == b"/usr/bin/busybox"
    assert "usr/lib/initpy/lib/libresolv.so.2" not in files
    with pytest.raises(mkinitrd.BuildError, match="--busybox .*vmlinuz: not an ELF file"):
        build(setup, "out", busybox=setup["kernel"])


def test_the_command_line_writes_the_three_files(
    setup: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    given = _build_with(setup, monkeypatch)
    out = os.path.join(setup["top"], "cli")
    assert (
        mkinitrd_cli.main(
            [
                "--kernel",
                setup["kernel"],
                "--modules",
                setup["modules"],
                "-o",
                out,
                "--hooks-dir",
                setup["hooks"],
                "--compress",
                "none",
            ]
        )
        == 0
    )
    assert sorted(os.listdir(out)) == ["buildos-buildid", "buildos-image", "buildos-initrd"]
    initrd = read(os.path.join(out, "buildos-initrd"))
    assert initrd.startswith(b"070701")
    # The command line's values reached the build, the table's defaults the rest.
    (options,) = given
    assert (options.outdir, options.compress, options.hook_dirs) == (
        out,
        mkinitrd.Compression.NONE,
        (setup["hooks"],),
    )
    assert options.drivers == Drivers.GENERIC and options.includes == ()
    # ...and it built with the stand-in freezer, not PyInstaller.
    frozen = {m.path: m for m in cpio.read_newc(initrd)}["usr/lib/initpy/frozen/initpy"]
    assert frozen.data == b"#!/bin/sh\necho frozen\n"


def test_the_command_line_takes_a_compression_level(
    setup: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    given = _build_with(setup, monkeypatch)
    base = ["--kernel", setup["kernel"], "--modules", setup["modules"]]
    base += ["--hooks-dir", setup["hooks"], "--no-cache"]
    fast = os.path.join(setup["top"], "fast")
    assert mkinitrd_cli.main([*base, "-o", fast, "--compress", "gzip:1"]) == 0
    assert (given[0].compress, given[0].compress_level, given[0].no_cache) == ("gzip", 1, True)
    packed = read(os.path.join(fast, "buildos-initrd"))
    assert packed.startswith(b"\x1f\x8b")
    assert cpio.decompress(packed).startswith(b"070701")
    with pytest.raises(SystemExit) as exit_info:
        mkinitrd_cli.main([*base, "-o", fast, "--compress", "zstd:20"])
    assert exit_info.value.code == 2
    assert "zstd's level is 1 to 19" in capsys.readouterr().err


def test_an_unwritable_output_folder_is_one_error_and_one_hint(
    setup: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _build_with(setup, monkeypatch)
    argv = ["--kernel", setup["kernel"], "--modules", setup["modules"], "-o", "/proc/nope"]
    assert mkinitrd_cli.main([*argv, "--hooks-dir", setup["hooks"]]) == 1
    assert capsys.readouterr().err.splitlines()[-2:] == [
        "mkinitrd: error: cannot write /proc/nope: No such file or directory",
        "mkinitrd: hint: give -o a folder you may write to (-o /proc/nope was given)",
    ]
    assert mkinitrd_cli.main([*argv, "--hooks-dir", setup["hooks"], "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "os.makedirs" in err


def test_the_docs_show_the_options_table() -> None:
    """docs/builder.md's table is the one the settings generate."""
    assert docs_section("mkinitrd options") == settings.docs_table(SETTINGS)


def test_options_take_their_defaults_from_the_table() -> None:
    options = mkinitrd.Options(kernel="k", modules="m", outdir="o")
    parsed = mkinitrd_cli.parser().parse_args(["--kernel", "k", "--modules", "m", "-o", "o"])
    from_table = mkinitrd.Options(**settings.values(parsed, SETTINGS))  # type: ignore[arg-type]
    assert from_table == options
    assert (options.compress, options.compress_level) == (mkinitrd.Compression.LZ4, None)
    assert (options.drivers, options.firmware_dir) == (Drivers.GENERIC, "/lib/firmware")
    # Every field a setting names is a field of Options.
    fields = set(mkinitrd.Options.__dataclass_fields__)
    named = {f for s in SETTINGS if s.option for f in s.default_value()}
    assert named <= fields, named - fields


def docs_section(name: str) -> str:
    with open(os.path.join(REPO, "docs", "builder.md")) as f:
        text = f.read()
    start = text.index(f"<!-- {name}: generated")
    start = text.index("\n", start) + 1
    return text[start : text.index(f"<!-- end of {name} -->")]


def _build_with(setup: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[mkinitrd.Options]:
    """The command's build, with the stand-in freezer and only the test's hooks
    (the command has no switch for either); returns the Options it was given."""
    real = mkinitrd.build
    given: list[mkinitrd.Options] = []

    def build(options: mkinitrd.Options, **kwargs: object) -> mkinitrd.BuildResult:
        given.append(options)
        options = mkinitrd.Options(**{**options.__dict__, "base_hooks_dir": None})
        return real(options, freezer=fake_freezer(setup["top"]))

    monkeypatch.setattr(mkinitrd, "build", build)
    return given


def test_the_initrd_freezes_the_runtime_and_nothing_else_of_initpy() -> None:
    """The frozen init's module archive, listed: no builder, dev tool or hook in it."""
    from PyInstaller.archive.readers import CArchiveReader

    frozen = freeze.freeze(hooks.choose([hooks.default_hooks_dir()], None).sources())
    archive = CArchiveReader(os.path.join(frozen.tree, "frozen", "initpy"))
    modules = set(archive.open_embedded_archive("PYZ.pyz").toc)
    ours = sorted(m for m in modules if m.split(".")[0] in ("initpy", "hooks"))
    print("frozen initpy modules:", ", ".join(ours))
    assert {
        "initpy.runtime.driver",
        "initpy.runtime.kernel",
        "initpy.runtime.entry",
        "initpy.runtime.layout",
    } <= modules
    assert [m for m in ours if not m.startswith("initpy.runtime") and m != "initpy"] == []
    # The hooks are files beside the frozen init, loaded at boot; the libraries
    # they import are frozen (pyroute2 for the network hook).
    assert "pyroute2.iproute.linux" in modules


def test_the_real_mkinitrd_twice_is_byte_identical(tmp_path: str, real_kernel: str) -> None:
    """The whole builder, with the real (cached) freeze, twice.

    When initpy's sources change between the two builds (people edit the
    tree while tests run), the second build freezes anew and the pair is
    built again.
    """

    def mkinitrd_cli(out: str) -> str:
        done = run_mkinitrd(
            real_kernel, out, "--hooks", "modules,rescue_tools", "--compress", "none"
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    for attempt in range(3):
        first, second = (os.path.join(tmp_path, f"{attempt}-{n}") for n in ("a", "b"))
        mkinitrd_cli(first)
        if "frozen now" not in mkinitrd_cli(second):
            break
    for name in ("buildos-initrd", "buildos-buildid", "buildos-image"):
        assert read(os.path.join(first, name)) == read(os.path.join(second, name))


def test_hook_imports_become_hidden_imports(tmp_path: str) -> None:
    hook = os.path.join(tmp_path, "net.py")
    with open(hook, "w") as f:
        f.write(
            "import json\n\ndef up(ctx):\n"
            "    from concurrent.futures import ThreadPoolExecutor\n"
            "    from email import message_from_string\n"
        )
    wanted = freeze.hidden_imports([hook])
    assert {"json", "concurrent.futures", "email", "initpy.runtime"} <= set(wanted)
    assert "sqlite3" not in wanted  # excluded: the lean pyroute2 import never needs it
    assert "concurrent.futures.ThreadPoolExecutor" not in wanted  # a class, not a module


def test_a_hook_importing_a_missing_package_names_itself(tmp_path: str) -> None:
    hook = os.path.join(tmp_path, "odd.py")
    with open(hook, "w") as f:
        f.write("def run(ctx):\n    import no_such_package_xyz\n")
    with pytest.raises(freeze.FreezeError, match=r"odd\.py imports 'no_such_package_xyz'"):
        freeze.hidden_imports([hook])


def test_frozen_find_library_looks_in_the_initrd_folders(tmp_path: str) -> None:
    """The entry script's patch, in a fresh interpreter (ctypes.util not yet imported)."""
    folder = os.path.join(tmp_path, "lib")
    os.makedirs(folder)
    for name in ("libudev.so", "libudev.so.1"):
        with open(os.path.join(folder, name), "w") as f:
            f.write("")
    entry = os.path.join(freeze.runtime_dir(), "frozen.py")
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('entry', {entry!r})\n"
        "entry = importlib.util.module_from_spec(spec); spec.loader.exec_module(entry)\n"
        f"entry.LIBRARY_DIRS = ({folder!r},)\n"
        "sys.modules.pop('ctypes.util', None)\n"
        "sys.meta_path.insert(0, entry.PatchOnImport())\n"
        "from ctypes.util import find_library\n"
        "print(find_library('udev'))\n"
        "print(find_library('no-such-library-xyz'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [os.path.join(folder, "libudev.so.1"), "None"]


def test_a_subset_of_hooks_builds_and_a_missing_need_is_a_build_error(
    setup: dict[str, str],
) -> None:
    # A hook that only wants another's milestone boots without it; one that
    # needs it is refused at build time, naming the hook to add.
    with open(os.path.join(setup["hooks"], "late.py"), "w") as f:
        f.write(
            "from initpy.runtime.hook import Hook, State\n"
            "HOOK = Hook('late', 'x', (State('late', lambda ctx: None, 'x', "
            "wants=('probed',)),))\n"
        )
    with open(os.path.join(setup["hooks"], "strict.py"), "w") as f:
        f.write(
            "from initpy.runtime.hook import Hook, State\n"
            "HOOK = Hook('strict', 'x', (State('strict', lambda ctx: None, 'x', "
            "needs=('probed',)),))\n"
        )
    files = members(build(setup, "out", hooks=("late",)))
    manifest = layout.Manifest.from_json(files[layout.MANIFEST.lstrip("/")].data)
    assert manifest.hooks == ("late",)
    with pytest.raises(
        BuildError, match="needs milestone 'probed', which no chosen hook provides; add hook probe"
    ):
        build(setup, "out2", hooks=("strict",))


def test_drivers_the_index_and_firmware_go_into_the_initrd(setup: dict[str, str]) -> None:
    from tests.unit.test_kmod import _driver_tree

    modules = _driver_tree(os.path.join(setup["top"], "hw"))
    firmware = os.path.join(setup["top"], "firmware")
    os.makedirs(os.path.join(firmware, "e1000"))
    with open(os.path.join(firmware, "e1000/fw.bin"), "wb") as f:
        f.write(b"firmware")
    write_hook(setup["hooks"], "probe", binaries=("ls",), modules=("libata",))
    result = build(
        setup,
        "out",
        modules=modules,
        drivers=Drivers.NONE,
        extra_drivers=("e1000",),
        firmware_dir=firmware,
    )
    files = members(result)
    manifest = layout.Manifest.from_json(files[layout.MANIFEST.lstrip("/")].data)
    assert (manifest.drivers, manifest.extra_drivers) == ("none", ("e1000",))
    packed = {m.name: m for m in manifest.modules}
    assert packed["libata"].hooks == ("probe",) and packed["e1000"].hooks == ()
    assert "sd_mod" in packed  # libata is a SCSI host: the disk driver comes along
    index = layout.AliasIndex.from_json(files[layout.MODALIAS_INDEX.lstrip("/")].data)
    assert set(index.modules_for("pci:v00008086d0000100Esv1sd2bc02sc00i00")) == {"e1000"}
    assert files["usr/lib/firmware/e1000/fw.bin"].data == b"firmware"
    assert any("firmware: 1 file(s) packed, 1 declared" in n for n in result.notes)
    # Reproducible with drivers too.
    again = build(
        setup,
        "again",
        modules=modules,
        drivers=Drivers.NONE,
        extra_drivers=("e1000",),
        firmware_dir=firmware,
    )
    assert read(again.initrd) == read(result.initrd)


def test_frozen_pkgutil_lists_a_frozen_package_once_imported() -> None:
    """The entry script's stand-in for pyi_rth_pkgutil, in a fresh interpreter.

    pyroute2 finds its ifinfmsg plugins with pkgutil.iter_modules; in the
    frozen init they sit in the PYZ, which PyInstaller's finder cannot list.
    """
    entry = os.path.join(freeze.runtime_dir(), "frozen.py")
    script = (
        "import importlib.util, sys, types\n"
        f"spec = importlib.util.spec_from_file_location('entry', {entry!r})\n"
        "entry = importlib.util.module_from_spec(spec); spec.loader.exec_module(entry)\n"
        "importers = types.ModuleType('pyimod02_importers')\n"
        "class PyiFrozenFinder:\n"
        "    _pyz_entry_prefix = 'pyroute2.plugins'\n"
        "    fallback_finder = None\n"
        "importers.PyiFrozenFinder = PyiFrozenFinder\n"
        "importers.get_pyz_toc_tree = lambda: "
        "{'pyroute2': {'plugins': {'vlan': '', 'bond': {}}}, 'json': {}}\n"
        "sys.modules['pyimod02_importers'] = importers\n"
        "print('pkgutil' in sys.modules)\n"
        "sys.meta_path.insert(0, entry.PkgutilOnImport())\n"
        "import pkgutil\n"
        "print(sorted(pkgutil.iter_importer_modules(PyiFrozenFinder(), 'p.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines() == ["False", "[('p.bond', True), ('p.vlan', False)]"]
