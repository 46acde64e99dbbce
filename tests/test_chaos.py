"""The chaos runner (lab/chaos.py): schedules are reproducible, blocks self-describing, and the
CI subset -- 50 seeded schedules in the namespace lab -- ends with no violation, no lost write and
every schedule converged."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.chaos import BLOCK, FAULT_KINDS, MOVES, block_for, draw_schedule

ROOT = Path(__file__).resolve().parent.parent
CI_SCHEDULES = 50


def test_schedules_are_reproducible_and_cover_every_fault():
    first = [draw_schedule(7, i) for i in range(200)]
    assert first == [draw_schedule(7, i) for i in range(200)]
    assert first != [draw_schedule(8, i) for i in range(200)]
    kinds = {f.kind for faults in first for f in faults}
    assert kinds == set(FAULT_KINDS)
    for faults in first:
        assert 1 <= len(faults) <= 4 and list(faults) == sorted(faults, key=lambda f: f.at)
        cut = [f for f in faults if f.kind == "cut"]
        moves = [f for f in faults if f.kind in MOVES]
        assert not (cut and moves), faults  # a move during a cut is a split brain by design


def test_blocks_name_themselves_and_differ():
    a, b = block_for("1:2", 5), block_for("1:2", 6)
    assert len(a) == len(b) == BLOCK and a != b and block_for("1:3", 5) != a
    assert b"lba 5" in a


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_ci_subset_of_chaos_schedules(tmp_path):
    summary = tmp_path / "chaos.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab.chaos",
            "--seed",
            "1",
            "--schedules",
            str(CI_SCHEDULES),
            "--out",
            str(tmp_path / "logs"),
            "--json",
            str(summary),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=880,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    print(res.stdout[-4000:])
    data = json.loads(summary.read_text())
    assert data["schedules"] == CI_SCHEDULES
    assert data["invariant_violations"] == 0, res.stdout[-4000:]
    assert data["acknowledged_writes_lost"] == 0, res.stdout[-4000:]
    assert data["did_not_converge"] == 0, res.stdout[-4000:]
    assert data["acknowledged_writes"] > 0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


# Schedules that failed once, kept as they failed (``--faults``), each with what it found.
REGRESSIONS = {
    # The controller's wall clock stepped back an hour, then its tgtd was killed: APScheduler
    # slept until the old time, so no cycle restarted tgtd and the VIP stayed without a target
    # (fixed in controller/daemon.py: ClockStepGuard).
    "clock-step-back": "0.5 clock-jump node1 -3600; 2.5 kill-tgtd node1",
    # Both pool.conf files said master while the holder's tgtd was killed: the two-master hold
    # restarted nothing, so the VIP stayed without a target until the split ended (seed 1
    # schedule 286, shrunk; fixed in controller/decide.py: keep_serving).
    "two-masters-tgtd-killed": "3.58 both-master node1 2.1; 4.02 kill-tgtd node1 0",
}


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_regression_schedules(tmp_path):
    """Every kept schedule, one after another in one lab (a lab costs more than a schedule)."""
    summary = tmp_path / "chaos.json"
    names = sorted(REGRESSIONS)
    given = [arg for name in names for arg in ("--faults", REGRESSIONS[name])]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab.chaos",
            *given,
            "--out",
            str(tmp_path / "logs"),
            "--json",
            str(summary),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    print(res.stdout[-3000:])
    data = json.loads(summary.read_text())
    assert data["schedules"] == len(names)
    assert data["failed_schedules"] == [], [names[i] for i in data["failed_schedules"]]
    assert data["invariant_violations"] == 0, res.stdout[-3000:]
    assert data["did_not_converge"] == 0, res.stdout[-3000:]
    assert data["acknowledged_writes_lost"] == 0, res.stdout[-3000:]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
