"""Renders the controller's last snapshot as Prometheus metric families.

The controller publishes one immutable ``model.Snapshot`` after each cycle; this collector reads
the latest one once per scrape and turns it into metric families. It never runs a command, never
calls an adapter and never takes a lock: the hand-over is a single reference to a frozen value
(see ``LatestSnapshot``), so a cycle stuck in a hung command cannot delay a scrape -- the scrape
shows the previous cycle, and ``iscsi_ha_last_cycle_timestamp_seconds`` says how old it is.

Every value is as of the last cycle. Enums are one-hot (one series per possible value, 0/1, the
state in a label), and every value DRBD 8.4 or 9 can report has its series even if never seen, so
``rate()``/``changes()`` and dashboards see a 0 rather than nothing. A DRBD word outside the
lists (a state a newer DRBD invents) is still exported, as its own series with value 1.

Before the first cycle (no snapshot yet, or a snapshot whose ``last`` is None) only
``iscsi_ha_up``, ``iscsi_ha_build_info`` and ``iscsi_ha_start_time_seconds`` are exported: no
state is invented. Series marked "absent when ..." below are left out in that situation instead
of reading a made-up 0.

The metrics, their labels and HELP texts are declared once, in ``catalogue.py``; the list with
what each means is ``docs/metrics.md``, generated from it (``make docs``).

Counters and the histogram are cumulative since the controller started, copied into each
snapshot; they too are as of the last cycle (and absent before it). Staleness is PromQL's job:
``time() - iscsi_ha_last_cycle_timestamp_seconds > 3 * iscsi_ha_cycle_interval_seconds`` is what
``/healthz`` checks too.

A sample of the output for the pool master with one resource (shortened)::

    # HELP iscsi_ha_pool_role Pool role of this host from pool.conf (one series per role, ...
    # TYPE iscsi_ha_pool_role gauge
    iscsi_ha_pool_role{role="master"} 1.0
    iscsi_ha_pool_role{role="slave"} 0.0
    iscsi_ha_pool_role{role="unknown"} 0.0
    # HELP iscsi_ha_drbd_connection_state DRBD connection state of the resource (one series ...
    # TYPE iscsi_ha_drbd_connection_state gauge
    iscsi_ha_drbd_connection_state{resource="iscsi1",state="StandAlone"} 0.0
    ...
    iscsi_ha_drbd_connection_state{resource="iscsi1",state="Connected"} 1.0
    ...
    iscsi_ha_drbd_disk_state{resource="iscsi1",side="peer",state="UpToDate"} 1.0
    iscsi_ha_drbd_sync_progress_ratio{resource="iscsi1"} 1.0
    iscsi_ha_target_serving 1.0
    iscsi_ha_vip_local 1.0
    iscsi_ha_last_cycle_outcome{outcome="ok"} 1.0
    iscsi_ha_cycles_total{result="ok"} 1200.0
    iscsi_ha_actions_total{action="promote",result="ok"} 2.0
    iscsi_ha_cycle_duration_seconds_bucket{le="0.05"} 1201.0
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Optional

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ..controller import __version__, model
from ..controller.model import Snapshot
from . import catalogue
from .catalogue import counter, gauge

log = logging.getLogger(__name__)

GetSnapshot = Callable[[], Optional[Snapshot]]

ROLE_CHOICES = ("primary", "secondary", "none")
ACTION_RESULTS = ("ok", "error", "refused")
OBSERVED_SYSTEMS = ("drbd", "target", "vip", "sr")


class LatestSnapshot:
    """The hand-over between the cycle thread and readers (exporter, control socket).

    ``publish()`` replaces one reference; ``get()`` reads it. Both are single bytecode-level
    attribute operations, atomic in CPython, and a ``Snapshot`` is frozen, so neither side ever
    waits for the other: a reader gets the previous snapshot or the new one, never half of one.
    There is deliberately no lock here, so no reader can be blocked by a cycle that hangs.
    """

    __slots__ = ("_snapshot",)

    def __init__(self, snapshot: Optional[Snapshot] = None) -> None:
        self._snapshot = snapshot

    def publish(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def get(self) -> Optional[Snapshot]:
        return self._snapshot


def snapshot_getter(source: Any) -> GetSnapshot:
    """Accept an object with ``.get()`` (``LatestSnapshot``) or a plain callable."""
    get = getattr(source, "get", None)
    if callable(get):
        return get
    if callable(source):
        return source
    raise TypeError(f"need a callable or an object with .get(), not {type(source).__name__}")


class SnapshotCollector(Collector):
    """A custom collector over the controller's latest snapshot.

    ``get_snapshot`` is called exactly once per scrape, so every metric of a scrape comes from the
    same cycle. The rendered families are kept for the snapshot they were built from (compared by
    identity), so repeated scrapes between two cycles only pay for the text exposition.

    From one cycle to the next most families do not change (DRBD states are stable; timestamps
    and counters move). A family equal to the previous one is handed out as the very same object,
    which lets the server reuse its rendered text (``server.Exposition``), and the large one-hot
    DRBD families are not even rebuilt while no resource changed a state. At 64 resources this
    turns ~90 ms of work per cycle on a small host into a few milliseconds.
    """

    def __init__(
        self,
        get_snapshot: Any,
        registry: Optional[CollectorRegistry] = None,
        *,
        version: str = __version__,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._get = snapshot_getter(get_snapshot)
        self._version = version
        # Stands in for the controller's start time until the first snapshot arrives.
        self._created = clock()
        self._cache: tuple[Optional[Snapshot], tuple[Metric, ...]] = (None, ())
        self._previous: dict[str, Metric] = {}
        self._enums: tuple[tuple, list[Metric]] = ((), [])
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        # Names only, so the registry can refuse a clash; never touches the snapshot.
        return [catalogue.empty(m) for m in catalogue.CATALOGUE if m.source == "snapshot"]

    def collect(self) -> Iterator[Metric]:
        snapshot = self._get()
        cached_for, families = self._cache
        if snapshot is None or snapshot is not cached_for:
            families = tuple(self._render(snapshot))
            if snapshot is not None:
                # One tuple assignment: concurrent scrapes see the old or the new pair.
                self._cache = (snapshot, families)
        return iter(families)

    def _render(self, snapshot: Optional[Snapshot]) -> list[Metric]:
        out = base_families(snapshot, self._version, self._created)
        if snapshot is None or snapshot.last is None:
            return out
        try:
            out.extend(cycle_families(snapshot, self._drbd_enums))
        except Exception:  # a bug here must not take /metrics down with it
            log.exception(
                "cannot render the snapshot of the cycle started at %s", snapshot.last.started
            )
        previous = self._previous
        reused = []
        for fam in out:
            old = previous.get(fam.name)
            reused.append(old if old is not None and (old is fam or old == fam) else fam)
        self._previous = {fam.name: fam for fam in reused}
        return reused

    def _drbd_enums(self, resources: Sequence[model.DrbdResource]) -> list[Metric]:
        key = enum_key(resources)
        cached_key, families = self._enums
        if key != cached_key:
            families = drbd_enum_families(resources)
            self._enums = (key, families)
        return families


# ------------------------------------------------------------------------------------------
# Rendering: pure functions from a snapshot to metric families.
# ------------------------------------------------------------------------------------------


def _one_hot(
    fam: GaugeMetricFamily, prefix: list[str], choices: Sequence[str], current: str
) -> None:
    for choice in choices:
        fam.add_metric(prefix + [choice], 1.0 if choice == current else 0.0)
    if current not in choices:
        # A word we do not know (a newer DRBD): still say it, rather than show all zeros.
        fam.add_metric(prefix + [current], 1.0)


def base_families(snapshot: Optional[Snapshot], version: str, created: float) -> list[Metric]:
    """The three metrics that exist from the controller's start, before any cycle."""
    build = catalogue.info(
        "build_info",
        {
            "version": snapshot.version if snapshot else version,
            "drbd_version": (snapshot.drbd_version or "unknown") if snapshot else "unknown",
        },
    )
    return [
        gauge("up", 1),
        build,
        gauge("start_time_seconds", snapshot.started if snapshot else created),
    ]


