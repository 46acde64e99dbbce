"""The code base stays lint-clean (ruff), type-checks (mypy over both packages) and keeps its
import layers (import-linter)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def tool(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def test_ruff_is_clean():
    proc = subprocess.run(
        [tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_leaves_nothing_to_change():
    # One layout for the whole tree, so a diff shows only what changed: run `ruff format .`.
    proc = subprocess.run(
        [tool("ruff"), "format", "--check", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_over_both_packages():
    # scripts/typecheck.py: controller/ and exporter/ as the iscsi_ha packages, with mypy.ini.
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "typecheck.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_unexplained_type_ignores():
    # mypy.ini makes every ignore name its code and fails on unused ones; none is left in the
    # product code: an error is fixed, or its reason goes in mypy.ini for a whole package.
    hits = []
    for top in ("controller", "exporter"):
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    with open(path) as f:
                        hits += [
                            f"{path}:{i}" for i, line in enumerate(f, 1) if "type: ignore" in line
                        ]
    assert not hits


def test_import_layers():
    # .importlinter: model <- decide <- execute <- cycle <- daemon; only execute, cycle and
    # daemon reach systems/; the exporter reads snapshots only.
    proc = subprocess.run(
        [tool("lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
