"""Smoke test of the side-by-side switch benchmark (``bench/bench_switch.py``): one round of the
bare script, keepalived, iscsi-ha's failover and its switchover in the namespace lab, so the
benchmark the README's table comes from cannot rot. Its figures are not asserted (a benchmark, not
a timed test); that every method moved the storage and was measured is."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("tgtd", "iscsi-inq", "keepalived")),
        reason="needs tgt, libiscsi-bin and keepalived (scripts/setup-env.sh)",
    ),
]


def test_one_round_of_four_methods(tmp_path):
    out = tmp_path / "rows.json"
    methods = ["bare", "keepalived-vrrp3", "iscsi-ha-failover", "iscsi-ha-switchover"]
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench_switch.py"),
            "--rounds",
            "1",
            "--only",
            ",".join(methods),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert set(rows) == set(methods)
    # Each figure on its own: the outage (the client's probe) and the VIP-absent window (`ip
    # monitor` in each node) are two instruments, and under load they disagreed once in CI (VIP
    # absent 1.22 s for a 0.18 s outage), so no bound ties one to the other. The rounds' lines
    # go with a failure so a disagreement can be read.
    for name in methods:
        assert rows[name]["errors"] == [] and len(rows[name]["rows"]) == 1, (rows, res.stdout)
        row = rows[name]["rows"][0]
        assert 0 < row["outage"] < 10 and 0 <= row["vip_absent"] < 10, (name, row, res.stdout)
    assert 0 < rows["iscsi-ha-failover"]["rows"][0]["poolconf_to_vip"] < 10
    assert "| iscsi-ha-failover |" in res.stdout and "ratio to best anchor" in res.stdout
    # The switchover's own report came back with its phases, and the table shows them.
    (phases,) = rows["iscsi-ha-switchover"]["phases"]
    assert 0 < phases["release"] <= phases["total"] < 10, phases
    assert "iscsi-cfg switchover's own phases" in res.stdout
