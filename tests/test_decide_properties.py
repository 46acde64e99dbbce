"""Properties of decide() that must hold for any observation (Hypothesis)."""

from hypothesis import given, settings
from hypothesis import strategies as st
from iscsi_ha.controller.decide import decide
from iscsi_ha.controller.model import (
    DRBD_CONNECTION_STATES,
    DRBD_DISK_STATES,
    BindVip,
    ManualMode,
    PoolRole,
    Promote,
    ServeTarget,
    StorageRole,
)
from worlds import FakeWorld, res, world

resources = st.builds(
    lambda i, **kw: res(f"r{i}", **kw),
    i=st.integers(0, 3),
    configured=st.booleans(),
    role=st.sampled_from(["Primary", "Secondary", "Unknown"]),
    peer_role=st.sampled_from(["Primary", "Secondary", "Unknown"]),
    connection=st.sampled_from(DRBD_CONNECTION_STATES),
    disk=st.sampled_from(DRBD_DISK_STATES),
    peer_disk=st.sampled_from(DRBD_DISK_STATES),
    split_brain=st.booleans(),
    quorum=st.booleans(),
).filter(lambda r: r.configured or r.role == "Unknown")

observations = st.builds(
    world,
    pool=st.sampled_from(list(PoolRole)),
    resources=st.lists(resources, min_size=1, max_size=3, unique_by=lambda r: r.name).map(tuple),
    daemon=st.booleans(),
    serving=st.booleans(),
    vip_local=st.booleans(),
    conflict=st.sampled_from([None, False, True]),
    announce_due=st.booleans(),
)
modes = st.sampled_from(
    [
        ManualMode(),
        ManualMode(True),
        ManualMode(True, StorageRole.PRIMARY),
        ManualMode(True, StorageRole.SECONDARY),
    ]
)


@settings(max_examples=400, deadline=None)
@given(observations, modes)
def test_never_promotes_while_the_peer_is_primary(obs, mode):
    plan = decide(obs, mode)
    for a in plan.actions:
        if isinstance(a, Promote):
            assert obs.resource(a.resource).peer_role != "Primary"
            assert not obs.resource(a.resource).split_brain


@settings(max_examples=400, deadline=None)
@given(observations, modes)
def test_never_binds_the_vip_when_another_host_answers(obs, mode):
    if obs.vip.conflict:
        assert BindVip() not in decide(obs, mode).actions


@settings(max_examples=400, deadline=None)
@given(observations, modes)
def test_no_target_and_no_vip_without_primary(obs, mode):
    """Walking the plan on a fake world never serves a target or binds the VIP too early."""
    w = FakeWorld(obs)
    for action in decide(obs, mode).actions:
        if isinstance(action, (ServeTarget, BindVip)):
            assert all(r.role == "Primary" for r in w.obs.resources)
        if isinstance(action, BindVip):
            assert w.obs.target.serving
        if not w.apply(action):
            break


@settings(max_examples=300, deadline=None)
@given(observations)
def test_unknown_pool_role_changes_nothing(obs):
    from dataclasses import replace

    from worlds import PoolObservation

    obs = replace(obs, pool=PoolObservation(PoolRole.UNKNOWN, None, "pool.conf is empty"))
    plan = decide(obs, ManualMode())
    assert plan.actions == () and plan.held


@settings(max_examples=400, deadline=None)
@given(observations, modes)
def test_a_plan_carried_out_leaves_a_converged_state(obs, mode):
    """A plan without refusals, applied in full, leaves nothing to do: deciding again is empty."""
    plan = decide(obs, mode)
    if plan.held or plan.refusals:
        return
    w = FakeWorld(obs)
    assert all(w.apply(a) for a in plan.actions)
    again = decide(w.obs, mode)
    assert again.converged, (plan, again)
    assert decide(w.obs, mode).actions == ()
