"""decide(): the whole policy of iscsi-ha, as one pure function.

    decide(observation, manual_mode) -> Plan

No I/O, no clock, no sleep: everything it needs is in its arguments, so every rule below is tested
as a table of inputs and expected plans (tests/test_decide.py), and by properties that must hold for
any input (tests/test_decide_properties.py).

The policy (docs/design.md §3-4):

* The desired storage role follows the pool role: master -> primary, slave -> secondary, unknown ->
  hold (change nothing). In manual mode it is what the operator last asked for, or what is there.
* Promote, in order: bring resources up; start the tgt daemon; make every resource Primary; serve
  the target; bind the VIP and announce it; plug the SRs (pool master only). A refusal anywhere
  stops the plan there: never a target without Primary, never a VIP without a target.
* Demote, in order: VIP away; target stops serving; every resource Secondary.
* Never promote while the peer is Primary (DRBD says so, or with the link down the peer channel
  does from a view newer than the loss: ``peer_channel_primary``), while in split brain, without
  quorum, or when the local disk is not UpToDate and the peer cannot supply good data. Never bind
  the VIP while another host answers for it. Never resolve a split brain.
* Never serve stale data: with the peer unreachable, promote only with proof that this host holds
  every acknowledged write (``stale_refusal``): it watched without a gap while in sync to a peer
  that then vanished (``controller/ledger.py``), or the peer's disk is known Outdated/Inconsistent
  (DRBD says so in its state or its meta-data flags, or the peer channel does), or the operator
  accepted the risk for this resource
  (``become-primary --accept-stale``), or ``promotion.unproven_wait`` ran out. Otherwise hold
  and say why; the plan's ``blocked`` feeds iscsi_ha_promotion_blocked and its page.
* Two masters (both hosts' pool.conf say master, seen over the peer channel): both hold and page;
  the holder only restarts its own target if it died (``keep_serving``).
* The operator commands' refusals are here too (``manual_disable_refusal``, ``become_refusal``),
  so the whole policy reads in this one file; ``cycle.Controller`` only runs them.

Invariant: applying a plan's actions to the world and deciding again yields either an empty plan
(converged) or a refusal; an already converged state yields an empty plan.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from .model import (
    Action,
    AnnounceVip,
    BindVip,
    Demote,
    DrbdResource,
    ManualMode,
    Observation,
    Plan,
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
)

SAFE = Policy()  # the default: never promote without proof

# Peer disk states in which DRBD itself says the peer cannot hold newer data than this host.
PEER_CANNOT_BE_NEWER = frozenset({"Outdated", "Inconsistent"})


def decide(obs: Observation, manual: ManualMode, policy: Policy = SAFE) -> Plan:
    desired, reason = desired_role(obs, manual)
    if desired is None:
        return Plan(desired=None, reason=reason, held=reason)
    unreadable = obs.unreadable()
    if unreadable:
        held = "; ".join(unreadable)
        return Plan(desired=None, reason=reason, held=held)
    if two_masters(obs, manual):
        held = (
            "both hosts' pool.conf say master (split pool, the peer said so over the peer "
            "channel): holding on both, nothing changed; see the runbook"
        )
        return Plan(
            desired=None,
            reason=reason,
            actions=keep_serving(obs),
            held=held,
            blocked=tuple((r.name, "two_masters") for r in obs.resources),
        )
    if desired is StorageRole.PRIMARY:
        return _promote_plan(obs, reason, plug_srs=obs.pool.role is PoolRole.MASTER, policy=policy)
    return _demote_plan(obs, reason)


def keep_serving(obs: Observation) -> Tuple[Action, ...]:
    """While both hosts hold, the one holding the storage (every resource Primary, the VIP local)
    keeps its target up: a tgtd that died meanwhile is restarted and the LUNs served again behind
    the VIP it still holds. Nothing moves: no promotion, demotion or VIP change. (Found by the
    chaos run: tgtd killed during a split pool left the VIP without a target until it ended.)"""
    if current_storage_role(obs.resources) is not StorageRole.PRIMARY or not obs.resources:
        return ()
    if not obs.vip.local or obs.target.serving:
        return ()
    start = () if obs.target.daemon_running else (StartTargetDaemon(),)
    return (*start, ServeTarget())


def two_masters(obs: Observation, manual: ManualMode) -> bool:
    """Both hosts think they are pool master: neither may act on it (manual mode is exempt)."""
    peer = obs.peer
    return (
        not manual.enabled
        and obs.pool.role is PoolRole.MASTER
        and peer is not None
        and peer.reachable
        and peer.pool_role == PoolRole.MASTER.value
    )


def desired_role(obs: Observation, manual: ManualMode) -> Tuple[Optional[StorageRole], str]:
    """The storage role this host should have, and why. (None, why) means hold."""
    if manual.enabled:
        if manual.requested is not None:
            return manual.requested, f"manual mode: operator asked for {manual.requested.value}"
        current = current_storage_role(obs.resources)
        if current is None:
            return None, (
                "manual mode with resources in mixed roles: run become-primary or become-secondary"
            )
        return current, f"manual mode: keeping the current role ({current.value})"
    pool = obs.pool
    if pool.role is PoolRole.MASTER:
        return StorageRole.PRIMARY, "host is pool master"
    if pool.role is PoolRole.SLAVE:
        master = f" (master is {pool.master_address})" if pool.master_address else ""
        return StorageRole.SECONDARY, f"host is pool slave{master}"
    detail = f": {pool.detail}" if pool.detail else ""
    return None, f"pool role unknown{detail}; holding, nothing changed"


def current_storage_role(resources: Tuple[DrbdResource, ...]) -> Optional[StorageRole]:
    """Primary if every resource is Primary, secondary if none is, None when mixed."""
    primaries = [r.role == "Primary" for r in resources]
    if primaries and all(primaries):
        return StorageRole.PRIMARY
    if not any(primaries):
        return StorageRole.SECONDARY
    return None


def promotion_refusal(res: DrbdResource) -> Optional[str]:
    """Why ``res`` must not be made Primary now, or None when it is safe."""
    if res.split_brain:
        return f"not promoting {res.name}: split brain, left to the operator (see the runbook)"
    if res.peer_role == "Primary":
        return f"not promoting {res.name}: peer is Primary"
    if not res.quorum:
        return f"not promoting {res.name}: no quorum"
    if res.disk != "UpToDate":
        if not res.peer_reachable:
            return (
                f"not promoting {res.name}: local disk is {res.disk} and the peer is unreachable "
                f"({res.connection}): no access to UpToDate data"
            )
        if res.peer_disk != "UpToDate":
            return (
                f"not promoting {res.name}: no UpToDate data on either side "
                f"({res.disk}/{res.peer_disk})"
            )
    return None


def peer_channel_primary(res: DrbdResource, obs: Observation) -> Optional[Tuple[str, bool]]:
    """(sentence, wait) when the peer channel says the peer still holds ``res`` Primary.

    DRBD's own ``peer_role`` covers a connected peer. With the replication link down only the
    peer channel can tell that the old holder is alive and still Primary (its ``secondary`` was
    refused because something holds the device open, and no fencing is configured): promoting
    then makes two Primaries that diverge. Only an answer the peer gave from a view *after* the
    link loss counts (the freshness rule of ``two_masters``): a view from before it is what a
    peer that crashed a moment ago last said, and must not stall the failover. ``wait`` is True
    when the answer is older than the loss and the peer still answers: the next one decides.
    """
    peer = obs.peer
    if res.peer_reachable or peer is None or not peer.reachable:
        return None
    theirs = peer.resources.get(res.name) or {}
    if theirs.get("role") != "Primary":
        return None
    if theirs.get("connection", "Connected") != "Connected":
        # The peer has seen the link go and is still Primary: its view postdates the loss.
        link = theirs["connection"]
        return (
            f"not promoting {res.name}: the peer says over the peer channel that it is still "
            f"Primary with the replication link down ({link}); it must demote first "
            "(`iscsi-cfg become-secondary` on the peer, or stop what holds the device open "
            "there)",
            False,
        )
    seen_ago = peer.view_ago()
    lost_ago = obs.evidence_for(res.name).unreachable_for
    if seen_ago is not None and lost_ago is not None and seen_ago < lost_ago:
        # Seen after this host lost the link, and the peer's DRBD has not noticed: alive and
        # Primary on a link that broke one way.
        return (
            f"not promoting {res.name}: the peer says over the peer channel that it is still "
            "Primary (its DRBD has not noticed the link loss yet)",
            False,
        )
    if peer.last_poll_failed:
        return None  # it stopped answering after that view: it went down with the link
    return (
        f"not promoting {res.name}: waiting for the peer's view after the link loss (its "
        "last answer over the peer channel, from before the loss, says Primary)",
        True,
    )


def stale_refusal(
    res: DrbdResource, obs: Observation, policy: Policy = SAFE
) -> Optional[Tuple[str, str]]:
    """(sentence, reason) when promoting ``res`` could serve stale data; None with proof.

    Only a peer that DRBD cannot reach raises the question: a connected peer resyncs whichever
    side is behind before DRBD lets it be Primary.
    """
    if res.peer_reachable:
        return None
    if res.peer_disk in PEER_CANNOT_BE_NEWER:
        return None  # DRBD's own word (set by the fence-peer handler, kept in its meta data)
    peer = obs.peer
    if peer is not None and peer.reachable:
        theirs = peer.resources.get(res.name) or {}
        if theirs.get("disk") in PEER_CANNOT_BE_NEWER:
            return None
    if res.name in obs.accept_stale:
        return None
    ev = obs.evidence_for(res.name)
    if ev.watched or ev.drbd_peer_outdated:
        return None
    waited = ev.unreachable_for
    if policy.unproven_wait > 0 and waited is not None and waited >= policy.unproven_wait:
        return None
    last = ""
    if ev.last_connected is not None:
        ago = _ago(obs.now - ev.last_connected) if obs.now else "some time ago"
        last = f"the peer was {ev.last_peer_role} ({ev.last_peer_disk}) when last seen, {ago}; "
    crashed = (
        "; DRBD's meta data says this host crashed as Primary and has not seen its peer since"
        if ev.drbd_crashed_primary
        else ""
    )
    sentence = (
        f"not promoting {res.name}: cannot prove this host has the newest data: {last}"
        f"{ev.why_not}{crashed} (see `iscsi-cfg become-primary --accept-stale` in the "
        "runbook)"
    )
    return sentence, ev.reason


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def manual_disable_refusal(obs: Observation) -> Optional[str]:
    """Why manual mode may not be left now (the storage role must already match the pool's)."""
    native, why = desired_role(obs, ManualMode())
    current = current_storage_role(obs.resources)
    if native is None:
        return f"refused: cannot leave manual mode while the {why}"
    if current is not native or (native is StorageRole.PRIMARY and not obs.vip.local):
        fix = "become-primary" if native is StorageRole.PRIMARY else "become-secondary"
        have = current.value if current else "mixed"
        return (
            f"refused: storage role is {have} but this {why} (native role {native.value}); "
            f"run `iscsi-cfg {fix}` first"
        )
    return None


def become_refusal(
    role: StorageRole, manual: ManualMode, obs: Optional[Observation]
) -> Optional[str]:
    """Why an operator's become-primary / become-secondary is refused before it is tried.

    ``obs`` is needed for become-primary only. What the cycle itself refuses (no UpToDate data,
    no proof of the newest data, ...) comes back from the cycle it runs.
    """
    if not manual.enabled:
        return (
            f"refused: become-{role.value} works only in manual mode; "
            "run `iscsi-cfg manual-mode-enable` first"
        )
    if role is StorageRole.PRIMARY and obs is not None:
        peers = [
            r.name
            for r in obs.resources
            if r.peer_role == "Primary" or peer_channel_primary(r, obs)
        ]
        if peers:
            return (
                f"refused: the peer is Primary for {', '.join(peers)}; run "
                "`iscsi-cfg become-secondary` on the peer first"
            )
        if not obs.vip.local and obs.vip.conflict:
            return f"refused: VIP {obs.vip.address} is not local but another host answers for it"
    return None


def _no_good_data_alone(res: DrbdResource) -> bool:
    """Refused only because the local disk is not UpToDate while the peer is unreachable."""
    return (
        not res.split_brain
        and res.peer_role != "Primary"
        and res.quorum
        and res.disk != "UpToDate"
        and not res.peer_reachable
    )


def vip_release_known(obs: Observation) -> bool:
    """True when the peer is known to have let go of the VIP, so no ARP probe is needed.

    The peer demotes in the order VIP -> target -> DRBD, so a reachable peer whose resources are
    all Secondary has already removed the VIP. Only then may a promotion skip the duplicate-address
    probe, which costs a full ~2 s when nobody answers (docs/design.md §2: never on the hot
    path of a promotion the controller already knows is safe).
    """
    return bool(obs.resources) and all(
        r.peer_reachable and r.peer_role == "Secondary" for r in obs.resources
    )


def vip_held_elsewhere(obs: Observation) -> bool:
    """Another host answers for the VIP while the peer's release of it is not known."""
    return not obs.vip.local and bool(obs.vip.conflict) and not vip_release_known(obs)


def vip_probe_needed(obs: Observation, policy: Policy = SAFE) -> bool:
    """Whether the duplicate-address probe must run before this observation is decided on.

    Only when the plan would actually reach the VIP: the VIP is not local, the peer's release of
    it is not known, and no resource is down or refused promotion. Probing while the peer is
    still Primary is worse than useless: the old holder drops the VIP a moment before it demotes,
    so the probe lands in that gap, hears nobody, and costs its full ~2 s on the failover path.
    """
    if obs.vip.local or vip_release_known(obs):
        return False
    if any(not r.configured for r in obs.resources):
        return False
    return not any(
        promotion_refusal(r) or peer_channel_primary(r, obs) or stale_refusal(r, obs, policy)
        for r in obs.resources
        if r.role != "Primary"
    )


def _promotion_refusals(
    to_promote: List[DrbdResource], obs: Observation, policy: Policy
) -> Tuple[List[str], List[Tuple[str, str]], bool]:
    """Why each resource may not be promoted now: the refusals, the (resource, reason) pairs
    that page, and whether the peer channel's Primary deserves a quick second look."""
    refusals: List[str] = []
    blocked: List[Tuple[str, str]] = []
    waiting_for_peer = False
    for res in to_promote:
        why = promotion_refusal(res)
        if why:
            refusals.append(why)
            if _no_good_data_alone(res):
                # DRBD's own guard against stale data (with fencing, a rebooted disk comes up
                # Consistent; the fence-peer handler leaves the peer Outdated): it pages too.
                blocked.append((res.name, f"local_disk_{res.disk.lower()}"))
            continue
        primary = peer_channel_primary(res, obs)
        if primary:
            refusals.append(primary[0])
            blocked.append((res.name, "peer_channel_primary"))
            waiting_for_peer = waiting_for_peer or primary[1]
            continue
        stale = stale_refusal(res, obs, policy)
        if stale:
            refusals.append(stale[0])
            blocked.append((res.name, stale[1]))
    return refusals, blocked, waiting_for_peer


def _vip_bind_refusal(obs: Observation) -> str:
    """Why this host may not bind the VIP it does not hold ("" when it may)."""
    vip = obs.vip
    if vip.conflict:
        return f"not binding VIP {vip.address}: another host answers for it (duplicate address)"
    if vip.conflict is None and not vip_release_known(obs):
        return f"not binding VIP {vip.address}: could not check that no other host holds it"
    return ""


def _promote_plan(obs: Observation, reason: str, plug_srs: bool, policy: Policy = SAFE) -> Plan:
    actions: List[Action] = []

    came_up = [r.name for r in obs.resources if not r.configured]
    actions.extend(UpResource(name) for name in came_up)
    if not obs.target.daemon_running:
        actions.append(StartTargetDaemon())
    if came_up:
        # A resource that was just brought up needs a moment to find its peer; promoting it
        # before then could make a second Primary. The next cycle decides with fresh eyes.
        return Plan(
            StorageRole.PRIMARY,
            reason,
            tuple(actions),
            (f"waiting for {', '.join(came_up)} to connect after up",),
            retry_soon=True,
        )

    to_promote = [r for r in obs.resources if r.role != "Primary"]
    refusals, blocked, waiting_for_peer = _promotion_refusals(to_promote, obs, policy)
    if refusals:
        # All or nothing: a half-promoted set of LUNs is worse than none. A peer that is still
        # Primary is usually demoting right now (it saw the same pool.conf change): look again soon.
        peer_demoting = any(r.peer_role == "Primary" and not r.split_brain for r in to_promote)
        return Plan(
            StorageRole.PRIMARY,
            reason,
            tuple(actions),
            tuple(refusals),
            retry_soon=peer_demoting or waiting_for_peer,
            blocked=tuple(blocked),
        )
    vip = obs.vip
    if (to_promote or not obs.target.serving) and vip_held_elsewhere(obs):
        # With the peer unreachable, whoever answers for the VIP is most likely the old holder,
        # alive behind a partition and still serving: DRBD would let both sides be Primary apart
        # and both targets would serve. Wait until it lets go (it demotes VIP first).
        names = ", ".join(r.name for r in to_promote) or "the target"
        refusals.append(
            f"not promoting {names}: another host answers for VIP {vip.address} and the peer is "
            "unreachable (the old holder may still be serving)"
        )
        return Plan(StorageRole.PRIMARY, reason, tuple(actions), tuple(refusals))
    actions.extend(Promote(r.name) for r in to_promote)

    if not obs.target.serving:
        actions.append(ServeTarget())

    if not vip.local:
        held = _vip_bind_refusal(obs)
        if held:
            return Plan(StorageRole.PRIMARY, reason, tuple(actions), (held,))
        actions.extend((BindVip(), AnnounceVip()))
    elif vip.announce_due:
        actions.append(AnnounceVip())

    if plug_srs and obs.srs is not None:
        pbds = obs.srs.unattached_pbds()
        if pbds:
            actions.append(PlugPbds(pbds))
    return Plan(StorageRole.PRIMARY, reason, tuple(actions))


def _demote_plan(obs: Observation, reason: str) -> Plan:
    actions: List[Action] = []
    actions.extend(UpResource(r.name) for r in obs.resources if not r.configured)
    if obs.vip.local:
        actions.append(UnbindVip())
    if obs.target.target_present or obs.target.serving:
        actions.append(StopServingTarget())
    actions.extend(Demote(r.name) for r in obs.resources if r.configured and r.role == "Primary")
    if not obs.target.daemon_running:
        # Keep an empty daemon on the standby: a later promotion then only configures the target.
        actions.append(StartTargetDaemon())
    return Plan(StorageRole.SECONDARY, reason, tuple(actions))
