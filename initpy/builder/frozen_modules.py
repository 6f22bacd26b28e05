"""Which modules the freeze takes whatever the hooks say, and which it leaves out.

Owned by the builder (mkinitrd); initpy.builder.freeze passes them to
PyInstaller (hidden imports, excluded modules) and hashes this file into
its cache key. tests/unit/test_speed.py runs the boot's path (PID 1, every
hook file, the network states' pyroute2 and DHCP client, the rescue mail)
with every EXCLUDES name refused, so nothing left out is needed at boot.
"""

from __future__ import annotations

# Always frozen: what initpy and every boot needs, whatever the hooks say.
BASE_IMPORTS = (
    "initpy.runtime",
    "initpy.runtime.nossl",
    "transitions",
    "json",
    "ctypes",
    "ctypes.util",
)
# Never frozen: not used at boot, and large. (Not unittest: pyroute2 imports
# unittest.mock at package import.) ssl is answered by initpy.runtime.nossl, so
# OpenSSL (libssl, libcrypto: 1.9 MB of zstd) stays out.
EXCLUDES = (
    "tkinter",
    "_tkinter",
    "pydoc",
    "pydoc_data",
    "lib2to3",
    "idlelib",
    "ensurepip",
    "distutils",
    "setuptools",
    "pip",
    "pkg_resources",
    "test",
    "xmlrpc",
    "curses",
    "readline",
    "mypy",
    "pytest",
    "_pytest",
    "hypothesis",
    "PyInstaller",
    "ruff",
    "IPython",
    "numpy",
    "ssl",
    "_ssl",
    "_hashlib",
    # The C decimal module: decimal falls back to the pure-Python _pydecimal.
    "_decimal",
    # East Asian codecs, never used by a boot.
    "_codecs_jp",
    "_codecs_kr",
    "_codecs_cn",
    "_codecs_tw",
    "_codecs_hk",
    "_codecs_iso2022",
    "_multibytecodec",
    # Issue 13 (the minimal initrd to 8 MB): none of these is imported by PID 1's
    # start, the hooks' files, the network states' pyroute2 and DHCP client or
    # the rescue mail (tests/unit/test_speed.py blocks them and runs that path).
    # sqlite3: only pyroute2's package __init__ (NDB) needs it, and the boot
    # skips that __init__ (hooks.network.netlink.lean_pyroute2). 0.69 MB zstd.
    "sqlite3",
    "_sqlite3",
    # unicodedata: only the idna codec needs it, and Kernel.connect_tcp hands
    # getaddrinfo the host as ASCII bytes, so that codec is never looked up.
    "unicodedata",
    "stringprep",
    "encodings.idna",
    # Pure-Python stdlib that only the static graph reaches.
    "_pydecimal",
    "decimal",
    "statistics",
    "fractions",
    "tarfile",
    "gzip",
    "csv",
    "_csv",
    "tracemalloc",
    "py_compile",
    "getopt",
    "mmap",
    "_multiprocessing",
    # Issue 21 (the minimal initrd to 8 MB), the same proof. lzma and bz2:
    # only shutil and zipfile import them, each ready for their absence;
    # with them liblzma and libbz2 stay out (0.13 MB zstd).
    "lzma",
    "_lzma",
    "bz2",
    "_bz2",
    # Never imported on the boot path, by anything frozen (PID 1, the hooks,
    # pyroute2, the rescue mail): zip archives and the package metadata and
    # resources read from them, time.strptime, ProcessPoolExecutor, the
    # fallbacks of C modules, ctypes' and email's parts for other systems
    # and for reading mail.
    "zipfile",
    "importlib.metadata",
    "importlib.resources",
    "importlib.readers",
    "importlib.abc",
    "_strptime",
    "concurrent.futures.process",
    "_py_abc",
    "_threading_local",
    "ctypes.macholib",
    "ctypes._aix",
    "email.parser",
    "email.feedparser",
    # pyroute2 imports the multiprocessing package (context, process,
    # reduction); pools, managers and process starters are never used.
    "multiprocessing.pool",
    "multiprocessing.managers",
    "multiprocessing.shared_memory",
    "multiprocessing.sharedctypes",
    "multiprocessing.dummy",
    "multiprocessing.connection",
    "multiprocessing.synchronize",
    "multiprocessing.queues",
    "multiprocessing.heap",
    "multiprocessing.forkserver",
    "multiprocessing.popen_fork",
    "multiprocessing.popen_forkserver",
    "multiprocessing.popen_spawn_posix",
    "multiprocessing.popen_spawn_win32",
    "multiprocessing.resource_sharer",
    "multiprocessing.resource_tracker",
    "multiprocessing.spawn",
    "multiprocessing.util",
)
