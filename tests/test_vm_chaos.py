"""Chaos on real DRBD 8.4 (lab/chaos_vm.py): seeded schedules of controller kills (also
mid-promotion), replication-link cuts and pool-master moves on one booted VM pair, with the chaos
runner's invariant and data checkers. Every schedule must end with no invariant violation, every
acknowledged write reading back, and the pair converged (Connected, UpToDate, the master alone
serving)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from test_vm_drbd import _report, booted_pair  # noqa: E402

from lab import chaos_vm  # noqa: E402

pytestmark = pytest.mark.vm
SEED = 1


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    yield from booted_pair(tmp_path_factory, "vm-chaos", settle_limit=240)


def test_seeded_schedules_on_real_drbd(pair):
    lab, c = pair
    runner = chaos_vm.VmRunner(lab, c, SEED)
    outcomes = []
    for index in range(chaos_vm.SCHEDULES):
        faults = chaos_vm.draw_vm_schedule(SEED, index)
        outcome = runner.run(index, faults)
        print(chaos_vm.describe(outcome), flush=True)
        outcomes.append(outcome)
        if not outcome.converged:
            break  # the next schedule would start from a broken pair
    summary = chaos_vm.summary(outcomes)
    print(json.dumps(summary, indent=2))
    failed = [chaos_vm.describe(o) for o in outcomes if not o.ok]
    if failed:
        _report(lab)
    assert summary["schedules"] == chaos_vm.SCHEDULES, failed
    kinds = set(summary["faults_by_kind"])
    assert {"kill", "cut"} <= kinds and kinds & {"move", "kill-mid-move", "flap"}
    assert summary["invariant_violations"] == 0, failed
    assert summary["acknowledged_writes_lost"] == 0, failed
    assert summary["did_not_converge"] == 0, failed
    assert summary["acknowledged_writes"] > 0
    # Most samples must be judged, or the invariant checker saw little.
    assert summary["slow_samples_not_judged"] < summary["samples"] / 2, summary
