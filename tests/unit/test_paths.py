"""Every repository path named in the source, the docs and the texts hooks write exists.

A comment, a docstring, a doc page or a generated file (the hooks' texts for
/etc are string literals in their .py files) that names a file of this
repository, such as `docs/testing.md` or `initpy/runtime/layout.py`, keeps
pointing at a real one: a rename that leaves an old name behind fails here.
A name counts when it begins with one of the repository's top-level folders
and is not part of a longer path (`/usr/lib/initpy/hooks` is the image's,
not ours). Markdown links are resolved from the page's own folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from tests.unit.conftest import REPO

ROOTS = ("benchmarks", "docs", "hooks", "initpy", "os", "scripts", "tests")
# A top-level folder, then path words; not preceded by anything that would
# make it the tail of a longer path, a variable or a home-relative path.
TOP = "|".join(ROOTS)
PATH = re.compile(rf"(?<![\w.~$/-])(?:\./)?((?:{TOP})/[\w.+-]+(?:/[\w.+-]+)*/?)")
# Folders whose every file is text that may name paths (bash, unit files, configs);
# .ci is the one hidden folder of ours (CI's entry).
ROOT_TEXTS = ("scripts", "os", ".ci")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
SKIPPED_FOLDERS = {"__pycache__", "artifacts", "build", "dist", "out"}
# This file names paths that do not exist on purpose (the lists below).
THIS_FILE = os.path.relpath(__file__, REPO)

# Words that look like repository paths and are not, each with the reason.
NOT_REPO = {
    "hooks/motd.py": "docs/design.md's example of a hook a user writes (test_docs runs it)",
    "initpy/buildos": "prose: the initpy.* and buildos.* parameters",
    "initpy/hooks": "where pip installs hooks/ (pyproject.toml's package-dir), not in the repo",
    "initpy/busybox": "prose: the ratio of initpy's boot time to busybox's",
    "initpy/random-seed": "a file under /state (persist's folder there), not in the repository",
    "initpy/ssh/": "a folder under /state (persist's saved host keys)",
}
# Stale names on main that other branches of issue 17 fix (the network, runtime
# and builder lanes). The lead empties this set once those branches are merged;
# the test fails on any entry that no longer occurs, so it cannot go stale itself.
KNOWN_STALE: dict[str, str] = {}


def scanned_files() -> Iterator[str]:
    """The repository's text files that may name paths, relative to REPO."""
    for folder, folders, files in os.walk(REPO):
        folders[:] = sorted(
            f
            for f in folders
            if (f in ROOT_TEXTS or not f.startswith("."))
            and f not in SKIPPED_FOLDERS
            and not f.endswith(".egg-info")
        )
        relative = os.path.relpath(folder, REPO)
        top = relative.split(os.sep)[0]
        for name in sorted(files):
            path = os.path.normpath(os.path.join(relative, name))
            if path != THIS_FILE and (name.endswith((".py", ".md", ".toml")) or top in ROOT_TEXTS):
                yield path


def lines(path: str) -> Iterator[tuple[int, str]]:
    try:
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            yield from enumerate(f.read().splitlines(), start=1)
    except UnicodeDecodeError:  # a binary file in os/overlay: no text to check
        return


def allowed_by(known: str, name: str) -> bool:
    return name == known or (known.endswith("/") and name.startswith(known))


def allowed(name: str) -> bool:
    return any(allowed_by(known, name) for known in NOT_REPO)


def missing_in(path: str, numbered: Iterator[tuple[int, str]]) -> Iterator[tuple[str, str]]:
    """(name, where) for each path named in `path`'s lines that is not in the repository."""
    for number, line in numbered:
        for match in PATH.finditer(line):
            name = match.group(1).rstrip(".")
            if not os.path.exists(os.path.join(REPO, name)):
                yield name, f"{path}:{number}"
        if path.endswith(".md"):
            for match in LINK.finditer(line):
                target = match.group(1)
                if re.match(r"[a-z]+:", target):  # https:, mailto:
                    continue
                resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
                if not os.path.exists(os.path.join(REPO, resolved)):
                    yield target, f"{path}:{number} (link)"


def named_paths() -> dict[str, list[str]]:
    """Every path-looking name that does not exist -> where it is named (file:line)."""
    missing: dict[str, list[str]] = {}
    for path in scanned_files():
        for name, where in missing_in(path, lines(path)):
            missing.setdefault(name, []).append(where)
    return missing


def test_every_repository_path_named_exists() -> None:
    missing = named_paths()
    stale = {
        name: where
        for name, where in missing.items()
        if not allowed(name) and name not in KNOWN_STALE
    }
    assert stale == {}, "named but not in the repository:\n" + "\n".join(
        f"  {name}: {', '.join(where)}" for name, where in sorted(stale.items())
    )


def test_the_exceptions_are_still_needed() -> None:
    """An entry of NOT_REPO or KNOWN_STALE that no file names any more is removed."""
    missing = named_paths()
    unused = [known for known in NOT_REPO if not any(allowed_by(known, n) for n in missing)]
    fixed = [name for name in KNOWN_STALE if name not in missing]
    assert unused == [] and fixed == [], (
        f"no longer named anywhere: NOT_REPO {unused}, KNOWN_STALE {fixed}; remove them"
    )


def test_the_scanner_finds_what_it_should() -> None:
    """The pattern takes a repository path and leaves the image's paths alone."""
    text = (
        "see docs/testing.md. and ./scripts/bootstrap, `hooks/gone.py`; "
        "not /usr/lib/initpy/hooks/x.py, ~/.cache/initpy/rootfs or $out/docs/x"
    )
    assert [m.group(1).rstrip(".") for m in PATH.finditer(text)] == [
        "docs/testing.md",
        "scripts/bootstrap",
        "hooks/gone.py",
    ]
    page = "docs/x.md"
    found = list(missing_in(page, iter([(1, text), (2, "[the manual](manual.md), [gone](no.md)")])))
    assert found == [("hooks/gone.py", "docs/x.md:1"), ("no.md", "docs/x.md:2 (link)")]
