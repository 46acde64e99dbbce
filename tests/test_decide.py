"""decide(): the decision table, the refusals, and convergence on a fake world."""

import itertools
from dataclasses import replace

import pytest
from iscsi_ha.controller.decide import (
    become_refusal,
    decide,
    manual_disable_refusal,
    promotion_refusal,
)
from iscsi_ha.controller.model import (
    AnnounceVip,
    BindVip,
    Demote,
    Evidence,
    ManualMode,
    PeerObservation,
    PlugPbds,
    Policy,
    PoolRole,
    Promote,
    ServeTarget,
    StartTargetDaemon,
    StopServingTarget,
    StorageRole,
    UnbindVip,
    UpResource,
    action_name,
)
from worlds import FakeWorld, res, sr_with, world

AUTO = ManualMode()
MANUAL = ManualMode(enabled=True)
WATCHED = (Evidence("iscsi1", watched=True, reason="watched", why_not="watched without a gap"),)


def names(plan):
    return [action_name(a) for a in plan.actions]


# ------------------------------------------------------------------ desired role


def test_master_promotes_in_the_safe_order():
    plan = decide(world(PoolRole.MASTER, conflict=False), AUTO)
    assert plan.desired is StorageRole.PRIMARY
    assert plan.actions == (Promote("iscsi1"), ServeTarget(), BindVip(), AnnounceVip())
    assert plan.reason == "host is pool master"
    assert not plan.refusals


def test_slave_demotes_in_the_safe_order():
    obs = world(PoolRole.SLAVE, resources=(res(role="Primary"),), serving=True, vip_local=True)
    plan = decide(obs, AUTO)
    assert plan.desired is StorageRole.SECONDARY
    assert plan.actions == (UnbindVip(), StopServingTarget(), Demote("iscsi1"))
    assert "master is 10.99.0.1" in plan.reason


def test_unknown_pool_role_holds_and_says_why():
    obs = world(PoolRole.UNKNOWN, resources=(res(role="Primary"),), serving=True, vip_local=True)
    plan = decide(obs, AUTO)
    assert plan.actions == ()
    assert plan.desired is None
    assert "pool role unknown" in plan.held and "broken" in plan.held


def test_unreadable_output_holds_with_the_text():
    bad = res(error="cannot read `drbdadm cstate iscsi1`: 'garbage'")
    plan = decide(world(PoolRole.MASTER, resources=(bad,)), AUTO)
    assert plan.actions == ()
    assert plan.held == "cannot read `drbdadm cstate iscsi1`: 'garbage'"


def test_manual_mode_without_request_keeps_current_role_even_on_a_slave():
    obs = world(PoolRole.SLAVE, resources=(res(role="Primary"),), serving=True, vip_local=True)
    plan = decide(obs, MANUAL)
    assert plan.desired is StorageRole.PRIMARY
    assert plan.actions == ()
    assert plan.reason.startswith("manual mode: keeping")


def test_manual_mode_request_overrides_pool_role():
    obs = world(PoolRole.MASTER, resources=(res(role="Primary"),), serving=True, vip_local=True)
    plan = decide(obs, ManualMode(enabled=True, requested=StorageRole.SECONDARY))
    assert plan.actions == (UnbindVip(), StopServingTarget(), Demote("iscsi1"))
    assert "operator asked for secondary" in plan.reason


def test_manual_mode_with_mixed_roles_holds():
    obs = world(resources=(res("a", role="Primary"), res("b")))
    plan = decide(obs, MANUAL)
    assert plan.held and "mixed roles" in plan.held


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "resource, expected",
    [
        (res(peer_role="Primary"), "not promoting iscsi1: peer is Primary"),
        (res(split_brain=True, connection="StandAlone", peer_role="Unknown"), "split brain"),
        (res(quorum=False), "no quorum"),
        (
            res(
                disk="Outdated",
                connection="WFConnection",
                peer_role="Unknown",
                peer_disk="DUnknown",
            ),
            "local disk is Outdated and the peer is unreachable",
        ),
        (res(disk="Inconsistent", peer_disk="Inconsistent"), "no UpToDate data on either side"),
    ],
)
def test_promotion_refusals(resource, expected):
    plan = decide(world(PoolRole.MASTER, resources=(resource,)), AUTO)
    assert not any(isinstance(a, (Promote, ServeTarget, BindVip)) for a in plan.actions)
    assert any(expected in r for r in plan.refusals), plan.refusals


