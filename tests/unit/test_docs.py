"""docs/ stays true: the generated state document matches the hooks."""

from __future__ import annotations

import os
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
