"""docs/ stays true: the generated state document matches the hooks."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from initpy.devtools.docgen import states_document
from tests.unit.conftest import HOOKS_DIR, REPO


def test_states_document_is_current() -> None:
    with open(os.path.join(REPO, "docs", "states.md")) as f:
        committed = f.read()
    assert committed == states_document([HOOKS_DIR]), (
        "docs/states.md is stale: run `.venv/bin/python -m initpy.devtools.docgen > docs/states.md`"
    )


def test_initpy_diagram_matches_the_committed_diagram() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "initpy", "diagram"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert out.startswith("---\ntitle: initpy boot\n---\nstateDiagram-v2")
    with open(os.path.join(REPO, "docs", "states.md")) as f:
        assert "```mermaid\n" + out + "```" in f.read()


def test_the_hook_example_in_the_design_doc_works(tmp_path: os.PathLike[str]) -> None:
    import re

    from initpy.devtools.fake import FakeKernel
    from initpy.runtime.driver import Boot
    from initpy.runtime.hook import build_registry, discover
    from initpy.runtime.kernel import Halted

    with open(os.path.join(REPO, "docs", "design.md")) as f:
        (example,) = re.findall(r"```python\n(# hooks/motd.py\n.*?)```", f.read(), re.S)
    folder = os.path.join(str(tmp_path), "hooks")
    os.makedirs(folder)
    with open(os.path.join(folder, "motd.py"), "w") as f:
        f.write(example)
    found = {**discover([HOOKS_DIR]), **discover([folder])}
    registry = build_registry([found["motd"]], found.values())
    kernel = FakeKernel(root=os.path.join(str(tmp_path), "root"), cmdline="initpy.motd=hello")
    try:
        Boot(kernel, registry).run()
    except Halted:
        pass
    with open(kernel.path("/etc/motd")) as f:
        assert f.read() == "hello\n"


ROOMS_BEGIN = "<!-- rooms: checked by tests/unit/test_docs.py -->"
ROOMS_END = "<!-- end of rooms -->"


def rooms() -> dict[str, str]:
    """design.md's rooms table: each room's path (e.g. `hooks/*.py`) -> its row's text."""
    with open(os.path.join(REPO, "docs", "design.md"), encoding="utf-8") as f:
        text = f.read()
    table = text[text.index(ROOMS_BEGIN) : text.index(ROOMS_END)]
    found: dict[str, str] = {}
    for line in table.splitlines():
        match = re.match(r"\| `([^`]+)`", line)
        if match:
            found[match.group(1)] = found.get(match.group(1), "") + line
    return found


def test_the_design_names_every_room_and_every_module_in_it() -> None:
    """Every package and folder has its row in design.md's house, and each row
    names every module of its folder: a new room or module cannot go unmentioned."""
    table = rooms()
    folders = [
        *(f"initpy/{d}/" for d in ("runtime", "builder", "devtools", "host")),
        *(
            f"hooks/{d}/"
            for d in sorted(os.listdir(os.path.join(REPO, "hooks")))
            if os.path.isfile(os.path.join(REPO, "hooks", d, "__init__.py"))
        ),
        *(f"tests/{d}/" for d in ("unit", "root", "vm", "harness")),
        "os/",
        "scripts/",
        "benchmarks/",
        "docs/",
    ]
    assert sorted(set(folders) - set(table)) == [], "rooms missing from docs/design.md"
    unnamed: list[str] = []
    for room, row in table.items():
        if not room.startswith(("initpy/", "hooks/")) or room == "initpy/cli.py":
            continue
        folder = room.removesuffix("*.py")
        for name in sorted(os.listdir(os.path.join(REPO, folder))):
            if name.endswith(".py") and name != "__init__.py" and f"`{name}`" not in row:
                unnamed.append(folder + name)
    assert unnamed == [], "modules that design.md's house does not name"