def test_inconsistent_local_disk_is_fine_when_the_connected_peer_is_uptodate():
    plan = decide(world(resources=(res(disk="Inconsistent", connection="SyncTarget"),)), AUTO)
    assert Promote("iscsi1") in plan.actions


def test_disconnected_uptodate_promotes_failover_case_when_watched():
    r = res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown")
    plan = decide(world(resources=(r,), conflict=False, evidence=WATCHED), AUTO)
    assert plan.actions[0] == Promote("iscsi1")


def test_one_refused_resource_stops_all_promotions():
    plan = decide(world(resources=(res("a"), res("b", peer_role="Primary"))), AUTO)
    assert not any(isinstance(a, Promote) for a in plan.actions)
    assert plan.retry_soon  # the peer is probably demoting right now


def test_vip_conflict_refuses_bind_but_keeps_target():
    plan = decide(world(conflict=True), AUTO)
    assert names(plan) == ["promote", "target_serve"]
    assert "another host answers" in plan.refusals[0]


def test_vip_answered_with_the_peer_unreachable_holds_the_promotion():
    # A partition: the old holder is alive behind it and still answers for the VIP. Promoting
    # here would make a second Primary and a second serving target (seen in the VM lab).
    peer_gone = res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown")
    plan = decide(world(resources=(peer_gone,), conflict=True, evidence=WATCHED), AUTO)
    assert names(plan) == []
    assert "another host answers for VIP" in plan.refusals[0]
    assert "iscsi1" in plan.refusals[0]
    # Once nobody answers, the same host promotes.
    plan = decide(world(resources=(peer_gone,), conflict=False, evidence=WATCHED), AUTO)
    assert names(plan) == ["promote", "target_serve", "vip_add", "vip_announce"]


def test_unprobed_vip_refused_unless_peer_released_it():
    peer_gone = res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown")
    plan = decide(world(resources=(peer_gone,), conflict=None, evidence=WATCHED), AUTO)
    assert BindVip() not in plan.actions and "could not check" in plan.refusals[0]
    # Connected peer that is Secondary: it removed the VIP before demoting; no probe needed.
    plan = decide(world(conflict=None), AUTO)
    assert BindVip() in plan.actions


def test_resource_down_is_brought_up_and_promotion_waits():
    plan = decide(world(resources=(res(configured=False, role="Unknown"),), daemon=False), AUTO)
    assert plan.actions == (UpResource("iscsi1"), StartTargetDaemon())
    assert plan.retry_soon and "waiting for iscsi1" in plan.refusals[0]


def test_standby_keeps_an_empty_daemon():
    plan = decide(world(PoolRole.SLAVE, daemon=False), AUTO)
    assert plan.actions == (StartTargetDaemon(),)


def test_partial_target_on_standby_is_removed():
    plan = decide(world(PoolRole.SLAVE, serving=False, target_present=True), AUTO)
    assert plan.actions == (StopServingTarget(),)


def test_srs_plugged_on_master_only():
    converged = dict(resources=(res(role="Primary"),), serving=True, vip_local=True)
    plan = decide(world(PoolRole.MASTER, srs=sr_with(attached=False), **converged), AUTO)
    assert plan.actions == (PlugPbds(("pbd-1",)),)
    manual_primary_on_slave = ManualMode(enabled=True, requested=StorageRole.PRIMARY)
    plan = decide(
        world(PoolRole.SLAVE, srs=sr_with(attached=False), **converged), manual_primary_on_slave
    )
    assert plan.actions == ()


def test_periodic_announce():
    obs = world(resources=(res(role="Primary"),), serving=True, vip_local=True, announce_due=True)
    assert decide(obs, AUTO).actions == (AnnounceVip(),)


# ------------------------------------------------------------------ the full table

POOL = list(PoolRole)
LOCAL = ["Primary", "Secondary"]
PEER = ["Primary", "Secondary", "Unknown"]
CONN = ["Connected", "WFConnection", "StandAlone", "SyncSource"]
DISK = ["UpToDate", "Outdated", "Inconsistent"]
MODES = [
    AUTO,
    MANUAL,
    ManualMode(True, StorageRole.PRIMARY),
    ManualMode(True, StorageRole.SECONDARY),
]


