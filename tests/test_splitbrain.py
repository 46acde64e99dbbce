"""The split-brain evidence model and recommendation, over real DRBD 8.4 captures.

``tests/fixtures/drbd84-splitbrain`` was captured by ``lab/vm/capture_splitbrain.py`` (real DRBD
8.4.11 in two VMs): a both-sided and a one-sided split brain, each with its resolution. Each side
is read through the real adapter (``Drbd.observe`` + ``generation_ids`` over a runner answering
with the captured outputs) and turned into a ``Side`` the way the controller does it; only the
controller's own facts (pool role, sessions, the ledger) are set by the tests.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from drbd_captures import DRBD84, install, load_capture
from fakes import FakeRunner
from iscsi_ha.controller import ledger as L
from iscsi_ha.controller import splitbrain as sb
from iscsi_ha.controller.model import DrbdResource
from iscsi_ha.controller.splitbrain_ops import side_from_observation
from iscsi_ha.controller.systems.drbd import Drbd

SB = Path(__file__).parent / "fixtures" / "drbd84-splitbrain"


def observe(state: Path, dmesg: Path):
    fake = FakeRunner()
    install(fake, load_capture(state))
    fake.answer(("drbdadm", "sh-minor", "r0"), stdout="0\n")  # the lab's resource is minor 0
    fake.answer(("dmesg",), stdout=dmesg.read_text())
    drbd = Drbd(fake, version="8.4")
    (res,) = drbd.observe(["r0"])
    gi = drbd.generation_ids("r0")
    return res, gi


def side(host: str, state: Path, dmesg: Path, **facts) -> sb.Side:
    res, gi = observe(state, dmesg)
    s = side_from_observation(
        host,
        res,
        gi.text if gi else None,
        facts.pop("pool_role", None),
        facts.pop("manual", True),
        False,
        False,
        0,
        None,
        1000.0,
    )
    return replace(s, **facts)


def both(**n2facts):
    n1 = side("node1", SB / "sb-both-node1.txt", SB / "sb-both-dmesg-node1.txt")
    n2 = side("node2", SB / "sb-both-node2.txt", SB / "sb-both-dmesg-node2.txt", **n2facts)
    return n1, n2


def one_sided():
    """The captured one-sided split brain: which node detected it is in the file names."""
    files = sorted(SB.glob("sb-one-node?-node1.txt"))
    assert files, "the one-sided capture is missing"
    detector = files[0].name.split("-")[2]
    tag = f"sb-one-{detector}"
    n1 = side("node1", SB / f"{tag}-node1.txt", SB / f"{tag}-dmesg-node1.txt")
    n2 = side("node2", SB / f"{tag}-node2.txt", SB / f"{tag}-dmesg-node2.txt")
    return detector, n1, n2


# --------------------------------------------------------------------------- reading real DRBD


def test_both_sided_capture_reads_as_split_brain_with_diverged_generations():
    n1, n2 = both()
    for s in (n1, n2):
        assert (s.role, s.connection, s.disk) == ("Primary", "StandAlone", "UpToDate")
        assert s.split_brain
    # node1 wrote 16 blocks of 4 KiB after the link was cut, node2 64 (the capture's dd).
    assert (n1.out_of_sync_bytes, n2.out_of_sync_bytes) == (64 * 1024, 256 * 1024)
    assert sb.diverged(n1.generation, n2.generation) is True
    assert sb.same_generation(n1.generation, n2.generation) is False
    a = sb.assess(n1, n2)
    assert a.kind == "both" and a.detected_by == ("node1", "node2") and a.in_split_brain


def test_one_sided_capture_is_still_a_split_brain():
    detector, n1, n2 = one_sided()
    sides = {"node1": n1, "node2": n2}
    other = "node2" if detector == "node1" else "node1"
    assert sides[detector].connection == "StandAlone" and sides[detector].split_brain
    assert sides[other].connection == "WFConnection" and not sides[other].split_brain
    a = sb.assess(n1, n2)
    assert a.kind == "one-sided" and a.detected_by == (detector,)
    assert sb.diverged(n1.generation, n2.generation) is True
    assert "logs nothing" in sb.render(a)


def test_the_older_shared_capture_reads_the_same_way():
    # ../shared/fixtures/drbd84 state-06 with its kernel log (another real run).
    n1 = side(
        "node1",
        DRBD84 / "state-06-after-reconnect-splitbrain-node1.txt",
        DRBD84 / "dmesg-splitbrain-node1.txt",
    )
    n2 = side(
        "node2",
        DRBD84 / "state-06-after-reconnect-splitbrain-node2.txt",
        DRBD84 / "dmesg-splitbrain-node2.txt",
    )
    assert sb.assess(n1, n2).kind == "both"


def test_after_recovery_no_split_brain_and_verify_passes():
    n1 = side("node1", SB / "sb-both-resolved-node1.txt", SB / "sb-both-dmesg-after-node1.txt")
    n2 = side("node2", SB / "sb-both-resolved-node2.txt", SB / "sb-both-dmesg-after-node2.txt")
    assert sb.assess(n1, n2).kind == "none"
    v = sb.verify(n1, n2)
    assert v.done, v.sentence
    assert "same data generation" in v.sentence
    # The Primary's current UUID carries DRBD's Primary bit; the generations are still equal.
    assert n1.generation.current != n2.generation.current
    # ... and during the split brain it does not pass.
    s1, s2 = both()
    assert not sb.verify(s1, s2).done


# --------------------------------------------------------------------------- the recommendation


def test_recommends_the_side_the_vms_wrote_to_even_with_fewer_changes():
    n1, n2 = both()
    n1 = replace(n1, alone_primary_since=100.0, alone_primary_last=700.0, alone_sessions=2)
    a = sb.assess(n1, n2)
    assert a.survivor == "node1" and a.confident
    assert a.wrote == ("node1",)
    assert any("2 iSCSI session(s)" in r for r in a.reasons)
    assert "node2's changes" in sb.discarded(a, "node1")
    assert "256 KiB" in sb.discarded(a, "node1")


def test_without_session_evidence_more_changes_wins_but_weakly():
    n1, n2 = both()
    a = sb.assess(n1, n2)
    assert a.survivor == "node2" and not a.confident
    assert any("weaker reason" in r for r in a.reasons)
    assert "weak evidence" in sb.render(a)


def test_writes_on_both_sides_need_force_whichever_survives():
    n1, n2 = both(alone_sessions=1)
    n1 = replace(n1, alone_sessions=3)
    a = sb.assess(n1, n2)
    assert set(a.wrote) == {"node1", "node2"} and not a.confident
    for survivor in ("node1", "node2"):
        hard, forceable = sb.refusals(a, survivor)
        assert not hard and forceable


def test_wrong_survivor_is_refused_unless_forced():
    n1, n2 = both(alone_sessions=1)
    a = sb.assess(n1, n2)
    hard, forceable = sb.refusals(a, "node1")
    assert not hard
    assert forceable and "not the side the VMs wrote to" in forceable[0]
    assert sb.refusals(a, "node2") == ([], [])


def test_a_serving_victim_is_refused_with_the_way_out():
    n1, n2 = both(alone_sessions=1)
    n1 = replace(n1, sessions=1, vip_local=True, target_present=True)
    hard, _ = sb.refusals(sb.assess(n1, n2), "node2")
    text = " ".join(hard)
    assert "1 iSCSI session(s)" in text and "holds the VIP" in text
    assert "target uses the device" in text and "become-secondary" in text


def test_a_victim_that_its_controller_would_promote_again_is_refused():
    n1, n2 = both(alone_sessions=1)
    n1 = replace(n1, pool_role="master", manual=False)
    hard, _ = sb.refusals(sb.assess(n1, n2), "node2")
    assert any("would promote it again" in h for h in hard)
    n1 = replace(n1, manual=True)
    assert sb.refusals(sb.assess(n1, n2), "node2") == ([], [])


def test_not_a_split_brain_or_an_unreadable_side_is_refused():
    n1 = side("node1", SB / "sb-both-resolved-node1.txt", SB / "sb-both-dmesg-after-node1.txt")
    n2 = side("node2", SB / "sb-both-resolved-node2.txt", SB / "sb-both-dmesg-after-node2.txt")
    hard, _ = sb.refusals(sb.assess(n1, n2), "node2")
    assert "not in split brain" in hard[0]
    s1, s2 = both()
    hard, _ = sb.refusals(sb.assess(s1, replace(s2, error="peer unreachable")), "node1")
    assert "cannot see both sides" in hard[0]
    assert "neither host" in sb.refusals(sb.assess(s1, s2), "node3")[0][0]


# --------------------------------------------------------------------------- the steps


def test_plan_both_sided_matches_drbds_documented_order():
    n1, n2 = both()
    steps = sb.plan(sb.assess(n1, n2), "node2")
    assert [(s.host, s.action) for s in steps] == [
        ("node1", sb.SECONDARY),
        ("node1", sb.CONNECT_DISCARD),
        ("node2", sb.CONNECT),
    ]
    assert steps[1].command == "drbdadm connect --discard-my-data"


def test_plan_one_sided_disconnects_a_waiting_victim_and_connects_only_a_standalone_survivor():
    detector, n1, n2 = one_sided()
    sides = {"node1": n1, "node2": n2}
    waiting = "node2" if detector == "node1" else "node1"
    a = sb.assess(n1, n2)
    # Victim = the WFConnection side: disconnect first, the StandAlone survivor reconnects.
    steps = [(s.host, s.action) for s in sb.plan(a, detector)]
    assert steps == [
        (waiting, sb.DISCONNECT),
        (waiting, sb.SECONDARY),
        (waiting, sb.CONNECT_DISCARD),
        (detector, sb.CONNECT),
    ]
    # Victim = the StandAlone side: the survivor waits in WFConnection and needs nothing.
    steps = [(s.host, s.action) for s in sb.plan(a, waiting)]
    assert steps == [(detector, sb.SECONDARY), (detector, sb.CONNECT_DISCARD)]
    assert sides[waiting].connection == "WFConnection"


def test_progress_line_reads_the_synctarget():
    t = sb.Side(
        "node1",
        "r0",
        connection="SyncTarget",
        disk="Inconsistent",
        peer_disk="UpToDate",
        sync_progress=0.25,
        sync_eta_seconds=42.0,
        out_of_sync_bytes=3 * 1024 * 1024,
    )
    s = sb.Side("node2", "r0", connection="SyncSource", disk="UpToDate", peer_disk="Inconsistent")
    assert sb.progress(s, t) == "resync node1 SyncTarget: 25.0%, 3.0 MiB left, ETA 42 s"


def test_audit_line_names_who_what_and_how_much():
    line = sb.audit_line(
        "r0",
        "node2",
        "node1",
        65536,
        "uid 0 (root)",
        "2026-12-02T02:00:00Z",
        1.5,
        "both Connected",
        False,
    )
    assert "survivor node2" in line and "discarded node1's changes" in line
    assert "64 KiB" in line and "uid 0 (root)" in line and "1.5 s" in line


# --------------------------------------------------------------------------- the wire


def test_side_round_trips_and_hostile_fields_become_unknown():
    n1, _ = both()
    assert sb.side_from_dict(sb.side_to_dict(n1)) == n1
    hostile = {
        "host": "node2",
        "resource": "r0",
        "sessions": "many",
        "split_brain": 1,
        "out_of_sync_bytes": True,
        "alone_primary_since": "yesterday",
        "extra": [1],
    }
    s = sb.side_from_dict(hostile)
    assert s.sessions is None and s.split_brain is False and s.out_of_sync_bytes is None
    assert s.alone_primary_since is None
    with pytest.raises(ValueError):
        sb.side_from_dict({"resource": "r0"})


def test_json_view_says_everything_the_text_says():
    n1, n2 = both(alone_sessions=1)
    d = sb.assessment_to_dict(sb.assess(n1, n2))
    assert d["split_brain"] and d["kind"] == "both"
    assert d["recommended_survivor"] == "node2" and d["confident"]
    assert d["diverged_generations"] is True
    assert d["sides"][0]["out_of_sync_bytes"] == 65536
    assert "node1's changes" in d["would_discard"]


# --------------------------------------------------------------------------- the ledger


def test_ledger_keeps_when_this_host_was_primary_alone_and_its_sessions():
    led = L.Ledger("node1")
    connected = DrbdResource(
        "r0",
        role="Primary",
        peer_role="Secondary",
        connection="Connected",
        disk="UpToDate",
        peer_disk="UpToDate",
    )
    alone = replace(connected, peer_role="Unknown", connection="StandAlone", peer_disk="DUnknown")
    led = L.advance(led, [connected], 1.0, 100.0, "b", "r", 10.0, sessions=1)
    assert led.entries["r0"].alone_primary_since is None
    led = L.advance(led, [alone], 2.0, 110.0, "b", "r", 10.0, sessions=0)
    led = L.advance(led, [alone], 3.0, 150.0, "b", "r", 10.0, sessions=3)
    e = led.entries["r0"]
    assert (e.alone_primary_since, e.alone_primary_last, e.alone_sessions) == (110.0, 150.0, 3)
    again = L.parse(L.render(led, 160.0), "node1", 160.0)
    assert again.entries["r0"].alone_sessions == 3
    assert again.entries["r0"].alone_primary_since == 110.0
    led = L.advance(led, [connected], 4.0, 170.0, "b", "r", 10.0, sessions=1)
    assert led.entries["r0"].alone_primary_since is None
    assert led.entries["r0"].alone_sessions == 0


def test_view_lists_the_vms_on_this_target_and_who_holds_the_vip():
    n1, n2 = both(alone_sessions=1)
    n1 = replace(n1, vms=("db (Running on xcp1, 1 disk(s))",), vip_local=False)
    n2 = replace(n2, vms=("db (Running on xcp1, 1 disk(s))",), vip_local=True)
    text = sb.render(sb.assess(n1, n2))
    assert "VMs with disks on this target (XenAPI), through the VIP held now by node2: db" in text
    assert sb.assessment_to_dict(sb.assess(n1, n2))["vms"] == ["db (Running on xcp1, 1 disk(s))"]
    off = sb.render(sb.assess(*both()))
    assert "VMs with disks on this target: unknown (XenAPI not enabled)" in off


def test_a_victim_in_manual_mode_asked_to_be_primary_is_refused():
    n1, n2 = both(alone_sessions=1)
    n1 = replace(n1, manual=True, manual_requested="primary")
    hard, _ = sb.refusals(sb.assess(n1, n2), "node2")
    assert any("asked to be primary" in h for h in hard)
    n1 = replace(n1, manual_requested="secondary")
    assert sb.refusals(sb.assess(n1, n2), "node2") == ([], [])
