"""The suite runs from a clone in any folder, whatever its name (regression: a clone into `mktemp -d`'s `tmp.XXXX`
failed every test at setup, pytest importing the pack root's __init__.py under a name with no parent package)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_PARTS_THE_TEST_NEEDS = ("pyproject.toml", "conftest.py", "__init__.py", "nodes", "srrl_core", "tests")


def test_a_clone_in_a_dotted_folder_collects_and_runs(tmp_path):
    clone = tmp_path / "tmp.SrrlClone"
    clone.mkdir()
    for name in PACK_PARTS_THE_TEST_NEEDS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, clone / name, ignore=shutil.ignore_patterns("__pycache__", "weights"))
        else:
            shutil.copy2(source, clone / name)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q",
         "tests/test_security_inputs.py::test_names_resolve_only_inside_their_folders"],
        cwd=clone, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
