"""Two real controllers in the namespace lab: the behaviour of docs/design.md §3-6 end to end.

Everything here is real except DRBD (``lab/drbdsim``) and xapi (``tests/xapi_fake.py``): the
controllers are ``iscsi-ha run`` processes, the target is tgtd, the VIP is ``ip addr`` with
``arping``, the client is libiscsi's ``iscsi-inq`` and a ctypes block writer, Prometheus is the
Debian binary. The nodes are observed from the outside with the system's own tools
(``ip -o addr``, ``tgtadm --op show``, the simulator's state), not through the controllers, so a
controller that misreports cannot make a test pass.

Layout: one lab shared by the module for the scenarios that leave it as they found it (each test
starts from a verified baseline: node1 pool master and holder, both controllers automatic; the
``lab`` fixture restores it), and a fresh lab (~0.1 s to build, ~5 s to converge) for the ones that
break things on purpose: a SIGKILLed controller, a stranger holding the VIP, a split brain.

Every wait has a deadline and fails with both nodes' state, their ``iscsi-cfg status`` and the
tails of the controller logs. Measured outages are printed and written to the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, Optional

import pytest

from lab import prometheus as lprom
from lab.demo import (
    ClientProbe,
    Sampler,
    cfg,
    control_status,
    converged_on,
    diagnostics,
    drbd_roles,
    holds_alone,
    layout,
    move_pool_master,
    node_metrics,
    node_state,
    quiet,
    start_cluster,
    targets_on,
    tgt_ports,
    tgtd_pids,
    vip_count,
    wait_for,
)
from lab.drbdsim import SB_UNRESOLVED
from lab.netlab import VIP, Lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        not all(
            shutil.which(t) or os.path.exists(f"/usr/sbin/{t}")
            for t in ("tgtd", "tgtadm", "arping", "iscsi-inq")
        ),
        reason="needs tgt, iputils-arping and libiscsi-bin",
    ),
]

CONVERGE = 30.0  # seconds: a fresh lab's first convergence (measured ~5 s)
MOVE = 20.0  # seconds: storage following a change (measured 0.8-3.2 s)
OUTAGE_BOUND = 10.0  # seconds: generous; the measured figures are printed
MIN_SAMPLES = 10  # fewer samples of both nodes prove nothing about "never on both"


def m(node, name: str, **labels: str):
    """One metric of ``node``'s /metrics, read now (None when absent or not answering yet)."""
    try:
        return lprom.metric(node_metrics(node), name, **labels)
    except OSError:
        return None


def status(node) -> Dict:
    doc = control_status(node)
    assert doc is not None, f"{node.name}'s controller does not answer on its control socket"
    return doc


def last(node) -> Dict:
    """The last cycle as the controller reports it ({} while it does not answer yet)."""
    return (control_status(node) or {}).get("last") or {}


def cycles_done(node) -> int:
    """How many cycles ``node``'s controller has finished (0 while it does not answer)."""
    counters = (control_status(node) or {}).get("counters") or {}
    return sum(counters.get("cycles", {}).values())


def wait_cycles(
    nodes, count: int, lab: Lab, sampler: Optional[Sampler] = None, timeout: float = 20.0
) -> None:
    """Until each controller in ``nodes`` has finished ``count`` more cycles (and ``sampler``,
    if given, has enough samples to prove anything): "a few more cycles" as a condition instead
    of a sleep that guesses how long they take. The first of them may have begun before the
    call: to see a whole cycle after an event, ask for two."""
    start = {n.name: cycles_done(n) for n in nodes}
    wait_for(
        f"{count} more cycles on {', '.join(start)}",
        lambda: (
            all(cycles_done(n) >= start[n.name] + count for n in nodes)
            and (sampler is None or len(sampler.samples) >= MIN_SAMPLES)
        ),
        timeout,
        lab,
    )


def observed_after(sampler: Sampler, probe: ClientProbe, lab: Lab) -> None:
    """Until the sampler and the client probe have each looked once more, after this moment."""
    now = time.monotonic()
    wait_for(
        "a sample and a successful probe after the recovery",
        lambda: (
            any(s.t >= now for s in list(sampler.samples))
            and probe.ok_since(now)
            and len(sampler.samples) >= MIN_SAMPLES
        ),
        10,
        lab,
    )