DrbdEnums = Callable[[Sequence[model.DrbdResource]], list[Metric]]


def cycle_families(snap: Snapshot, drbd_enums: Optional[DrbdEnums] = None) -> list[Metric]:
    last = snap.last
    assert last is not None
    out: list[Metric] = []
    add = out.append

    host = gauge("host_info")
    host.add_metric([snap.hostname], 1.0)
    add(host)

    manual = snap.manual
    add(gauge("manual_mode", manual.enabled))
    req = gauge("manual_mode_requested_role")
    _one_hot(req, [], ROLE_CHOICES, manual.requested.value if manual.requested else "none")
    add(req)
    if manual.enabled and manual.since is not None:
        add(gauge("manual_mode_since_timestamp_seconds", manual.since))
    if snap.switchover_phases:
        switchover = gauge("switchover_duration_seconds")
        for phase, seconds in snap.switchover_phases:
            switchover.add_metric([phase], seconds)
        add(switchover)

    plan = last.plan
    if plan is not None:
        desired = gauge("desired_role")
        _one_hot(desired, [], ROLE_CHOICES, plan.desired.value if plan.desired else "none")
        add(desired)
        add(gauge("refusals", len(plan.refusals)))
        blocked = gauge("promotion_blocked")
        for resource, reason in plan.blocked:
            blocked.add_metric([resource, reason], 1.0)
        # A 0 series (empty reason = no label) per resource that is not held, so the alert's
        # selector is checkable on a healthy pool and a dashboard shows the resource.
        held = {resource for resource, _ in plan.blocked}
        for res in last.observation.resources if last.observation else ():
            if res.name not in held:
                blocked.add_metric([res.name, ""], 0.0)
        add(blocked)
        add(gauge("planned_actions", len(plan.actions)))

    outcome = gauge("last_cycle_outcome")
    _one_hot(outcome, [], [o.value for o in model.Outcome], last.outcome.value)
    add(outcome)
    add(gauge("last_cycle_timestamp_seconds", last.started + last.duration))
    add(gauge("last_cycle_duration_seconds", last.duration))
    add(gauge("cycle_interval_seconds", snap.interval))
    add(gauge("dry_run", last.dry_run))

    obs = last.observation
    if obs is not None:
        out.extend(observation_families(obs, snap.xenapi_reachable, drbd_enums))
    elif snap.xenapi_reachable is not None:
        add(gauge("xenapi_reachable", snap.xenapi_reachable))

    out.extend(counter_families(snap.counters))
    return out


