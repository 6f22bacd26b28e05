"""`systemd-analyze security` of every service initpy writes, offline, as the hooks ship them.

Every hook's `os_files` units are written into a folder and scored by
systemd itself (`--offline=true`: the files, not a running system). The issue's
bound holds for the monitor and its reboot unit (3.0 at most, where 10 is
no sandbox at all), and every unit stays at or under the figure
docs/security.md gives it, in its table between the `unit scores`
markers; a unit with no row there fails, so a new unit comes with its
figure.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from initpy.runtime.hook import discover
from tests.unit.conftest import HOOKS_DIR, needs_systemd_analyze

REPO = Path(__file__).resolve().parents[2]
SECURITY_MD = REPO / "docs" / "security.md"
# The bound (issue 19, acceptance 4).
BOUND = {"initpy-monitor.service": 3.0, "initpy-reboot.service": 3.0}


def shipped_units() -> dict[str, str]:
    """Every service initpy writes, by name."""
    return {
        f.path.rsplit("/", 1)[1]: f.text
        for hook in discover([HOOKS_DIR]).values()
        for f in hook.os_files
        if f.path.endswith(".service") and f.text  # an empty file masks a unit
    }


def documented() -> dict[str, float]:
    """The `after` column of docs/security.md's table of unit scores, by unit."""
    text = SECURITY_MD.read_text()
    table = text.split("<!-- unit scores")[1].split("<!-- end of unit scores -->")[0]
    rows = re.findall(r"^\| `([^`]+)` \|[^|]*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|", table, re.M)
    return {unit: float(after) for unit, _before, after in rows}


def score(folder: Path, name: str, text: str) -> float:
    path = folder / name
    path.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", f"./{path.name}"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


UNITS = shipped_units()


def test_every_unit_initpy_writes_has_its_figure_in_security_md() -> None:
    assert set(documented()) == set(UNITS)


@needs_systemd_analyze
@pytest.mark.parametrize("name", sorted(UNITS))
def test_a_unit_scores_at_most_its_documented_figure(name: str, tmp_path: Path) -> None:
    figure = documented()[name]
    got = score(tmp_path, name, UNITS[name])
    assert got <= BOUND.get(name, 10.0)
    assert got <= figure, f"{name}: systemd-analyze security says {got}, docs/security.md {figure}"