def expected_role(pool, local, mode):
    if mode.enabled:
        if mode.requested:
            return mode.requested
        return StorageRole.PRIMARY if local == "Primary" else StorageRole.SECONDARY
    return {PoolRole.MASTER: StorageRole.PRIMARY, PoolRole.SLAVE: StorageRole.SECONDARY}.get(pool)


PROOF = [(), WATCHED]


@pytest.mark.parametrize("pool, mode", list(itertools.product(POOL, MODES)))
def test_decision_table(pool, mode):
    # Every row of the table for this pool role and mode, in one test: 432 rows a test instead of
    # one test a row (5,184 pytest items cost ~10 s of collection and bookkeeping in `make unit`).
    # Each failing row is named with what it checked.
    failed = []
    for row in itertools.product(LOCAL, PEER, CONN, DISK, DISK, PROOF):
        local, peer, conn, disk, peer_disk, proof = row
        try:
            check_decision_row(pool, local, peer, conn, disk, peer_disk, mode, proof)
        except AssertionError as exc:
            failed.append(f"{pool}, {mode}, {row}: {exc}")
    assert not failed, f"{len(failed)} rows failed:\n" + "\n".join(failed[:20])


def check_decision_row(pool, local, peer, conn, disk, peer_disk, mode, proof):
    reachable = conn in ("Connected", "SyncSource")
    r = res(
        role=local,
        peer_role=peer if reachable else "Unknown",
        connection=conn,
        disk=disk,
        peer_disk=peer_disk if reachable else "DUnknown",
    )
    plan = decide(world(pool, resources=(r,), conflict=False, evidence=proof), mode)
    want = expected_role(pool, local, mode)
    assert plan.desired is want
    if want is None:
        assert plan.actions == () and plan.held
        return
    if want is StorageRole.SECONDARY:
        assert Promote("iscsi1") not in plan.actions
        assert (Demote("iscsi1") in plan.actions) == (local == "Primary")
        return
    promotes = Promote("iscsi1") in plan.actions
    if local == "Primary":
        assert not promotes and not plan.refusals
        assert BindVip() in plan.actions
        return
    # Never serve stale data: a peer DRBD cannot reach needs proof (here: the watch).
    proven = r.peer_reachable or bool(proof)
    safe = promotion_refusal(r) is None and proven
    assert promotes == safe
    if r.peer_role == "Primary" or (disk != "UpToDate" and not r.peer_reachable):
        assert not promotes
    if not safe:
        assert plan.refusals and ServeTarget() not in plan.actions
    if promotion_refusal(r) is None and not proven:
        assert plan.blocked == (("iscsi1", "no_record"),)
        assert "cannot prove this host has the newest data" in plan.refusals[0]
    elif not r.peer_reachable and disk != "UpToDate":
        # DRBD's own stale-data guard (the local disk not UpToDate, the peer gone) pages too.
        assert plan.blocked == (("iscsi1", f"local_disk_{disk.lower()}"),)
    else:
        assert plan.blocked == ()


# ------------------------------------------------------------------ convergence


@pytest.mark.parametrize(
    "obs, mode",
    [
        (
            world(
                PoolRole.MASTER, resources=(res("a"), res("b")), daemon=False, srs=sr_with(False)
            ),
            AUTO,
        ),
        (
            world(
                PoolRole.SLAVE,
                resources=(res("a", role="Primary"), res("b", role="Primary")),
                serving=True,
                vip_local=True,
                daemon=True,
            ),
            AUTO,
        ),
        (world(PoolRole.MASTER, resources=(res(configured=False, role="Unknown"),)), AUTO),
        (world(PoolRole.SLAVE, resources=(res(),)), ManualMode(True, StorageRole.PRIMARY)),
    ],
)
def test_apply_first_action_then_decide_again_converges(obs, mode):
    """Patroni-style: apply one action, re-decide, expect the rest of the plan; finish empty."""
    w = FakeWorld(obs)
    plan = decide(w.obs, mode)
    for _ in range(20):
        if not plan.actions:
            break
        first, rest = plan.actions[0], plan.actions[1:]
        assert w.apply(first)
        plan = decide(w.obs, mode)
        if not isinstance(first, UpResource):
            assert plan.actions == rest
    assert plan.actions == () and plan.refusals == ()
    assert decide(w.obs, mode).converged


# ------------------------------------------------------------------ never serve stale data

GONE = res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown")


