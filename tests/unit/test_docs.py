"""docs/ stays true: the generated state document matches the hooks."""

from __future__ import annotations

import os
import subprocess
import sys

from initpy.docgen import states_document
from tests.unit.conftest import HOOKS_DIR, REPO


def test_states_document_is_current() -> None:
    with open(os.path.join(REPO, "docs", "states.md")) as f:
        committed = f.read()
    assert committed == states_document([HOOKS_DIR]), (
        "docs/states.md is stale: run `.venv/bin/python -m initpy.docgen > docs/states.md`"
    )


def test_initpy_diagram_matches_the_committed_diagram() -> None:
    out = subprocess.run([sys.executable, "-m", "initpy", "diagram"], capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    assert out.startswith("---\ntitle: initpy boot\n---\nstateDiagram-v2")
    with open(os.path.join(REPO, "docs", "states.md")) as f:
        assert "```mermaid\n" + out + "```" in f.read()