def observation_families(
    obs: model.Observation, xenapi: Optional[bool], drbd_enums: Optional[DrbdEnums] = None
) -> list[Metric]:
    out: list[Metric] = []
    add = out.append

    pool = gauge("pool_role")
    _one_hot(pool, [], [r.value for r in model.PoolRole], obs.pool.role.value)
    add(pool)

    err = gauge("observation_error")
    srs = obs.srs
    errors = {
        "drbd": any(r.error for r in obs.resources),
        "target": bool(obs.target.error),
        "vip": bool(obs.vip.error),
        "sr": bool(srs is not None and srs.error),
    }
    for system in OBSERVED_SYSTEMS:
        err.add_metric([system], float(errors[system]))
    add(err)

    out.extend(drbd_value_families(obs.resources))
    out.extend((drbd_enums or drbd_enum_families)(obs.resources))

    tgt = obs.target
    add(gauge("target_daemon_up", tgt.daemon_running))
    add(gauge("target_present", tgt.target_present))
    add(gauge("target_serving", tgt.serving))
    add(gauge("target_luns", tgt.luns))
    add(gauge("target_sessions", tgt.sessions))
    lun_info = gauge("lun_info")
    cache = gauge("target_write_cache_enabled")
    for lun in tgt.lun_info:
        lun_info.add_metric([str(lun.number), tgt.backend, lun.serial, lun.wwn], 1.0)
        if lun.write_cache is not None:
            cache.add_metric([str(lun.number)], float(lun.write_cache))
    add(lun_info)
    add(cache)

    vip = obs.vip
    if vip.address:
        info = gauge("vip_info")
        info.add_metric([vip.address, vip.interface], 1.0)
        add(info)
    add(gauge("vip_local", vip.local))
    if vip.conflict is not None:
        add(gauge("vip_conflict", vip.conflict))
    add(gauge("vip_announce_due", vip.announce_due))

    reachable = xenapi if xenapi is not None else (srs.reachable if srs is not None else None)
    if reachable is not None:
        add(gauge("xenapi_reachable", reachable))
    if srs is not None:
        add(gauge("sr_unattached_pbds", len(srs.unattached_pbds())))
        pbd = gauge("sr_pbd_attached")
        for sr in srs.srs:
            for p in sr.pbds:
                pbd.add_metric([sr.uuid, sr.name, p.host], float(p.attached))
        add(pbd)
    return out


def _shown(res: model.DrbdResource) -> bool:
    # Unreadable or not up: its other fields are meaningless, so say nothing rather than guess.
    return res.error is None and res.configured


def enum_key(resources: Sequence[model.DrbdResource]) -> tuple:
    """Everything the one-hot DRBD families depend on."""
    return tuple(
        (r.name, _shown(r), r.role, r.peer_role, r.connection, r.disk, r.peer_disk)
        for r in resources
    )