@pytest.mark.parametrize(
    "how, kw, promotes, reason",
    [
        ("no record", {}, False, "no_record"),
        ("watched", {"evidence": WATCHED}, True, None),
        (
            "restarted",
            {
                "evidence": (
                    Evidence(
                        "iscsi1",
                        reason="restarted",
                        why_not="the controller restarted since; nobody watched in between",
                        last_connected=1000.0,
                        last_peer_role="Primary",
                        last_peer_disk="UpToDate",
                    ),
                ),
                "now": 1000.0 + 7200,
            },
            False,
            "restarted",
        ),
        (
            "peer Outdated per DRBD",
            {"resources": (replace(GONE, peer_disk="Outdated"),)},
            True,
            None,
        ),
        (
            "peer Outdated per the peer channel",
            {"peer": PeerObservation(True, "slave", {"iscsi1": {"disk": "Outdated"}})},
            True,
            None,
        ),
        (
            "peer channel reachable, peer UpToDate",
            {"peer": PeerObservation(True, "slave", {"iscsi1": {"disk": "UpToDate"}})},
            False,
            "no_record",
        ),
        ("operator accepted", {"accept_stale": ("iscsi1",)}, True, None),
        (
            "evidence of another resource",
            {"evidence": (Evidence("other", watched=True),)},
            False,
            "no_record",
        ),
    ],
)
def test_peer_unreachable_promotes_only_with_proof(how, kw, promotes, reason):
    kw.setdefault("resources", (GONE,))
    plan = decide(world(conflict=False, **kw), AUTO)
    assert (Promote("iscsi1") in plan.actions) == promotes, how
    if reason:
        assert plan.blocked == (("iscsi1", reason),)
        assert plan.refusals[0].startswith(
            "not promoting iscsi1: cannot prove this host has the newest data: "
        )
    else:
        assert plan.blocked == ()


def test_hold_sentence_says_when_and_how_the_peer_was_last_seen():
    ev = Evidence(
        "iscsi1",
        reason="restarted",
        why_not="the controller restarted since; nobody watched in between",
        last_connected=1000.0,
        last_peer_role="Primary",
        last_peer_disk="UpToDate",
    )
    plan = decide(world(resources=(GONE,), evidence=(ev,), now=1000.0 + 7200), AUTO)
    assert plan.refusals == (
        "not promoting iscsi1: cannot prove this host has the newest data: the peer was Primary "
        "(UpToDate) when last seen, 2 h ago; the controller restarted since; nobody watched in "
        "between (see `iscsi-cfg become-primary --accept-stale` in the runbook)",
    )


def test_unproven_wait_relaxes_after_the_configured_time_only():
    ev = Evidence("iscsi1", unreachable_for=299.0)
    obs = world(resources=(GONE,), evidence=(ev,), conflict=False)
    assert Promote("iscsi1") not in decide(obs, AUTO, Policy(unproven_wait=300)).actions
    obs = world(resources=(GONE,), evidence=(replace(ev, unreachable_for=300.0),), conflict=False)
    assert Promote("iscsi1") in decide(obs, AUTO, Policy(unproven_wait=300)).actions
    assert Promote("iscsi1") not in decide(obs, AUTO).actions  # 0 = never (the default)


def _peer_says(role, connection, view_ago=None, failed=False):
    """The peer channel's answer: the peer's view of iscsi1, seen ``view_ago`` seconds ago."""
    age = None if view_ago is None else view_ago / 2
    return PeerObservation(
        True,
        "slave",
        {"iscsi1": {"role": role, "connection": connection, "disk": "UpToDate"}},
        age=age,
        view_age=age,
        last_poll_failed=failed,
    )


# The old holder is alive and still Primary (its `secondary` was refused: the device is held open),
# its VIP already removed, the replication link down, no fencing: DRBD cannot say the peer is
# Primary, and this host watched the link to the end (proof of the newest data). Only the peer
# channel knows; promoting makes two Primaries that diverge.
LOST_10S_AGO = (replace(WATCHED[0], unreachable_for=10.0),)


