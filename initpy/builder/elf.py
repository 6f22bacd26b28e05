"""ELF reading for the builder: what a binary needs to run inside the initrd.

Owned by the builder (mkinitrd). For a host executable or library it reads
the program interpreter (PT_INTERP), the needed libraries (DT_NEEDED), and
DT_RPATH/DT_RUNPATH, and resolves the libraries recursively the way
glibc's loader does: RPATH of the loading object (when it has no RUNPATH)
and of the executable, RUNPATH of the loading object, then the standard
Debian multiarch folders. `$ORIGIN` is expanded. Candidates of the wrong
class or machine (an i386 library in /lib) are skipped, as ld.so does.

Parsed with `struct` (no pyelftools dependency): only the ELF header, the
program headers and the dynamic section are read, and a truncated or
malformed file raises `ElfError` naming the file and what is wrong.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from initpy.builder.command import BuildError

ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_STRSZ = 10
DT_RPATH = 15
DT_RUNPATH = 29

# Where Debian's loader looks when nothing else says (ld.so.conf.d order).
DEFAULT_LIBRARY_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib/x86_64-linux-gnu",
    "/usr/local/lib",
)


class ElfError(BuildError):
    """The file is not a usable ELF file; the message says which and why."""


@dataclass(frozen=True)
class ElfInfo:
    path: str
    elf_class: int  # 1: 32-bit, 2: 64-bit
    little_endian: bool
    machine: int
    elf_type: int  # 2: executable, 3: shared object / PIE
    interpreter: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]

    @property
    def is_dynamic(self) -> bool:
        return self.interpreter is not None or bool(self.needed)


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def _unpack(fmt: str, data: bytes, offset: int, what: str, path: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        raise ElfError(f"{path}: truncated ELF file ({what} at offset {offset} is past the end)")
    return struct.unpack_from(fmt, data, offset)


def _string(data: bytes, offset: int, path: str) -> str:
    if offset < 0 or offset >= len(data):
        raise ElfError(f"{path}: malformed ELF file (string at {offset} is past the end)")
    end = data.find(b"\0", offset)
    if end < 0:
        raise ElfError(f"{path}: malformed ELF file (unterminated string at {offset})")
    return data[offset:end].decode("utf-8", errors="surrogateescape")


def parse(data: bytes, path: str = "<bytes>") -> ElfInfo:
    """The interpreter, needed libraries and search paths of an ELF image."""
    if data[:4] != ELF_MAGIC:
        raise ElfError(f"{path}: not an ELF file (no \\x7fELF magic)")
    if len(data) < 16:
        raise ElfError(f"{path}: truncated ELF file (no full identification)")
    elf_class, data_enc = data[4], data[5]
    if elf_class not in (1, 2) or data_enc not in (1, 2):
        raise ElfError(f"{path}: malformed ELF file (class {elf_class}, data {data_enc})")
    e = "<" if data_enc == 1 else ">"
    wide = elf_class == 2
    if wide:
        (e_type, e_machine, _v, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum) = (
            _unpack(e + "HHIQQQIHHH", data, 16, "ELF header", path)
        )
        ph_fmt, dyn_fmt = e + "IIQQQQQQ", e + "qQ"
    else:
        (e_type, e_machine, _v, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum) = (
            _unpack(e + "HHIIIIIHHH", data, 16, "ELF header", path)
        )
        ph_fmt, dyn_fmt = e + "IIIIIIII", e + "iI"
    if e_phnum and e_phentsize < struct.calcsize(ph_fmt):
        raise ElfError(f"{path}: malformed ELF file (program header size {e_phentsize})")
    interpreter = None
    dynamic: tuple[int, int] | None = None
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    for i in range(e_phnum):
        fields = _unpack(ph_fmt, data, e_phoff + i * e_phentsize, f"program header {i}", path)
        if wide:
            p_type, _pflags, p_offset, p_vaddr, _paddr, p_filesz = fields[:6]
        else:
            p_type, p_offset, p_vaddr, _paddr, p_filesz = fields[:5]
        if p_type == PT_INTERP:
            if p_offset + p_filesz > len(data):
                raise ElfError(f"{path}: truncated ELF file (PT_INTERP past the end)")
            interpreter = data[p_offset : p_offset + p_filesz].split(b"\0", 1)[0].decode()
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    if dynamic is not None:
        entries: list[tuple[int, int]] = []
        step = struct.calcsize(dyn_fmt)
        offset, size = dynamic
        for pos in range(offset, offset + size, step):
            tag, value = _unpack(dyn_fmt, data, pos, "dynamic entry", path)
            if tag == DT_NULL:
                break
            entries.append((tag, value))
        strtab_vaddr = next((v for t, v in entries if t == DT_STRTAB), None)
        if strtab_vaddr is None:
            if any(t in (DT_NEEDED, DT_RPATH, DT_RUNPATH) for t, _ in entries):
                raise ElfError(f"{path}: malformed ELF file (dynamic section without DT_STRTAB)")
        else:
            strtab = _file_offset(strtab_vaddr, loads, path)
            for tag, value in entries:
                if tag == DT_NEEDED:
                    needed.append(_string(data, strtab + value, path))
                elif tag == DT_RPATH:
                    rpath.extend(p for p in _string(data, strtab + value, path).split(":") if p)
                elif tag == DT_RUNPATH:
                    runpath.extend(p for p in _string(data, strtab + value, path).split(":") if p)
    return ElfInfo(
        path,
        elf_class,
        data_enc == 1,
        e_machine,
        e_type,
        interpreter,
        tuple(needed),
        tuple(rpath),
        tuple(runpath),
    )


def _file_offset(vaddr: int, loads: Sequence[tuple[int, int, int]], path: str) -> int:
    for seg_vaddr, seg_offset, seg_filesz in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_filesz:
            return seg_offset + (vaddr - seg_vaddr)
    raise ElfError(f"{path}: malformed ELF file (address {vaddr:#x} is in no loaded segment)")


def read(path: str) -> ElfInfo:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ElfError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse(data, path)


@dataclass
class Closure:
    """Everything a set of ELF files needs: libraries by soname, loaders.

    `libraries` maps a soname to the host file that provides it (the real
    file, symlinks followed); `interpreters` are the loaders named by
    PT_INTERP, as host paths.
    """

    libraries: dict[str, str] = field(default_factory=dict)
    interpreters: set[str] = field(default_factory=set)
    # soname -> the first object that needed it (for error messages)
    wanted_by: dict[str, str] = field(default_factory=dict)


def _expand(entry: str, origin: str) -> str:
    for token in ("$ORIGIN", "${ORIGIN}"):
        entry = entry.replace(token, origin)
    return entry


def _compatible(candidate: str, like: ElfInfo) -> bool:
    try:
        with open(candidate, "rb") as f:
            head = f.read(20)
    except OSError:
        return False
    if len(head) < 20 or head[:4] != ELF_MAGIC:
        return False
    machine = struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)[0]
    return head[4] == like.elf_class and machine == like.machine


def resolve(
    paths: Sequence[str],
    extra_dirs: Sequence[str] = (),
    default_dirs: Sequence[str] = DEFAULT_LIBRARY_DIRS,
) -> Closure:
    """Resolve the libraries of `paths` recursively, as glibc's ld.so would.

    `extra_dirs` are searched before the default folders (like
    LD_LIBRARY_PATH). A library that cannot be found raises `ElfError`
    naming it and the object that needs it.
    """
    closure = Closure()
    seen: set[str] = set()
    # (object, the executable's RPATH, the executable's origin)
    queue: list[tuple[ElfInfo, tuple[str, ...], str]] = []
    for path in paths:
        info = read(path)
        origin = os.path.dirname(os.path.realpath(path))
        queue.append((info, tuple(_expand(p, origin) for p in info.rpath), origin))
        if info.interpreter:
            closure.interpreters.add(os.path.realpath(info.interpreter))
    while queue:
        info, exe_rpath, _exe_origin = queue.pop(0)
        real = os.path.realpath(info.path)
        if real in seen:
            continue
        seen.add(real)
        origin = os.path.dirname(real)
        own_rpath = [_expand(p, origin) for p in info.rpath]
        own_runpath = [_expand(p, origin) for p in info.runpath]
        search: list[str] = []
        if not own_runpath:
            search += own_rpath + list(exe_rpath)
        search += list(extra_dirs) + own_runpath + list(default_dirs)
        for soname in info.needed:
            if soname in closure.libraries:
                continue
            found = _find(soname, search, info)
            if found is None:
                raise ElfError(
                    f"{info.path}: needs {soname}, which is in none of "
                    + ", ".join(dict.fromkeys(search))
                    + "; install the Debian package that provides it (apt-file search "
                    + soname
                    + ")"
                )
            closure.libraries[soname] = os.path.realpath(found)
            closure.wanted_by[soname] = info.path
            queue.append((read(found), exe_rpath, origin))
    return closure


def _find(soname: str, search: Sequence[str], like: ElfInfo) -> str | None:
    if "/" in soname:
        return soname if os.path.exists(soname) else None
    for folder in search:
        candidate = os.path.join(folder, soname)
        if os.path.exists(candidate) and _compatible(candidate, like):
            return candidate
    return None
