"""XenServer's own initiator across a failover: open-iscsi in the VM lab (real DRBD 8.4, real tgtd,
both controllers), a direct-I/O workload that checks what it wrote, stock and tuned settings.

Asserted, for stock (XenServer's settings: DefaultTime2Wait 2 on both sides) and tuned (the target
offers 0, the node record asks 0): the session breaks once per move and no reconnect fails
(iscsid reports one recovery, after 1 attempt: a failed one would cost 3 s more), no I/O error,
nothing read back differs from what was written, and I/O resumes after the new holder serves
(pool.conf written until it serves at the VIP) before the NOP-Out timer would have noticed a
dead connection twice. The stall figures are printed: they are the lab's measurement, not a
bound (see the end of the test).

Under TCG a move takes ~7 s (controller cycles of 1-3 s, pool.conf on 9p seen by the 0.5 s
backstop read), longer than the 2 s the stock session waits before reconnecting, so that wait is
hidden here and stock and tuned stall alike; on hardware, where the move is a few hundred ms, the
stock stall is at least 2 s. The absolute 0.5 s target needs hardware speed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from test_vm_drbd import _report, _require_prerequisites  # noqa: E402

from lab.vm import controllers as ctl  # noqa: E402
from lab.vm import initiator as ini  # noqa: E402
from lab.vm.harness import VmLab  # noqa: E402

STOCK_NOP_INTERVAL = ini.STOCK["node.conn[0].timeo.noop_out_interval"]
STOCK_NOP_TIMEOUT = ini.STOCK["node.conn[0].timeo.noop_out_timeout"]

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    _require_prerequisites()
    lab = VmLab(tmp_path_factory.mktemp("vm-initiator"))
    failed = True
    try:
        lab.prepare(ctl.resources(lab))
        lab.boot()
        # The peer channel: test_switchover_* runs `iscsi-cfg switchover`.
        c = ctl.start_pair(lab, settle_limit=180, peer_timeout=5)
        initiator = ini.Initiator(lab.vm("node2"), c)
        initiator.start()
        yield lab, c, initiator
        failed = False
    finally:
        if failed:
            _report(lab)
            print(f"iscsid log: {lab.vm('node2').xdir / 'iscsid.log'}")
        lab.teardown()


def tune_controllers(lab, c, time2wait: int) -> None:
    import signal

    import yaml

    for vm in lab.vms:
        path = vm.xdir / "iscsi-ha.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg["target"]["default_time2wait"] = time2wait
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        vm.kill(c.pids[vm.name], signal.SIGHUP)
    ctl.wait_for(
        "both controllers reloaded",
        lambda: all(c.controller_log(vm).count("configuration reloaded") >= 1 for vm in lab.vms),
        60,
    )


def move(lab, c, initiator, to: str):
    """Move the pool master to ``to`` under the workload; returns (move seconds, summary)."""
    initiator.start_workload(seconds=240)
    before = len(initiator.recoveries())
    t0 = time.monotonic()
    c.set_pool_master(to)
    new = lab.vm(to)
    ctl.wait_for(
        f"{to} serves at the VIP", lambda: c.serving(new) and c.vip_local(new), 120, interval=0.2
    )
    moved = time.monotonic() - t0
    # What the initiator's host holds toward the VIP right after the move (state, source address,
    # retransmissions): a connection still sourced from a VIP this host no longer owns never
    # gets a reset.
    print(f"\n{initiator.vm.name} -> VIP after the move:", initiator.connections())
    ops = initiator.workload().get("ops", 0)
    ctl.wait_for("I/O resumed", lambda: initiator.workload().get("ops", 0) > ops + 100, 120)
    summary = initiator.finish_workload()
    summary["moved"] = moved
    for vm in lab.vms:  # what vip_sessions did with the initiator's connection on each side
        print(vm.name, [ln for ln in c.controller_log(vm).splitlines() if "connection(s)" in ln])
    summary["recoveries"] = initiator.recoveries()[before:]
    print(f"\n{to}: {summary}")
    return summary


def test_stock_then_tuned(pool):
    lab, c, initiator = pool
    assert ini.target_time2wait(lab.vm("node1")) == "2"  # tgt's default: what targets offer
    initiator.login(ini.STOCK)
    stock = move(lab, c, initiator, "node2")
    assert stock["errors"] == [] and stock["mismatches"] == 0, stock
    assert stock["recoveries"] == [1], stock  # one break, back at the first attempt

    # Tuned: iscsi-ha's target.default_time2wait 0 (reloaded with SIGHUP) makes every target it
    # creates offer 0; the one serving now was created before, so it is set as the adapter would.
    tune_controllers(lab, c, 0)
    ini.set_target_time2wait(lab.vm("node2"), 0)
    assert ini.target_time2wait(lab.vm("node2")) == "0"
    initiator.login(ini.TUNED)
    print(
        "\ntuned session's connection:",
        lab.vm("node2").run(["ss", "-tnH", "dst", ini.VIP_ADDR]).out.strip(),
    )
    tuned = move(lab, c, initiator, "node1")
    assert ini.target_time2wait(lab.vm("node1")) == "0"  # created by the controller with 0
    assert tuned["errors"] == [] and tuned["mismatches"] == 0, tuned
    assert tuned["recoveries"] == [1], tuned
    print(
        f"\nlongest I/O stall: stock {stock['longest']:.2f} s (move {stock['moved']:.2f} s), "
        f"tuned {tuned['longest']:.2f} s (move {tuned['moved']:.2f} s)"
    )
    # Timing is reported, not bounded tightly: under TCG the move itself takes 2-7 s and varies
    # with the machine's load. What a tight bound stood for is asserted above (every reconnect
    # succeeded at its first attempt: none cost the 3 s reopen delay). Loose bound: I/O back
    # before the NOP-Out timer (interval + timeout, 10 s) would notice a dead connection twice.
    # The tuned move runs the other way (the VIP leaves the initiator's own host): before
    # vip_sessions nothing ended that host's connection to the VIP but a lucky retransmission or
    # the NOP-Out timer (16.48 s for a 14.35 s move, 2 attempts); with it, 2.84 s for 2.85 s.
    nop = int(STOCK_NOP_INTERVAL) + int(STOCK_NOP_TIMEOUT)
    assert stock["longest"] - stock["moved"] < 2 + nop, stock
    assert tuned["longest"] - tuned["moved"] < 0 + nop, tuned


def switch(lab, c, initiator, on: str, to: str):
    """``iscsi-cfg switchover`` run on ``on`` under the workload, moving the storage to ``to``;
    returns the workload's summary with the command's wall time and phases."""
    initiator.start_workload(seconds=240)
    before = len(initiator.recoveries())
    t0 = time.monotonic()
    res = c.cfg(lab.vm(on), "switchover", timeout=120)
    took = time.monotonic() - t0
    print(f"\niscsi-cfg switchover on {on} ({took:.2f} s, rc {res.rc}):\n{res.out}{res.err}")
    assert res.rc == 0 and "switchover done" in res.out, res.out + res.err
    new = lab.vm(to)
    ctl.wait_for(f"{to} serves at the VIP", lambda: c.serving(new) and c.vip_local(new), 30)
    ops = initiator.workload().get("ops", 0)
    ctl.wait_for("I/O resumed", lambda: initiator.workload().get("ops", 0) > ops + 100, 120)
    summary = initiator.finish_workload()
    summary["switchover"] = took
    summary["recoveries"] = initiator.recoveries()[before:]
    for vm in lab.vms:
        print(vm.name, [ln for ln in c.controller_log(vm).splitlines() if "connection(s)" in ln])
    print(f"\nswitchover to {to}: {summary}")
    return summary


def test_switchover_both_ways_under_the_tuned_initiator(pool):
    """The one-command switchover (both controllers over the peer channel) under the tuned
    session: to node2 (the initiator's own host becomes the holder), then back to node1 (the
    initiator's host releases: the case vip_sessions waits for the VIP to answer)."""
    lab, c, initiator = pool
    node1, node2 = lab.vm("node1"), lab.vm("node2")
    ctl.wait_for("node1 serves", lambda: c.serving(node1) and c.vip_local(node1), 60)
    if ini.target_time2wait(node1) != "0":  # run alone: tune as test_stock_then_tuned does
        tune_controllers(lab, c, 0)
        ini.set_target_time2wait(node1, 0)
        initiator.login(ini.TUNED)
    there = switch(lab, c, initiator, on="node1", to="node2")
    back = switch(lab, c, initiator, on="node2", to="node1")
    for s in (there, back):  # the data: never an I/O error or a wrong block
        assert s["errors"] == [] and s["mismatches"] == 0, s
        # The session broke once with each move and came back at the first attempt. A failed
        # attempt costs open-iscsi 3 s; a second break, a second stall. Both came from this
        # host ending its own fresh reconnect (vip_sessions listed its connections only after
        # the initiator had reconnected by itself: "predate the move" must be told by what the
        # host holds, not by when it looks), in some runs mid-login (iscsid: "after recovery
        # (2 attempts)"), blamed before on a reconnect into the gap. The old holder's target
        # cannot close the session: its VIP is removed first, and no FIN leaves without it.
        assert s["recoveries"] == [1], s
    print(
        f"\nlongest I/O stall across a switchover: to node2 {there['longest']:.2f} s "
        f"(command {there['switchover']:.2f} s), back to node1 {back['longest']:.2f} s "
        f"(command {back['switchover']:.2f} s)"
    )
    # The command's wall time includes starting iscsi-cfg's Python in the VM (seconds under
    # TCG), so the stall can be shorter than it; the NOP-Out timer (+10 s) would put it beyond.
    for s in (there, back):
        assert s["longest"] < s["switchover"] + 3, s
    c.cfg(node1, "manual-mode-disable")
    c.cfg(node2, "manual-mode-disable")
