"""The chaos runner's checkers catch what they are there to catch (lab/chaos.py,
lab/chaos_probe.py): each invariant on hand-made readings, then live in the namespace lab --
a VIP bound on both nodes, a stranger's VIP (not a violation), the management network cut while
replication stays up, and a stale promotion that loses acknowledged writes (per-node backing
files)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # lab/ is imported from the repository root
    sys.path.append(str(REPO))

from lab.chaos import (  # noqa: E402
    FAULT_KINDS,
    MAX_SPAN,
    DataChecker,
    InvariantChecker,
    draw_schedule,
    parse_faults,
)
from lab.demo import NodeState  # noqa: E402

A, B = SimpleNamespace(name="node1"), SimpleNamespace(name="node2")
HOLDS = NodeState(1, ((1, (1,)),), "Primary")
EMPTY = NodeState(0, (), "Secondary")


def judge(s1, s2, s3, roles=None, span=0.0):
    checker = InvariantChecker(None)
    checker._check(A, B, s1, s2, s3, roles, span)
    return checker


def test_a_clean_move_is_no_violation():
    # A held it at the first reading and not at the third: it moved between, nothing to see.
    assert judge(HOLDS, HOLDS, EMPTY).violations == []
    assert judge(EMPTY, HOLDS, EMPTY, {"node1": "Secondary", "node2": "Primary"}).violations == []


def test_each_invariant_is_caught():
    both = judge(HOLDS, HOLDS, HOLDS, {"node1": "Primary", "node2": "Primary"}).violations
    assert any("DRBD Primary on both nodes" in v for v in both)
    assert any("VIP on both nodes" in v for v in both)
    assert any("serving target on both nodes" in v for v in both)
    from_secondary = NodeState(0, ((1, (1,)),), "Secondary")
    assert any(
        "serves the target from DRBD Secondary" in v
        for v in judge(from_secondary, EMPTY, from_secondary).violations
    )
    bare_vip = NodeState(1, (), "Primary")
    assert any(
        "VIP without a serving target" in v for v in judge(bare_vip, EMPTY, bare_vip).violations
    )
    assert any(
        "VIP twice" in v
        for v in judge(NodeState(2, ((1, (1,)),), "Primary"), EMPTY, EMPTY).violations
    )


def test_a_killed_tgtd_has_its_grace_and_a_slow_sample_is_not_judged():
    bare_vip = NodeState(1, (), "Primary")
    checker = InvariantChecker(None)
    checker.grace["node1"] = time.monotonic() + 60
    checker._check(A, B, bare_vip, EMPTY, bare_vip)
    assert checker.violations == []
    slow = judge(HOLDS, HOLDS, HOLDS, {"node1": "Primary", "node2": "Secondary"}, span=MAX_SPAN * 2)
    assert slow.violations == [] and slow.slow_samples == 1
    # ... but two Primaries in ONE reading of DRBD's state count however slow the sample.
    exact = judge(EMPTY, EMPTY, EMPTY, {"node1": "Primary", "node2": "Primary"}, span=MAX_SPAN * 2)
    assert len(exact.violations) == 1


def test_fault_specs_round_trip_and_every_kind_is_drawn():
    faults = [f for i in range(300) for f in draw_schedule(3, i)]
    assert {f.kind for f in faults} == set(FAULT_KINDS)
    text = "; ".join(f.spec() for f in faults[:40])
    assert parse_faults(text) == tuple(sorted(faults[:40], key=lambda f: f.at))
    with pytest.raises(ValueError, match="kinds: kill"):
        parse_faults("1 reboot node1")


# ---------------------------------------------------------------------------- live, in the lab

lab_only = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def _lab():
    from lab.demo import tgt_ports
    from lab.netlab import Lab

    return Lab(tgt_ports=tgt_ports())


def _serve(lab, node):
    from test_lab_topology import serve

    return serve(lab, node, lab.disk_path("iscsi1", node))


def _connected(lab, timeout=5.0):
    deadline = time.monotonic() + timeout
    while "cs:Connected" not in lab.node1.proc_drbd.read_text():
        assert time.monotonic() < deadline, lab.node1.proc_drbd.read_text()
        time.sleep(0.02)


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_the_cheap_readings_equal_the_tools_and_the_live_checker_catches_two_vips():
    from lab.chaos_probe import FastProbe
    from lab.demo import node_state
    from lab.netlab import VIP

    with _lab() as lab:
        probe = FastProbe(lab)
        try:
            for node in lab.nodes:
                assert node.drbdadm("up", "iscsi1").returncode == 0
            _connected(lab)
            assert lab.node1.drbdadm("primary", "iscsi1").returncode == 0
            for node in lab.nodes:  # nothing served yet
                assert probe.state(node) == node_state(lab, node)
            _serve(lab, lab.node1)
            for node in lab.nodes:
                assert probe.state(node) == node_state(lab, node)
            assert probe.state(lab.node1).holds

            checker = InvariantChecker(lab).start()
            lab.stranger_takes_vip()  # a third host's copy: the fault, not a violation
            time.sleep(0.5)
            assert checker.violations == [], checker.violations
            lab.stranger_releases_vip()
            lab.run(lab.node2, ["ip", "addr", "add", VIP, "dev", "eth0"], check=True)
            assert probe.state(lab.node2) == node_state(lab, lab.node2)
            time.sleep(0.5)
            period = checker.stop()
            assert checker.error is None
            assert any("VIP on both nodes" in v for v in checker.violations), checker.violations
            assert any(
                "node2 has the VIP without a serving target" in v for v in checker.violations
            )
            assert period < 0.05, period  # ~10 ms asked; generous for a loaded machine
        finally:
            probe.close()


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_the_management_cut_leaves_replication_and_the_client_path_up():
    from lab.demo import drbd_connected

    with _lab() as lab:
        for node in lab.nodes:
            assert node.drbdadm("up", "iscsi1").returncode == 0
        _connected(lab)
        assert lab.ping(lab.node1, lab.node2.addr)
        lab.cut_management()
        assert not lab.ping(lab.node1, lab.node2.addr, timeout=0.5)
        assert not lab.ping(lab.node2, lab.node1.addr, timeout=0.5)
        assert lab.ping("client", lab.node1.addr) and lab.ping("client", lab.node2.addr)
        time.sleep(0.5)  # the simulator's ticker runs every 0.1 s
        assert drbd_connected(lab)
        lab.restore_management()
        assert lab.ping(lab.node1, lab.node2.addr)


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_the_data_checker_catches_a_stale_promotion():
    """The deliberately broken case: node2 is cut off, node1 acknowledges more writes, then node2
    is promoted and serves anyway (what a controller without #13's rule would do)."""
    from test_lab_topology import unserve

    with _lab() as lab:
        for node in lab.nodes:
            assert node.drbdadm("up", "iscsi1").returncode == 0
        _connected(lab)
        assert lab.node1.drbdadm("primary", "iscsi1").returncode == 0
        pid1 = _serve(lab, lab.node1)
        data = DataChecker(lab, "stale-test").start()
        deadline = time.monotonic() + 60
        while len(data.acked) < 3:
            assert time.monotonic() < deadline, "no write acknowledged"
            time.sleep(0.05)
        before = len(data.acked)  # acknowledged before the cut began: node2 must have these
        lab.cut_link(lab.node2)
        cut_at = len(data.acked)
        while len(data.acked) < cut_at + 3:
            assert time.monotonic() < deadline, "no write acknowledged after the cut"
            time.sleep(0.05)
        data.stop()
        unserve(lab, lab.node1, pid1)
        assert lab.node1.drbdadm("secondary", "iscsi1").returncode == 0
        assert lab.node2.drbdadm("primary", "iscsi1").returncode == 0  # stale, and promoted
        # The client reaches node2 again; DRBD meets two data generations (split brain) and
        # copies nothing.
        lab.restore_link(lab.node2)
        _serve(lab, lab.node2)
        lost = data.verify()
        # Every block acknowledged before the cut reads back; the later ones are gone.
        assert lost, "the stale promotion went unnoticed"
        assert not lost[0].startswith("cannot read"), (lost, lab.client_probe())
        lost_lbas = {int(text.split()[2]) for text in lost}
        assert not lost_lbas & set(data.acked[:before])
        assert len(lost_lbas) >= 2


def test_a_cycle_held_by_tgtds_back_off_does_not_end_the_grace(tmp_path):
    """Schedule 4 of seed 1 failed on this: tgtd killed twice in a second, the controller's
    restart back-off held the second restart for ~2 s, and the grace ended after two cycles that
    had not been allowed to restart it."""
    from lab.chaos import BACKOFF_HELD, Runner

    node = SimpleNamespace(name="node1", status_file=tmp_path / "status")
    node.status_file.write_text("LAST CYCLE: ok: no action\n")
    runner = Runner(SimpleNamespace(node1=node), seed=1, converge=1.0)
    checker = runner.checker = InvariantChecker(None)
    runner._grace_until_repaired(node)

    def cycle(message):
        time.sleep(0.2)  # the watcher polls every 50 ms
        node.status_file.write_text(f"LAST CYCLE: {message}\n")

    for _ in range(3):
        cycle(f"held: {BACKOFF_HELD} 2s (back-off)")
    time.sleep(0.2)
    assert checker.grace["node1"] == float("inf")  # still the fault's own doing
    cycle("ok: started tgtd, target serving: host is pool master")
    cycle("ok: no action: host is pool master")
    deadline = time.monotonic() + 5
    while checker.grace["node1"] == float("inf") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checker.grace["node1"] < time.monotonic() + 1  # two real cycles: the grace ends
    checker._stop.set()


def test_cycles_while_the_kill_is_still_being_done_do_not_end_the_grace(tmp_path):
    """Schedule 265 of seed 1 (load 20): finding and killing tgtd took seconds, the controller
    finished two cycles meanwhile (tgtd still alive), and those ended the grace before the
    controller had seen the kill. Cycles now count from when the kill has been done."""
    from lab.chaos import Runner

    node = SimpleNamespace(name="node1", status_file=tmp_path / "status")
    node.status_file.write_text("LAST CYCLE: ok: no action\n")
    runner = Runner(SimpleNamespace(node1=node), seed=1, converge=1.0)
    checker = runner.checker = InvariantChecker(None)

    def slow_kill():
        for _ in range(3):  # cycles that still saw tgtd
            time.sleep(0.2)
            node.status_file.write_text("LAST CYCLE: ok: no action: host is pool master\n")
        time.sleep(0.2)

    runner._grace_until_repaired(node, slow_kill)
    time.sleep(0.3)
    assert checker.grace["node1"] == float("inf")
    for _ in range(2):
        time.sleep(0.2)
        node.status_file.write_text("LAST CYCLE: ok: started tgtd, target serving\n")
    deadline = time.monotonic() + 5
    while checker.grace["node1"] == float("inf") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checker.grace["node1"] < time.monotonic() + 1
    checker._stop.set()


def test_a_reading_that_times_out_is_not_yet_converged():
    """A shard of the full run stopped on `ip addr` taking > 5 s (load 53) while it waited for
    convergence; that reading is "not yet", and the convergence bound decides."""
    import subprocess

    from lab.chaos import patient

    calls = []

    def slow():
        calls.append(1)
        if len(calls) < 3:
            raise subprocess.TimeoutExpired(["ip", "addr"], 5)
        return True

    check = patient(slow)
    assert [check(), check(), check()] == [False, False, True]


def test_an_earlier_kills_grace_does_not_end_a_later_ones(tmp_path):
    """Schedule 4 of seed 1: tgtd killed twice on one node 0.8 s apart; the first kill's watcher
    saw its two cycles after the second kill and ended the grace the second still needed."""
    from lab.chaos import Runner

    node = SimpleNamespace(name="node1", status_file=tmp_path / "status")
    node.status_file.write_text("LAST CYCLE: ok: no action\n")
    runner = Runner(SimpleNamespace(node1=node), seed=1, converge=1.0)
    checker = runner.checker = InvariantChecker(None)

    def cycle():  # as the controller writes it: renamed into place, one change of mtime
        time.sleep(0.2)
        tmp = tmp_path / "status.tmp"
        tmp.write_text(f"LAST CYCLE: ok {time.monotonic()}\n")
        os.replace(tmp, node.status_file)

    runner._grace_until_repaired(node)  # the first kill
    cycle()
    runner._grace_until_repaired(node)  # the second, before the first's two cycles
    cycle()  # the first's second cycle, the second's first
    time.sleep(0.3)
    assert checker.grace["node1"] == float("inf")
    cycle()
    deadline = time.monotonic() + 5
    while checker.grace["node1"] == float("inf") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checker.grace["node1"] < time.monotonic() + 1
    checker._stop.set()


def test_a_busy_read_only_remount_is_tried_again_not_a_crash(tmp_path):
    """`mount -o remount,ro` fails with status 32 while a file there is open for writing; a
    shard of a full run stopped on it. The fault tries again for a moment."""
    import subprocess

    from lab.chaos import Runner

    tries = []

    def remount(path, writable):
        tries.append(writable)
        if len(tries) < 3:
            raise subprocess.CalledProcessError(32, ["mount", "-o", "remount,ro", str(path)])

    node = SimpleNamespace(name="node1", state_dir=tmp_path)
    lab = SimpleNamespace(node1=node, remount=remount)
    runner = Runner(lab, seed=1, converge=1.0)
    runner._read_only(node, True)
    assert tries == [False, False, False] and runner.read_only == {"node1"}
