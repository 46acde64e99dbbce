"""The code base stays lint-clean (ruff) and the pure modules type-check (mypy)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
# The pure core and the adapters: what a reader most needs to trust.
TYPED = [
    "controller/model.py", "controller/decide.py", "controller/execute.py", "controller/cycle.py",
    "controller/state.py", "controller/statusfile.py", "controller/config.py",
    "controller/daemon.py", "controller/ledger.py", "controller/peer.py",
    "controller/systems/drbd/", "controller/systems/target.py", "controller/systems/vip.py",
    "controller/systems/tgt.py", "controller/systems/lio.py",
    "controller/systems/pool.py", "controller/systems/sr.py", "controller/systems/xenapi.py",
    "controller/systems/filewatch.py",
]


def tool(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def test_ruff_is_clean():
    proc = subprocess.run([tool("ruff"), "check", "."], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_on_the_core():
    proc = subprocess.run([tool("mypy"), "--ignore-missing-imports", *TYPED], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