def drbd_enum_families(resources: Sequence[model.DrbdResource]) -> list[Metric]:
    """The one-hot DRBD families: most of the series, and stable between cycles."""
    role = gauge("drbd_role")
    peer_role = gauge("drbd_peer_role")
    conn = gauge("drbd_connection_state")
    disk = gauge("drbd_disk_state")
    for res in resources:
        if not _shown(res):
            continue
        name = [res.name]
        _one_hot(role, name, model.DRBD_ROLES, res.role)
        _one_hot(peer_role, name, model.DRBD_ROLES, res.peer_role)
        _one_hot(conn, name, model.DRBD_CONNECTION_STATES, res.connection)
        _one_hot(disk, [res.name, "local"], model.DRBD_DISK_STATES, res.disk)
        _one_hot(disk, [res.name, "peer"], model.DRBD_DISK_STATES, res.peer_disk)
    return [role, peer_role, conn, disk]


def drbd_value_families(resources: Sequence[model.DrbdResource]) -> list[Metric]:
    """One series per resource each: configured, error, sync figures, split brain, quorum."""
    configured = gauge("drbd_resource_configured")
    error = gauge("drbd_resource_error")
    oos = gauge("drbd_out_of_sync_bytes")
    progress = gauge("drbd_sync_progress_ratio")
    eta = gauge("drbd_sync_eta_seconds")
    split = gauge("drbd_split_brain")
    quorum = gauge("drbd_quorum")
    for res in resources:
        name = [res.name]
        error.add_metric(name, float(res.error is not None))
        if res.error is not None:
            continue
        configured.add_metric(name, float(res.configured))
        if not res.configured:
            continue
        if res.out_of_sync_bytes is not None:
            oos.add_metric(name, float(res.out_of_sync_bytes))
        if res.sync_progress is not None:
            progress.add_metric(name, float(res.sync_progress))
        if res.sync_eta_seconds is not None:
            eta.add_metric(name, float(res.sync_eta_seconds))
        split.add_metric(name, float(res.split_brain))
        quorum.add_metric(name, float(res.quorum))
    return [configured, error, oos, progress, eta, split, quorum]


def counter_families(c: model.Counters) -> list[Metric]:
    out: list[Metric] = []
    add = out.append

    cycles = counter("cycles_total")
    results = [o.value for o in model.Outcome]
    for result in results + sorted(set(c.cycles) - set(results)):
        cycles.add_metric([result], float(c.cycles.get(result, 0)))
    add(cycles)
    add(counter("cycle_overruns_total", c.cycle_overruns))

    hist = c.cycle_duration
    if hist is not None and len(hist.counts) == len(hist.buckets) + 1:
        buckets = [(floatToGoString(b), float(n)) for b, n in zip(hist.buckets, hist.counts)]
        buckets.append(("+Inf", float(hist.counts[-1])))
        add(catalogue.histogram("cycle_duration_seconds", buckets, float(hist.total)))
    elif hist is not None:
        log.warning(
            "cycle-duration histogram has %d counts for %d buckets; not exported",
            len(hist.counts),
            len(hist.buckets),
        )

    actions = counter("actions_total")
    known = [(a, r) for a in model.ACTION_NAMES.values() for r in ACTION_RESULTS]
    for key in known + sorted(set(c.actions) - set(known)):
        actions.add_metric(list(key), float(c.actions.get(key, 0)))
    add(actions)

    commands = sorted(set(c.command_calls) | set(c.command_seconds) | set(c.command_timeouts))
    calls = counter("commands_total")
    seconds = counter("command_duration_seconds_total")
    timeouts = counter("command_timeouts_total")
    for cmd in commands:
        calls.add_metric([cmd], float(c.command_calls.get(cmd, 0)))
        seconds.add_metric([cmd], float(c.command_seconds.get(cmd, 0.0)))
        timeouts.add_metric([cmd], float(c.command_timeouts.get(cmd, 0)))
    out += [calls, seconds, timeouts]

    add(counter("target_daemon_restarts_total", c.target_daemon_restarts))
    return out


# Every family this collector can emit: (name as exposed, type in the text format, labels),
# from the catalogue, for the alert, dashboard and collector tests.
METRICS: tuple[tuple[str, str, tuple[str, ...]], ...] = tuple(
    (m.name, m.exposed_kind, m.labels) for m in catalogue.CATALOGUE if m.source == "snapshot"
)