@pytest.mark.parametrize(
    "how, peer, promotes, retry",
    [
        (
            "peer saw the loss and is still Primary",
            _peer_says("Primary", "StandAlone", 1.0, True),
            False,
            False,
        ),
        (
            "seen after the loss, its DRBD has not noticed",
            _peer_says("Primary", "Connected", 4.0),
            False,
            False,
        ),
        (
            "view from before the loss, peer still answers",
            _peer_says("Primary", "Connected", 30.0),
            False,
            True,
        ),
        (
            "view from before the loss, peer stopped answering (crashed with the link)",
            _peer_says("Primary", "Connected", 30.0, failed=True),
            True,
            False,
        ),
        ("peer says Secondary", _peer_says("Secondary", "WFConnection", 1.0), True, False),
        ("peer channel unreachable", PeerObservation(False), True, False),
        ("no peer channel", None, True, False),
    ],
)
def test_peer_channel_primary_holds_the_promotion(how, peer, promotes, retry):
    obs = world(resources=(GONE,), conflict=False, evidence=LOST_10S_AGO, peer=peer)
    plan = decide(obs, AUTO)
    assert (Promote("iscsi1") in plan.actions) == promotes, how
    assert plan.retry_soon == retry, how
    if not promotes:
        assert plan.blocked == (("iscsi1", "peer_channel_primary"),)
        assert plan.refusals[0].startswith("not promoting iscsi1: ")
        assert "peer channel" in plan.refusals[0]
        # The operator cannot force it either: the peer must demote first.
        assert "peer is Primary for iscsi1" in become_refusal(StorageRole.PRIMARY, MANUAL, obs)


def test_peer_channel_primary_is_not_asked_while_drbd_sees_the_peer():
    # Connected: DRBD's own peer role decides (here Secondary), whatever a cached answer says.
    obs = world(conflict=False, peer=_peer_says("Primary", "Connected", 30.0))
    assert Promote("iscsi1") in decide(obs, AUTO).actions


@pytest.mark.parametrize("local", ["Primary", "Secondary"])
def test_two_masters_both_hold_and_page(local):
    peer = PeerObservation(True, "master", {})
    obs = world(
        resources=(
            res(role=local, connection="StandAlone", peer_role="Unknown", peer_disk="DUnknown"),
        ),
        peer=peer,
        vip_local=local == "Primary",
        serving=local == "Primary",
    )
    plan = decide(obs, AUTO)
    assert plan.actions == () and plan.desired is None
    assert "both hosts' pool.conf say master" in plan.held
    assert plan.blocked == (("iscsi1", "two_masters"),)
    # A peer that is slave, or not reachable, is not a split pool.
    assert not decide(replace(obs, peer=PeerObservation(True, "slave")), AUTO).held
    assert not decide(replace(obs, peer=PeerObservation(False)), AUTO).held


@pytest.mark.parametrize("daemon", [False, True])
def test_two_masters_the_holder_restarts_its_own_dead_target_and_nothing_else(daemon):
    """Chaos schedule 286 of seed 1: tgtd killed on the holder while both pool.conf said master;
    the hold left the VIP without a target until the split pool ended."""
    peer = PeerObservation(True, "master", {})
    primary = res(
        role="Primary", connection="StandAlone", peer_role="Unknown", peer_disk="DUnknown"
    )
    obs = world(resources=(primary,), peer=peer, vip_local=True, daemon=daemon, serving=False)
    plan = decide(obs, AUTO)
    expected = (ServeTarget(),) if daemon else (StartTargetDaemon(), ServeTarget())
    assert plan.actions == expected
    assert "both hosts' pool.conf say master" in plan.held and plan.desired is None
    assert plan.blocked == (("iscsi1", "two_masters"),)  # still paging
    # Not the holder (Secondary, or Primary without the VIP: a demotion may be half done):
    # nothing at all, as before.
    secondary = replace(primary, role="Secondary")
    assert decide(replace(obs, resources=(secondary,)), AUTO).actions == ()
    no_vip = world(resources=(primary,), peer=peer, vip_local=False, daemon=daemon)
    assert decide(no_vip, AUTO).actions == ()


def test_operator_command_refusals_are_pure():
    assert "only in manual mode" in become_refusal(StorageRole.PRIMARY, AUTO, None)
    obs = world(resources=(res(peer_role="Primary"),))
    assert "peer is Primary for iscsi1" in become_refusal(StorageRole.PRIMARY, MANUAL, obs)
    assert become_refusal(StorageRole.SECONDARY, MANUAL, None) is None
    primary_here = world(resources=(res(role="Primary"),), vip_local=True, serving=True)
    assert manual_disable_refusal(primary_here) is None
    assert "become-secondary" in manual_disable_refusal(
        world(PoolRole.SLAVE, resources=(res(role="Primary"),))
    )
