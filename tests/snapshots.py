"""Realistic ``model.Snapshot`` values for tests: a master, a slave, a sync, a split brain, ...

Each builder returns what the controller would publish after one cycle on a host in that
situation, with counters that look like a controller that has been running for a while. They are
plain functions whose keyword overrides replace ``Snapshot`` fields, so other tests (the exporter,
the control socket, the CLI, the status file) can share them and vary one thing at a time:

    snap = snapshots.master(resources=4, now=time.time() - 60)   # a minute-old snapshot
    snap = snapshots.master(manual=snapshots.manual_on("secondary"), xenapi_reachable=False)

``now`` is the unix time at which the last cycle ended; it defaults to the real clock so a
snapshot is "fresh" unless a test says otherwise. ``resources`` is a count (names iscsi1,
iscsi2, ...) or an explicit tuple of ``DrbdResource``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from iscsi_ha.controller import model
from iscsi_ha.controller.model import (
    ActionResult,
    AnnounceVip,
    BindVip,
    Counters,
    CycleResult,
    DrbdResource,
    HistogramData,
    ManualMode,
    Observation,
    Outcome,
    PbdState,
    Plan,
    PoolObservation,
    PoolRole,
    Promote,
    ServeTarget,
    Snapshot,
    SrObservation,
    SrState,
    StorageRole,
    TargetObservation,
    VipObservation,
)

VERSION = "0.1.0"
DRBD_VERSION = "8.4.11"
HOSTNAME_MASTER = "xcp-host1"
HOSTNAME_SLAVE = "xcp-host2"
INTERVAL = 5.0
VIP = "10.10.10.3/24"
VIP_IF = "xenbr0"
GIB = 1024**3

Resources = "int | Sequence[DrbdResource]"

# Bucket bounds the controller uses for the cycle duration (seconds).
CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def names(n: int) -> tuple[str, ...]:
    return tuple(f"iscsi{i}" for i in range(1, n + 1))


def histogram(
    durations: Sequence[float], buckets: Sequence[float] = CYCLE_BUCKETS
) -> HistogramData:
    """A cumulative histogram of ``durations`` in the model's shape (counts end with +Inf)."""
    counts = [sum(1 for d in durations if d <= b) for b in buckets]
    counts.append(len(durations))
    return HistogramData(
        buckets=tuple(buckets),
        counts=tuple(counts),
        total=float(sum(durations)),
        count=len(durations),
    )