def record(tmp_path: Path, record_property, name: str, report, extra: Dict) -> None:
    """Print a measured figure and keep it in the test's tmp dir (and in the JUnit XML)."""
    doc = {
        "outage_ms": round(1000 * report.outage),
        "probes": report.probes,
        "failed_probes": report.failed,
        "probe_period_ms": round(1000 * report.typical_gap),
        **extra,
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    record_property(name, json.dumps(doc))
    print(f"\n{name}: {report.text()} {extra}")


def no_overlap(sampler: Sampler, lab: Lab) -> None:
    assert sampler.error is None, f"the sampler failed: {sampler.error!r}"
    assert len(sampler.samples) >= MIN_SAMPLES, (
        f"too few samples to prove anything: {sampler.summary()}"
    )
    overlaps = sampler.overlaps()
    assert not overlaps, (
        f"on both nodes at once: {overlaps[:5]} ({sampler.summary()})\n{diagnostics(lab)}"
    )


# --------------------------------------------------------------------------------------------
# The shared lab
# --------------------------------------------------------------------------------------------


class Shared:
    def __init__(self, lab: Lab, prom: lprom.Prometheus, converge_s: float) -> None:
        self.lab = lab
        self.prom = prom
        self.converge_s = converge_s


@pytest.fixture(scope="module")
def shared():
    with Lab(tgt_ports=tgt_ports()) as lab:
        t0 = time.monotonic()
        start_cluster(lab)
        prom = lprom.start_prometheus(lab)  # early: its discovery takes ~5 s to first scrape
        wait_for("node1 holds the storage after start", converged_on(lab, lab.node1), CONVERGE, lab)
        yield Shared(lab, prom, time.monotonic() - t0)


def restore_baseline(lab: Lab) -> None:
    """node1 pool master and holder, node2 standby, both automatic, both quiet."""
    n1, n2 = lab.nodes
    move_pool_master(lab, n1)
    # A test that failed half-way may leave manual mode on: hand the roles back, then leave it.
    for node, role in ((n2, "become-secondary"), (n1, "become-primary")):
        if (status(node).get("manual") or {}).get("enabled"):
            cfg(node, role)
    for node in lab.nodes:
        if (status(node).get("manual") or {}).get("enabled"):
            res = cfg(node, "manual-mode-disable")
            assert res.rc == 0, f"cannot restore the baseline on {node.name}: {res.text}"
    wait_for("baseline: node1 holds the storage alone", converged_on(lab, n1), MOVE, lab)
    wait_for("baseline: both controllers quiet", lambda: all(map(quiet, lab.nodes)), 10, lab)


@pytest.fixture
def lab(shared) -> Lab:
    restore_baseline(shared.lab)
    return shared.lab


# --------------------------------------------------------------------------------------------
# Scenarios on the shared lab
# --------------------------------------------------------------------------------------------


def test_initial_convergence_master_holds_everything_slave_nothing(shared, lab):
    n1, n2 = lab.nodes
    print(f"\nconvergence from start: {shared.converge_s:.1f} s")
    states = layout(lab)
    assert states["node1"].holds, states["node1"].describe()
    assert states["node1"].targets == ((1, (1,)),)  # one target, its one LUN
    assert states["node2"].empty, states["node2"].describe()
    # The standby keeps an empty tgtd so that a promotion only configures the target.
    assert len(tgtd_pids(n2)) == 1 and targets_on(n2) == ()
    assert lab.client_probe().ok

    # The controllers' own account agrees, in status and in metrics.
    s1, s2 = status(n1), status(n2)
    assert s1["last"]["desired"] == "primary" and s1["last"]["message"] == (
        "no action: host is pool master"
    )
    assert s2["last"]["desired"] == "secondary"
    assert s2["last"]["message"].startswith("no action: host is pool slave")
    assert m(n1, "iscsi_ha_drbd_role", resource="iscsi1", role="Primary") == 1
    assert m(n1, "iscsi_ha_target_serving") == 1 and m(n1, "iscsi_ha_vip_local") == 1
    assert m(n2, "iscsi_ha_drbd_role", resource="iscsi1", role="Secondary") == 1
    assert m(n2, "iscsi_ha_target_serving") == 0 and m(n2, "iscsi_ha_vip_local") == 0
    assert shared.converge_s < CONVERGE


def test_pool_master_change_storage_follows_and_data_survives(lab, tmp_path, record_property):
    n1, n2 = lab.nodes
    block = os.urandom(512)
    lab.client_write(block, lba=11)
    with ClientProbe(lab) as probe, Sampler(lab) as sampler:
        wait_for("the client probe runs", lambda: probe.ok_since(0), 5)
        t = probe.mark()
        move_pool_master(lab, n2)
        follow = wait_for(
            "node2 holds the storage alone", lambda: holds_alone(lab, n2), MOVE, lab, period=0.01
        )
        wait_for("the client reads the LUN again", lambda: probe.ok_since(t + follow), 10, lab)
        observed_after(sampler, probe, lab)
    report = probe.report()
    record(
        tmp_path,
        record_property,
        "failover_outage",
        report,
        {"storage_followed_ms": round(1000 * follow)},
    )

    no_overlap(sampler, lab)
    # The order of the move as seen from outside: node1 let go of each before node2 took it.
    changes = sampler.transitions(t)
    for prop in Sampler.PROPS:
        off = [dt for dt, node, p, v in changes if node == "node1" and p == prop and not v]
        on = [dt for dt, node, p, v in changes if node == "node2" and p == prop and v]
        assert off and on and max(off) < min(on), (prop, changes)
    assert lab.client_read(lba=11) == block
    assert report.outage < OUTAGE_BOUND, report.text()
    assert status(n2)["last"]["desired"] == "primary"


def test_planned_switch_through_manual_mode(lab, tmp_path, record_property):
    n1, n2 = lab.nodes
    # Role commands need manual mode; refused (exit 1) without it.
    res = cfg(n1, "become-secondary")
    assert res.rc == 1 and "manual mode" in res.text, res.text
    assert holds_alone(lab, n1)

    for node in (n1, n2):
        res = cfg(node, "manual-mode-enable")
        assert res.rc == 0, res.text
    block = os.urandom(512)
    lab.client_write(block, lba=12)
    with ClientProbe(lab) as probe, Sampler(lab) as sampler:
        wait_for("the client probe runs", lambda: probe.ok_since(0), 5)
        t = probe.mark()
        sec = cfg(n1, "become-secondary")
        pri = cfg(n2, "become-primary")
        commands = time.monotonic() - t
        assert sec.rc == 0 and pri.rc == 0, (sec.text, pri.text)
        wait_for("node2 holds the storage alone", lambda: holds_alone(lab, n2), 10, lab)
        wait_for("the client reads the LUN again", lambda: probe.ok_since(t + commands), 10, lab)
        observed_after(sampler, probe, lab)
    report = probe.report()
    record(
        tmp_path,
        record_property,
        "planned_switch_outage",
        report,
        {"commands_ms": round(1000 * commands)},
    )
    no_overlap(sampler, lab)
    assert report.outage < OUTAGE_BOUND, report.text()
    assert lab.client_read(lba=12) == block

    # Safety in manual mode: the old holder cannot take the storage back while node2 is Primary.
    res = cfg(n1, "become-primary")
    assert res.rc == 1 and "peer is Primary" in res.text, res.text
    # Leaving manual mode needs the storage role to equal the native one (pool role): node2 is a
    # pool slave holding the storage, so it is refused, with what to do.
    res = cfg(n2, "manual-mode-disable")
    assert res.rc == 1 and "native role secondary" in res.text, res.text
    # Nothing moved meanwhile, in manual mode, even with the pool master moving under it...
    move_pool_master(lab, n2)
    wait_cycles(lab.nodes, 2, lab)  # a whole cycle on each after the move
    assert holds_alone(lab, n2), diagnostics(lab)
    # ...after which both may leave manual mode, in any order, and nothing moves either.
    for node in (n1, n2):
        res = cfg(node, "manual-mode-disable")
        assert res.rc == 0, res.text
    wait_for("both quiet in automatic mode", lambda: all(map(quiet, lab.nodes)), 10, lab)
    assert holds_alone(lab, n2)
    assert all(not status(n)["manual"]["enabled"] for n in lab.nodes)


def test_broken_or_missing_pool_conf_holds_and_changes_nothing(lab):
    n1, n2 = lab.nodes
    before = {n.name: node_metrics(n) for n in lab.nodes}
    n1.pool_conf.write_text("broken")
    n2.pool_conf.unlink()
    with Sampler(lab) as sampler:
        wait_for(
            "both controllers hold on an unknown pool role",
            lambda: (
                all(m(n, "iscsi_ha_pool_role", role="unknown") == 1 for n in lab.nodes)
                and all(last(n).get("outcome") == "held" for n in lab.nodes)
            ),
            10,
            lab,
        )
        wait_cycles(lab.nodes, 2, lab, sampler)  # a few more cycles
    no_overlap(sampler, lab)
    # Every sample saw the baseline: node1 holding, node2 standby.
    for s in sampler.samples:
        assert s.first.holds and s.third.holds and s.second.empty, (s.first, s.second)
    for node in lab.nodes:
        doc = status(node)
        assert doc["last"]["desired"] is None
        assert "pool role unknown" in doc["last"]["message"], doc["last"]["message"]
        assert "holding, nothing changed" in doc["last"]["message"]
        after = node_metrics(node)
        actions = {k: v for k, v in after.items() if k.startswith("iscsi_ha_actions_total")}
        assert actions == {
            k: v for k, v in before[node.name].items() if k.startswith("iscsi_ha_actions_total")
        }, node.name
        assert after['iscsi_ha_cycles_total{result="held"}'] >= 2
    text = cfg(n1, "status").text
    assert "broken" in text, text
    assert lab.client_probe().ok


def test_prometheus_scrapes_both_and_sees_one_primary(shared, lab):
    prom = shared.prom
    prom.wait_ready(lab)
    prom.wait_targets_up(2, timeout=20)
    targets = prom.targets()
    assert sorted(t["labels"]["node"] for t in targets) == ["node1", "node2"]
    assert {t["labels"]["cluster"] for t in targets} == {prom.extra["cluster"]}
    wait_for(
        "Prometheus has both nodes' DRBD role series",
        lambda: prom.query_value('count(iscsi_ha_drbd_role{role="Primary"})') == 2,
        10,
        period=0.25,
    )
    assert prom.query_value('sum(iscsi_ha_drbd_role{role="Primary"})') == 1
    holders = prom.query('iscsi_ha_drbd_role{role="Primary"} == 1')
    assert [s["metric"]["node"] for s in holders] == ["node1"]
    # Reachable from this machine's loopback, through the forwarder.
    assert prom.local_url.startswith("http://127.0.0.1:")


# --------------------------------------------------------------------------------------------
# Scenarios with a lab of their own
# --------------------------------------------------------------------------------------------

SLOW_WRAPPER = """#!/bin/sh
# test: while {flag} exists, `{match}` waits 2 s first, so that a SIGKILL of the controller lands
# in the middle of the promotion; the command itself still runs (an orphan finishing its work).
case " $* " in
  *" {match} "*)
    if [ -e '{flag}' ]; then
      touch '{entered}'; sleep 2; '{real}' "$@"; rc=$?; touch '{done}'; exit $rc
    fi ;;
esac
exec '{real}' "$@"
"""


@pytest.mark.parametrize("step", ["target", "vip"])
def test_controller_sigkilled_during_a_promotion_converges_after_restart(step):
    with Lab(tgt_ports=tgt_ports()) as lab:
        n1, n2 = lab.nodes
        tool, key, match = {
            "target": ("tgtadm", ("target", "tgtadm"), "--op new"),
            "vip": ("ip", ("vip", "ip"), "addr add"),
        }[step]
        real = shutil.which(tool) or f"/usr/sbin/{tool}"
        flag, entered, done = (n2.dir / f"slow-{step}.{x}" for x in ("flag", "entered", "done"))
        wrapper = n2.dir / f"slow-{tool}"
        wrapper.write_text(
            SLOW_WRAPPER.format(flag=flag, match=match, entered=entered, done=done, real=real)
        )
        wrapper.chmod(0o755)
        pids = start_cluster(lab, configs={"node2": {key[0]: {key[1]: str(wrapper)}}})
        wait_for("node1 holds the storage", converged_on(lab, n1), CONVERGE, lab)
        block = os.urandom(512)
        lab.client_write(block, lba=3)

        flag.touch()
        move_pool_master(lab, n2)
        wait_for(
            f"node2's promotion reaches the {step} step", entered.exists, MOVE, lab, period=0.01
        )
        lab.kill_process(pids["node2"])  # SIGKILL, mid-promotion
        flag.unlink()
        mid = node_state(lab, n2)
        assert mid.primary and mid.vip == 0, mid.describe()
        assert bool(mid.targets) == (step == "vip"), mid.describe()
        assert node_state(lab, n1).empty  # node1 had demoted before node2 promoted

        lab.start_controller(n2)  # at once: the orphaned command is still in flight
        wait_for("the orphaned command finished", done.exists, 10, lab)
        wait_for("node2 holds the storage after the restart", converged_on(lab, n2), MOVE, lab)
        wait_for("node2 quiet", lambda: quiet(n2), 10, lab)
        wait_cycles(lab.nodes, 2, lab)  # one more whole cycle after everything settled

        # Nothing doubled: one target with one LUN, the VIP once, one tgtd, one Primary.
        assert targets_on(n2) == ((1, (1,)),), targets_on(n2)
        assert vip_count(n2) == 1 and vip_count(n1) == 0
        assert len(tgtd_pids(n2)) == 1, tgtd_pids(n2)
        assert drbd_roles(lab) == {"node1": "Secondary", "node2": "Primary"}
        assert targets_on(n1) == ()
        assert lab.client_read(lba=3) == block


def test_a_third_namespace_holding_the_vip_blocks_the_bind():
    with Lab(tgt_ports=tgt_ports()) as lab:
        n1 = lab.node1
        # The client namespace takes the VIP first: a stranger on the storage network.
        lab.run("client", ["ip", "addr", "add", VIP, "dev", "eth0"], check=True)
        # Only node1's controller runs (node2 is powered off): no peer that is known to have let
        # go of the VIP, so node1 must probe before binding (docs/design.md §4 step 3). Alone
        # from the start, nothing proves node1 has the newest data: this test accepts that after
        # 1 s (promotion.unproven_wait) to get to the VIP check.
        start_cluster(
            lab,
            nodes=[n1],
            config={"vip": {"probe_interval": 1}, "promotion": {"unproven_wait": 1}},
        )
        wait_for(
            "node1 holds back",
            lambda: "another host answers for VIP" in last(n1).get("message", ""),
            CONVERGE,
            lab,
        )
        assert m(n1, "iscsi_ha_vip_conflict") == 1
        st = node_state(lab, n1)
        # With the peer unreachable, whoever answers may be the old holder behind a partition:
        # nothing is promoted or served, and no VIP is bound.
        assert not st.primary and not st.serving and st.vip == 0, st.describe()
        cycle = last(n1)
        assert cycle["outcome"] == "held"
        assert "the peer is unreachable" in cycle["message"], cycle["message"]
        assert "CONFLICT" in cfg(n1, "status").text
        assert m(n1, "iscsi_ha_vip_local") == 0

        wait_cycles([n1], 2, lab)  # it keeps refusing, cycle after cycle
        assert vip_count(n1) == 0 and m(n1, "iscsi_ha_vip_conflict") == 1

        # The stranger goes: node1 binds (after a probe that nobody answers, ~2 s).
        lab.run("client", ["ip", "addr", "del", VIP, "dev", "eth0"], check=True)
        wait_for("node1 binds the VIP", lambda: vip_count(n1) == 1, 15, lab)
        wait_for("node1 reports no conflict", lambda: m(n1, "iscsi_ha_vip_conflict") == 0, 10, lab)

        # A stranger takes the VIP while node1 holds it: the holder's periodic probe
        # (vip.probe_interval, 1 s here) notices; the holder keeps it and reports.
        lab.run("client", ["ip", "addr", "add", VIP, "dev", "eth0"], check=True)
        wait_for("the holder notices", lambda: m(n1, "iscsi_ha_vip_conflict") == 1, 10, lab)
        assert "CONFLICT" in cfg(n1, "status").text
        assert vip_count(n1) == 1


def test_link_cut_never_two_primaries_then_split_brain_is_reported_not_resolved():
    with Lab(tgt_ports=tgt_ports()) as lab:
        n1, n2 = lab.nodes
        pids = start_cluster(lab)
        wait_for("node1 holds the storage", converged_on(lab, n1), CONVERGE, lab)

        # 1) The standby loses the replication link (its port on the switch goes down). The pool
        # roles do not change, so nothing may move: node2 must not promote (peer Unknown).
        with Sampler(lab) as sampler:
            lab.cut_link(n2)
            wait_for(
                "node2 sees the peer gone",
                lambda: (
                    m(n2, "iscsi_ha_drbd_connection_state", resource="iscsi1", state="WFConnection")
                    == 1
                ),
                10,
                lab,
            )
            wait_cycles(lab.nodes, 3, lab, sampler)  # three more cycles apart
            assert lab.client_probe().ok  # the client still reaches node1
        no_overlap(sampler, lab)
        assert all(not s.second.primary and s.first.holds for s in sampler.samples)

        # 2) Apart, node2 is made Primary behind the controllers' back (an operator on the
        # isolated host; the controller, stopped for it, never demotes on SIGTERM). Both sides
        # have now written apart: the reconnect must find a split brain.
        lab.stop_process(pids["node2"])
        for cmd in ("primary", "secondary"):
            res = n2.drbdadm(cmd, "iscsi1")
            assert res.returncode == 0, res.stderr
        lab.start_controller(n2)
        wait_for("node2's controller is back", lambda: quiet(n2), 10, lab)
        lab.restore_link(n2)

        def split_seen() -> bool:
            return all(m(n, "iscsi_ha_drbd_split_brain", resource="iscsi1") == 1 for n in lab.nodes)

        wait_for("both controllers report the split brain", split_seen, 15, lab)
        for node in lab.nodes:
            assert SB_UNRESOLVED in lab.drbd.kernel_log(node.name)  # the simulator said so
            res = status(node)["last"]["observation"]["resources"][0]
            assert res["split_brain"] and res["connection"] == "StandAlone", res
            assert "SPLIT BRAIN" in cfg(node, "status").text

        # 3) Not resolved automatically: cycles go on, nothing reconnects or discards data.
        with Sampler(lab) as sampler:
            wait_cycles(lab.nodes, 3, lab, sampler)
        no_overlap(sampler, lab)
        assert split_seen()
        for node in lab.nodes:
            assert "manually solved" not in lab.drbd.kernel_log(node.name)
            assert (
                m(node, "iscsi_ha_drbd_connection_state", resource="iscsi1", state="StandAlone")
                == 1
            )
        assert holds_alone(lab, n1), diagnostics(lab)  # the master kept serving throughout
        assert lab.client_probe().ok


# --------------------------------------------------------------------------------------------
# The measuring instruments themselves: they can see what the tests above rely on them to see
# --------------------------------------------------------------------------------------------


def sampled(sampler: Sampler, what: str, check) -> None:
    """Until a sample that began after this moment shows ``what``."""
    now = time.monotonic()
    wait_for(
        f"the sampler sees {what}",
        lambda: any(s.t >= now and check(s) for s in list(sampler.samples)),
        5,
    )


def test_the_sampler_catches_an_overlap_and_the_probe_an_outage():
    with Lab(tgt_ports=tgt_ports()) as lab:  # no controllers: the test does it all by hand
        n1, n2 = lab.nodes
        with Sampler(lab) as sampler:
            wait_for("samples", lambda: len(sampler.samples) >= 3, 5)
            lab.run(n1, ["ip", "addr", "add", VIP, "dev", n1.interface], check=True)
            sampled(sampler, "node1's VIP", lambda s: s.first.vip and s.third.vip)
            lab.run(n2, ["ip", "addr", "add", VIP, "dev", n2.interface], check=True)
            sampled(
                sampler, "the VIP on both", lambda s: s.first.vip and s.second.vip and s.third.vip
            )
            lab.run(n2, ["ip", "addr", "del", VIP, "dev", n2.interface], check=True)
            sampled(sampler, "node2 without the VIP", lambda s: not s.second.vip)
        props = {p for _, p in sampler.overlaps()}
        assert props == {"vip"}, sampler.overlaps()
        changes = [(node, p, v) for _, node, p, v in sampler.transitions(sampler.samples[0].t)]
        assert changes == [
            ("node1", "vip", True),
            ("node2", "vip", True),
            ("node2", "vip", False),
        ], changes

        with ClientProbe(lab) as probe:  # nothing serves the LUN: every probe fails
            wait_for("probes", lambda: len(probe.records) >= 3, 5)
        report = probe.report()
        assert report.failed == report.probes >= 3 and report.outage > 0


def test_probe_report_arithmetic():
    class Stub:
        client = "none"

        @staticmethod
        def lun_url() -> str:
            return "iscsi://10.99.0.3/iqn/1"

    probe = ClientProbe(Stub())  # type: ignore[arg-type]
    # ok every 50 ms, then three failures, then ok again: no success from 1.02 to 1.80
    probe.records = [(s, s + 0.02, 0) for s in (0.90, 0.95, 1.00)]
    probe.records += [(1.05, 1.30, 124), (1.33, 1.58, 124), (1.61, 1.70, 10)]
    probe.records += [(1.76, 1.78, 0), (1.81, 1.83, 0)]
    probe.mark_at = 1.04
    r = probe.report()
    assert (r.probes, r.failed, r.rcs) == (8, 3, {124: 2, 10: 1})
    assert r.outage == pytest.approx(1.78 - 1.02)
    assert r.first_failure == pytest.approx(0.01) and r.recovered == pytest.approx(0.74)
    assert r.typical_gap == pytest.approx(0.05)
