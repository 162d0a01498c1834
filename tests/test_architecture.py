"""The floors of the house hold: imports go downward only, and no floor's modules import each other in a circle.

The contracts are in pyproject.toml ([tool.importlinter]); README "Concepts" describes the floors. The second test
proves the check can fail: an upward import planted in a copy of the package breaks it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_imports_run_one_way_and_no_floor_has_a_circle():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout, done.stdout


def test_an_upward_import_breaks_the_floors(tmp_path):
    shutil.copytree(ROOT / "rh_prefect", tmp_path / "rh_prefect", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    base = tmp_path / "rh_prefect" / "systems" / "base.py"
    base.write_text(base.read_text() + "\nfrom rh_prefect.runtime import registry  # noqa: E402,F401\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "rh_prefect.systems.base -> rh_prefect.runtime.registry" in done.stdout, done.stdout