def counters(ok: int = 1200, held: int = 3, error: int = 1, **overrides) -> Counters:
    """Counters of a controller that has run ``ok + held + error`` cycles."""
    n = ok + held + error
    # Most cycles only observe (~30 ms); a few promoted or timed out.
    durations = [0.03] * (n - 3) + [0.4, 1.2, 10.5][: min(3, n)]
    base = Counters(
        cycles={"ok": ok, "held": held, "error": error},
        actions={
            ("promote", "ok"): 2,
            ("promote", "refused"): 1,
            ("target_serve", "ok"): 2,
            ("vip_add", "ok"): 2,
            ("vip_announce", "ok"): 20,
            ("demote", "ok"): 1,
            ("target_stop", "ok"): 1,
            ("vip_del", "ok"): 1,
            ("drbd_up", "error"): 1,
        },
        command_timeouts={"drbdadm": 1},
        command_calls={"drbdadm": 3 * n, "tgtadm": n, "ip": n, "arping": 40, "xenapi": n // 6},
        command_seconds={
            "drbdadm": 0.008 * 3 * n + 10.0,
            "tgtadm": 0.004 * n,
            "ip": 0.002 * n,
            "arping": 2.0 * 40,
            "xenapi": 0.05 * (n // 6),
        },
        target_daemon_restarts=1,
        cycle_overruns=1,
        cycle_duration=histogram(durations),
    )
    return dataclasses.replace(base, **overrides)


def manual_on(requested: str | None = None, since: float | None = None) -> ManualMode:
    return ManualMode(
        enabled=True,
        requested=StorageRole(requested) if requested else None,
        since=since if since is not None else time.time() - 3600,
    )


def _resources(resources: Resources, **fields) -> tuple[DrbdResource, ...]:
    if isinstance(resources, int):
        return tuple(DrbdResource(name=n, **fields) for n in names(resources))
    return tuple(resources)


def _snapshot(
    *,
    hostname: str,
    observation: Observation | None,
    plan: Plan | None,
    results: tuple[ActionResult, ...],
    outcome: Outcome,
    message: str,
    now: float | None,
    duration: float = 0.031,
    manual: ManualMode | None = None,
    xenapi_reachable: bool | None = True,
    counters_: Counters | None = None,
    **cycle_overrides,
) -> Snapshot:
    end = time.time() if now is None else now
    last = CycleResult(
        started=end - duration,
        duration=duration,
        observation=observation,
        plan=plan,
        results=results,
        outcome=outcome,
        message=message,
        **cycle_overrides,
    )
    return Snapshot(
        version=VERSION,
        hostname=hostname,
        drbd_version=DRBD_VERSION,
        started=end - 6200.0,
        interval=INTERVAL,
        last=last,
        manual=manual or ManualMode(),
        counters=counters_ or counters(),
        xenapi_reachable=xenapi_reachable,
    )


def master_srs(attached: bool = True) -> SrObservation:
    return SrObservation(
        srs=(
            SrState(
                uuid="6f1e0c2a-3b8e-4f61-9d5e-2a7c1b0e9f11",
                name="iSCSI HA storage",
                type="lvmoiscsi",
                pbds=(
                    PbdState("a1d2c3b4-0000-4000-8000-000000000001", HOSTNAME_MASTER, True),
                    PbdState("a1d2c3b4-0000-4000-8000-000000000002", HOSTNAME_SLAVE, attached),
                ),
            ),
        ),
        reachable=True,
    )


def master(resources: Resources = 1, now: float | None = None, **overrides) -> Snapshot:
    """The pool master, converged: Primary, target serving, VIP bound, SR attached."""
    res = _resources(
        resources,
        role="Primary",
        peer_role="Secondary",
        connection="Connected",
        disk="UpToDate",
        peer_disk="UpToDate",
        out_of_sync_bytes=0,
        sync_progress=1.0,
    )
    obs = Observation(
        pool=PoolObservation(PoolRole.MASTER),
        resources=res,
        target=TargetObservation(
            daemon_running=True,
            target_present=True,
            serving=True,
            luns=len(res),
            sessions=2,
        ),
        vip=VipObservation(address=VIP, interface=VIP_IF, local=True, conflict=False),
        srs=master_srs(),
    )
    plan = Plan(desired=StorageRole.PRIMARY, reason="host is pool master")
    snap = _snapshot(
        hostname=HOSTNAME_MASTER,
        observation=obs,
        plan=plan,
        results=(),
        outcome=Outcome.OK,
        message="no action: primary, target serving, VIP bound: host is pool master",
        now=now,
    )
    return dataclasses.replace(snap, **overrides)


def promoting(resources: Resources = 1, now: float | None = None, **overrides) -> Snapshot:
    """The cycle in which a former slave became master and took the storage over."""
    res = _resources(
        resources,
        role="Secondary",
        peer_role="Unknown",
        connection="WFConnection",
        disk="UpToDate",
        peer_disk="DUnknown",
        out_of_sync_bytes=0,
        sync_progress=1.0,
    )
    obs = Observation(
        pool=PoolObservation(PoolRole.MASTER),
        resources=res,
        target=TargetObservation(daemon_running=True),
        vip=VipObservation(address=VIP, interface=VIP_IF, local=False, conflict=False),
        srs=master_srs(attached=False),
    )
    actions = tuple(Promote(r.name) for r in res) + (ServeTarget(), BindVip(), AnnounceVip())
    plan = Plan(desired=StorageRole.PRIMARY, reason="host is pool master", actions=actions)
    results = tuple(ActionResult(a, ok=True, duration=0.02) for a in actions)
    snap = _snapshot(
        hostname=HOSTNAME_SLAVE,
        observation=obs,
        plan=plan,
        results=results,
        outcome=Outcome.OK,
        duration=0.35,
        message="promoted iscsi1, target serving, VIP bound: host is pool master",
        now=now,
    )
    return dataclasses.replace(snap, **overrides)


def slave(resources: Resources = 1, now: float | None = None, **overrides) -> Snapshot:
    """The pool slave, converged: Secondary, tgtd running empty, no VIP, SRs not handled."""
    res = _resources(
        resources,
        role="Secondary",
        peer_role="Primary",
        connection="Connected",
        disk="UpToDate",
        peer_disk="UpToDate",
        out_of_sync_bytes=0,
        sync_progress=1.0,
    )
    obs = Observation(
        pool=PoolObservation(PoolRole.SLAVE, master_address="192.0.2.11"),
        resources=res,
        target=TargetObservation(daemon_running=True),
        vip=VipObservation(address=VIP, interface=VIP_IF, local=False, conflict=None),
        srs=None,
    )
    plan = Plan(desired=StorageRole.SECONDARY, reason="host is pool slave")
    snap = _snapshot(
        hostname=HOSTNAME_SLAVE,
        observation=obs,
        plan=plan,
        results=(),
        outcome=Outcome.OK,
        message="no action: secondary, target not serving, VIP absent: host is pool slave",
        now=now,
        counters_=counters(ok=900, held=0, error=0),
    )
    return dataclasses.replace(snap, **overrides)


def syncing(resources: Resources = 1, now: float | None = None, **overrides) -> Snapshot:
    """The master while a resync to the peer is in progress (42 %, 2 minutes to go)."""
    res = _resources(
        resources,
        role="Primary",
        peer_role="Secondary",
        connection="SyncSource",
        disk="UpToDate",
        peer_disk="Inconsistent",
        out_of_sync_bytes=6 * GIB,
        sync_progress=0.42,
        sync_eta_seconds=120.0,
    )
    base = master(res, now=now)
    obs = dataclasses.replace(base.last.observation, resources=res)
    last = dataclasses.replace(
        base.last,
        observation=obs,
        message="no action: primary (resync to peer 42%), target serving, VIP bound: "
        "host is pool master",
    )
    return dataclasses.replace(base, last=last, **overrides)


def split_brain(resources: Resources = 1, now: float | None = None, **overrides) -> Snapshot:
    """The master after a split brain: StandAlone, reported and left to the operator."""
    res = _resources(
        resources,
        role="Primary",
        peer_role="Unknown",
        connection="StandAlone",
        disk="UpToDate",
        peer_disk="DUnknown",
        out_of_sync_bytes=None,
        sync_progress=None,
        split_brain=True,
    )
    base = master(res, now=now)
    obs = dataclasses.replace(base.last.observation, resources=res)
    refusals = tuple(
        f"not reconnecting {r.name}: split brain, the operator must choose a victim" for r in res
    )
    plan = Plan(desired=StorageRole.PRIMARY, reason="host is pool master", refusals=refusals)
    last = dataclasses.replace(
        base.last,
        observation=obs,
        plan=plan,
        outcome=Outcome.HELD,
        message="held: split brain on iscsi1 (StandAlone): resolve by hand",
    )
    return dataclasses.replace(base, last=last, **overrides)


def unknown_pool(resources: Resources = 1, now: float | None = None, **overrides) -> Snapshot:
    """pool.conf says 'broken': the controller holds and changes nothing."""
    res = _resources(
        resources,
        role="Secondary",
        peer_role="Primary",
        connection="Connected",
        disk="UpToDate",
        peer_disk="UpToDate",
        out_of_sync_bytes=0,
        sync_progress=1.0,
    )
    obs = Observation(
        pool=PoolObservation(PoolRole.UNKNOWN, detail="pool.conf says 'broken'"),
        resources=res,
        target=TargetObservation(daemon_running=True),
        vip=VipObservation(address=VIP, interface=VIP_IF, local=False, conflict=None),
        srs=None,
    )
    reason = "pool role unknown: pool.conf says 'broken'"
    plan = Plan(desired=None, reason=reason, held=reason)
    snap = _snapshot(
        hostname=HOSTNAME_SLAVE,
        observation=obs,
        plan=plan,
        results=(),
        outcome=Outcome.HELD,
        message=f"held: {reason}",
        now=now,
        xenapi_reachable=False,
    )
    return dataclasses.replace(snap, **overrides)


def failed_cycle(now: float | None = None, **overrides) -> Snapshot:
    """A cycle that raised before it could observe anything (no observation, no plan)."""
    snap = _snapshot(
        hostname=HOSTNAME_MASTER,
        observation=None,
        plan=None,
        results=(),
        outcome=Outcome.ERROR,
        message="error: cycle raised OSError: [Errno 24] Too many open files",
        now=now,
        xenapi_reachable=None,
    )
    return dataclasses.replace(snap, **overrides)


def odd_resources(now: float | None = None) -> Snapshot:
    """A master whose resources are in states the lists do not all cover.

    iscsi1 reports a connection word DRBD might invent later, iscsi2 is not up yet, iscsi3's
    output could not be read, iscsi4 lost quorum (DRBD 9).
    """
    res = (
        DrbdResource(
            "iscsi1",
            role="Primary",
            peer_role="Secondary",
            connection="Congested",
            disk="UpToDate",
            peer_disk="UpToDate",
            out_of_sync_bytes=0,
            sync_progress=1.0,
        ),
        DrbdResource("iscsi2", configured=False),
        DrbdResource("iscsi3", error="cannot read `drbdadm cstate iscsi3`: 'garbled'"),
        DrbdResource(
            "iscsi4",
            role="Primary",
            peer_role="Unknown",
            connection="Connecting",
            disk="UpToDate",
            peer_disk="DUnknown",
            quorum=False,
        ),
    )
    return master(res, now=now)


def starting(now: float | None = None) -> Snapshot:
    """Published by the controller at start, before its first cycle finished (``last`` None)."""
    start = time.time() if now is None else now
    return Snapshot(
        version=VERSION,
        hostname=HOSTNAME_MASTER,
        drbd_version=DRBD_VERSION,
        started=start,
        interval=INTERVAL,
        last=None,
        manual=ManualMode(),
        counters=Counters(),
    )


ALL = {
    "master": master,
    "promoting": promoting,
    "slave": slave,
    "syncing": syncing,
    "split_brain": split_brain,
    "unknown_pool": unknown_pool,
}

__all__ = [
    "ALL",
    "counters",
    "failed_cycle",
    "histogram",
    "manual_on",
    "master",
    "model",
    "odd_resources",
    "promoting",
    "slave",
    "split_brain",
    "starting",
    "syncing",
    "unknown_pool",
]
