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

Metrics (the list the alert rules and dashboards are written against; ``name{labels}  type``,
then what it means)::

    iscsi_ha_up                                               gauge
        1 while the controller runs (always present)
    iscsi_ha_build_info{version, drbd_version}                gauge
        1 (always; drbd_version "unknown" before the first snapshot)
    iscsi_ha_start_time_seconds                               gauge
        unix time the controller started (always present)
    iscsi_ha_host_info{hostname}                              gauge
        1
    iscsi_ha_pool_role{role}                                  gauge
        one-hot over master/slave/unknown
    iscsi_ha_manual_mode                                      gauge
        1 when manual mode is on
    iscsi_ha_manual_mode_requested_role{role}                 gauge
        one-hot over primary/secondary/none: last become-* asked
    iscsi_ha_manual_mode_since_timestamp_seconds              gauge
        unix time manual mode was enabled; absent when off
    iscsi_ha_desired_role{role}                               gauge
        one-hot over primary/secondary/none (none = holding)
    iscsi_ha_refusals                                         gauge
        safety refusals in the last plan
    iscsi_ha_promotion_blocked{resource,reason}               gauge
        1 per resource held for lack of proof of the newest data (or two masters)
    iscsi_ha_planned_actions                                  gauge
        actions in the last plan (0 = converged or holding)
    iscsi_ha_last_cycle_outcome{outcome}                      gauge
        one-hot over ok/held/error
    iscsi_ha_last_cycle_timestamp_seconds                     gauge
        unix time the last cycle ended
    iscsi_ha_last_cycle_duration_seconds                      gauge
        how long the last cycle took
    iscsi_ha_cycle_interval_seconds                           gauge
        configured loop interval
    iscsi_ha_dry_run                                          gauge
        1 when the last cycle only planned (dry run)
    iscsi_ha_observation_error{system}                        gauge
        1 when drbd/target/vip/sr output could not be read
    iscsi_ha_drbd_resource_configured{resource}               gauge
        0 before ``drbdadm up`` (its state series are then absent)
    iscsi_ha_drbd_resource_error{resource}                    gauge
        1 when its state was unreadable (state series absent)
    iscsi_ha_drbd_role{resource, role}                        gauge
        one-hot over model.DRBD_ROLES, local role
    iscsi_ha_drbd_peer_role{resource, role}                   gauge
        one-hot over model.DRBD_ROLES
    iscsi_ha_drbd_connection_state{resource, state}           gauge
        one-hot over model.DRBD_CONNECTION_STATES (8.4 and 9)
    iscsi_ha_drbd_disk_state{resource, side, state}           gauge
        one-hot over model.DRBD_DISK_STATES; side local/peer
    iscsi_ha_drbd_out_of_sync_bytes{resource}                 gauge
        bytes to resync; absent when unknown
    iscsi_ha_drbd_sync_progress_ratio{resource}               gauge
        0..1, 1 when in sync; absent when unknown
    iscsi_ha_drbd_sync_eta_seconds{resource}                  gauge
        estimated time to the end of the resync; only during one
    iscsi_ha_drbd_split_brain{resource}                       gauge
        1 when split brain was detected
    iscsi_ha_drbd_quorum{resource}                            gauge
        1 when DRBD has quorum (DRBD 9; always 1 on 8.4)
    iscsi_ha_target_daemon_up                                 gauge
        1 when the target daemon runs (tgtd; for LIO: the kernel target is loaded)
    iscsi_ha_target_present                                   gauge
        1 when our target exists (in tgtd, or in LIO's configfs)
    iscsi_ha_target_serving                                   gauge
        1 when the target serves every LUN with its binding
    iscsi_ha_target_luns                                      gauge
        LUNs of our target (LUN 0 not counted)
    iscsi_ha_target_sessions                                  gauge
        initiator sessions on our target
    iscsi_ha_lun_info{lun, backend, serial, wwn}              gauge
        1 per served LUN: the identity initiators read (VPD 0x80 serial, VPD 0x83 NAA);
        must be equal on both hosts (alert IscsiHaLunIdentityDiffers)
    iscsi_ha_target_write_cache_enabled{lun}                  gauge
        1 when a WRITE to that LUN may complete before DRBD has it (corrected by the controller)
    iscsi_ha_vip_info{address, interface}                     gauge
        1; the configured VIP ("10.10.10.3/24") and interface
    iscsi_ha_vip_local                                        gauge
        1 when the VIP is bound on this host
    iscsi_ha_vip_conflict                                     gauge
        1 when another host answers ARP for the VIP; absent until probed
    iscsi_ha_vip_announce_due                                 gauge
        1 when the periodic gratuitous ARP was due
    iscsi_ha_xenapi_reachable                                 gauge
        1 when XenAPI answered; absent when not used or not known
    iscsi_ha_sr_unattached_pbds                               gauge
        unattached PBDs of iSCSI SRs; absent when SRs not observed
    iscsi_ha_sr_pbd_attached{sr, sr_name, host}               gauge
        1 when that host's PBD of SR ``sr`` (uuid) is attached
    iscsi_ha_cycles_total{result}                             counter
        cycles by result ok/held/error (all three always present)
    iscsi_ha_cycle_overruns_total                             counter
        cycles that overran their deadline
    iscsi_ha_cycle_duration_seconds                           histogram
        cycle durations
    iscsi_ha_actions_total{action, result}                    counter
        every model.ACTION_NAMES action x ok/error/refused
    iscsi_ha_commands_total{command}                          counter
        external commands run
    iscsi_ha_command_duration_seconds_total{command}          counter
        seconds spent in that command
    iscsi_ha_command_timeouts_total{command}                  counter
        commands killed on timeout
    iscsi_ha_target_daemon_restarts_total                     counter
        tgtd restarts by the self-healing

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

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ..controller import __version__, model
from ..controller.model import Snapshot

log = logging.getLogger(__name__)

GetSnapshot = Callable[[], Optional[Snapshot]]

AS_OF = "as of the last cycle"
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
        return [_empty(name, kind) for name, kind, _labels in METRICS]

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
            log.exception("cannot render the snapshot of the cycle started at %s",
                          snapshot.last.started)
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

P = "iscsi_ha_"


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(P + name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(P + name, doc, labels=list(labels))


def _one(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(P + name, doc, value=float(value))


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
    build = InfoMetricFamily(
        P + "build", "Version of iscsi-ha and of the DRBD kernel module it drives.",
        value={
            "version": snapshot.version if snapshot else version,
            "drbd_version": (snapshot.drbd_version or "unknown") if snapshot else "unknown",
        },
    )
    return [
        _one("up", "1 while the iscsi-ha controller runs.", 1),
        build,
        _one("start_time_seconds", "Unix time the iscsi-ha controller started.",
             snapshot.started if snapshot else created),
    ]


DrbdEnums = Callable[[Sequence[model.DrbdResource]], list[Metric]]


def cycle_families(snap: Snapshot, drbd_enums: Optional[DrbdEnums] = None) -> list[Metric]:
    last = snap.last
    assert last is not None
    out: list[Metric] = []
    add = out.append

    host = _gauge("host_info", f"Host name of this iscsi-ha node, {AS_OF}.", ["hostname"])
    host.add_metric([snap.hostname], 1.0)
    add(host)

    manual = snap.manual
    add(_one("manual_mode", f"1 when manual mode is on (no automatic role changes), {AS_OF}.",
             manual.enabled))
    req = _gauge("manual_mode_requested_role",
                 "Storage role the operator last asked for in manual mode (one series per role, "
                 f"none = not asked), {AS_OF}.", ["role"])
    _one_hot(req, [], ROLE_CHOICES, manual.requested.value if manual.requested else "none")
    add(req)
    if manual.enabled and manual.since is not None:
        add(_one("manual_mode_since_timestamp_seconds",
                 f"Unix time manual mode was enabled, {AS_OF}.", manual.since))

    plan = last.plan
    if plan is not None:
        desired = _gauge("desired_role",
                         "Storage role the controller wants for this host (one series per role, "
                         f"none = holding), {AS_OF}.", ["role"])
        _one_hot(desired, [], ROLE_CHOICES, plan.desired.value if plan.desired else "none")
        add(desired)
        add(_one("refusals", f"Safety refusals in the plan, {AS_OF}.", len(plan.refusals)))
        blocked = _gauge("promotion_blocked",
                         "1 for each resource whose promotion is held because this host cannot "
                         "prove it has the newest data (reason: no_record, untrusted_record, "
                         "restarted, rebooted, gap, not_in_sync, two_masters, "
                         "peer_channel_primary, or "
                         "local_disk_<state> when DRBD's disk is not UpToDate); 0 without a "
                         f"reason when it is not held, {AS_OF}.", ["resource", "reason"])
        for resource, reason in plan.blocked:
            blocked.add_metric([resource, reason], 1.0)
        # A 0 series (empty reason = no label) per resource that is not held, so the alert's
        # selector is checkable on a healthy pool and a dashboard shows the resource.
        held = {resource for resource, _ in plan.blocked}
        for res in last.observation.resources if last.observation else ():
            if res.name not in held:
                blocked.add_metric([res.name, ""], 0.0)
        add(blocked)
        add(_one("planned_actions", f"Actions in the plan (0 = converged or holding), {AS_OF}.",
                 len(plan.actions)))

    outcome = _gauge("last_cycle_outcome",
                     "Outcome of the last cycle (one series per outcome, 1 = current).",
                     ["outcome"])
    _one_hot(outcome, [], [o.value for o in model.Outcome], last.outcome.value)
    add(outcome)
    add(_one("last_cycle_timestamp_seconds", "Unix time the last cycle ended.",
             last.started + last.duration))
    add(_one("last_cycle_duration_seconds", "Duration of the last cycle.", last.duration))
    add(_one("cycle_interval_seconds", f"Configured interval between cycles, {AS_OF}.",
             snap.interval))
    add(_one("dry_run", "1 when the last cycle only planned and changed nothing (dry run).",
             last.dry_run))

    obs = last.observation
    if obs is not None:
        out.extend(observation_families(obs, snap.xenapi_reachable, drbd_enums))
    elif snap.xenapi_reachable is not None:
        add(_one("xenapi_reachable", f"1 when XenAPI answered, {AS_OF}.", snap.xenapi_reachable))

    out.extend(counter_families(snap.counters))
    return out


def observation_families(
    obs: model.Observation, xenapi: Optional[bool], drbd_enums: Optional[DrbdEnums] = None
) -> list[Metric]:
    out: list[Metric] = []
    add = out.append

    pool = _gauge("pool_role",
                  "Pool role of this host from pool.conf (one series per role, 1 = current), "
                  f"{AS_OF}.", ["role"])
    _one_hot(pool, [], [r.value for r in model.PoolRole], obs.pool.role.value)
    add(pool)

    err = _gauge("observation_error",
                 f"1 when the output of that system could not be read, {AS_OF}.", ["system"])
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
    add(_one("target_daemon_up", f"1 when the target daemon (tgtd, or the kernel target LIO) "
             f"runs, {AS_OF}.", tgt.daemon_running))
    add(_one("target_present", f"1 when our iSCSI target exists, {AS_OF}.",
             tgt.target_present))
    add(_one("target_serving",
             f"1 when the iSCSI target serves every configured LUN, {AS_OF}.", tgt.serving))
    add(_one("target_luns", f"LUNs of our iSCSI target (LUN 0 not counted), {AS_OF}.", tgt.luns))
    add(_one("target_sessions", f"iSCSI initiator sessions on our target, {AS_OF}.",
             tgt.sessions))
    lun_info = _gauge("lun_info", "1 per served LUN: the identity an initiator reads (VPD 0x80 "
                      f"unit serial, VPD 0x83 NAA designator), {AS_OF}.",
                      ["lun", "backend", "serial", "wwn"])
    cache = _gauge("target_write_cache_enabled", "1 when a WRITE to the LUN may complete before "
                   f"DRBD has it (the controller turns it off), {AS_OF}.", ["lun"])
    for lun in tgt.lun_info:
        lun_info.add_metric([str(lun.number), tgt.backend, lun.serial, lun.wwn], 1.0)
        if lun.write_cache is not None:
            cache.add_metric([str(lun.number)], float(lun.write_cache))
    add(lun_info)
    add(cache)

    vip = obs.vip
    if vip.address:
        info = _gauge("vip_info",
                      f"The configured virtual IP address and its interface, {AS_OF}.",
                      ["address", "interface"])
        info.add_metric([vip.address, vip.interface], 1.0)
        add(info)
    add(_one("vip_local", f"1 when the virtual IP is bound on this host, {AS_OF}.", vip.local))
    if vip.conflict is not None:
        add(_one("vip_conflict",
                 f"1 when another host answers ARP for the virtual IP, {AS_OF}.", vip.conflict))
    add(_one("vip_announce_due", f"1 when the periodic gratuitous ARP was due, {AS_OF}.",
             vip.announce_due))

    reachable = xenapi if xenapi is not None else (srs.reachable if srs is not None else None)
    if reachable is not None:
        add(_one("xenapi_reachable", f"1 when XenAPI answered, {AS_OF}.", reachable))
    if srs is not None:
        add(_one("sr_unattached_pbds",
                 f"PBDs of iSCSI storage repositories that are not attached, {AS_OF}.",
                 len(srs.unattached_pbds())))
        pbd = _gauge("sr_pbd_attached",
                     f"1 when the host's PBD of the iSCSI SR is attached, {AS_OF}.",
                     ["sr", "sr_name", "host"])
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
    role = _gauge("drbd_role",
                  f"Local DRBD role (one series per role, 1 = current), {AS_OF}.",
                  ["resource", "role"])
    peer_role = _gauge("drbd_peer_role",
                       f"DRBD role of the peer (one series per role, 1 = current), {AS_OF}.",
                       ["resource", "role"])
    conn = _gauge("drbd_connection_state",
                  "DRBD connection state of the resource (one series per state, 1 = current), "
                  f"{AS_OF}.", ["resource", "state"])
    disk = _gauge("drbd_disk_state",
                  "DRBD disk state, local and peer (one series per state, 1 = current), "
                  f"{AS_OF}.", ["resource", "side", "state"])
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
    configured = _gauge("drbd_resource_configured",
                        f"0 when the DRBD resource is not up (not configured), {AS_OF}.",
                        ["resource"])
    error = _gauge("drbd_resource_error",
                   f"1 when the state of the DRBD resource could not be read, {AS_OF}.",
                   ["resource"])
    oos = _gauge("drbd_out_of_sync_bytes", f"Bytes of the resource out of sync, {AS_OF}.",
                 ["resource"])
    progress = _gauge("drbd_sync_progress_ratio",
                      f"Share of the resource in sync, 0..1 (1 = in sync), {AS_OF}.",
                      ["resource"])
    eta = _gauge("drbd_sync_eta_seconds",
                 f"Estimated seconds until the running resync ends, {AS_OF}.", ["resource"])
    split = _gauge("drbd_split_brain", f"1 when DRBD split brain was detected, {AS_OF}.",
                   ["resource"])
    quorum = _gauge("drbd_quorum", f"1 when the DRBD resource has quorum (DRBD 9), {AS_OF}.",
                    ["resource"])
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

    cycles = _counter("cycles", f"Cycles by result since the controller started, {AS_OF}.",
                      ["result"])
    results = [o.value for o in model.Outcome]
    for result in results + sorted(set(c.cycles) - set(results)):
        cycles.add_metric([result], float(c.cycles.get(result, 0)))
    add(cycles)
    add(CounterMetricFamily(P + "cycle_overruns",
                            f"Cycles that overran their deadline, {AS_OF}.",
                            value=float(c.cycle_overruns)))

    hist = c.cycle_duration
    if hist is not None and len(hist.counts) == len(hist.buckets) + 1:
        buckets = [(floatToGoString(b), float(n)) for b, n in zip(hist.buckets, hist.counts)]
        buckets.append(("+Inf", float(hist.counts[-1])))
        add(HistogramMetricFamily(P + "cycle_duration_seconds",
                                  f"Duration of the controller's cycles, {AS_OF}.",
                                  buckets=buckets, sum_value=float(hist.total)))
    elif hist is not None:
        log.warning("cycle-duration histogram has %d counts for %d buckets; not exported",
                    len(hist.counts), len(hist.buckets))

    actions = _counter("actions", f"Actions run, by action and result, {AS_OF}.",
                       ["action", "result"])
    known = [(a, r) for a in model.ACTION_NAMES.values() for r in ACTION_RESULTS]
    for key in known + sorted(set(c.actions) - set(known)):
        actions.add_metric(list(key), float(c.actions.get(key, 0)))
    add(actions)

    commands = sorted(set(c.command_calls) | set(c.command_seconds) | set(c.command_timeouts))
    calls = _counter("commands", f"External commands run, by command, {AS_OF}.", ["command"])
    seconds = _counter("command_duration_seconds",
                       f"Seconds spent in external commands, by command, {AS_OF}.", ["command"])
    timeouts = _counter("command_timeouts",
                        f"External commands killed on timeout, by command, {AS_OF}.",
                        ["command"])
    for cmd in commands:
        calls.add_metric([cmd], float(c.command_calls.get(cmd, 0)))
        seconds.add_metric([cmd], float(c.command_seconds.get(cmd, 0.0)))
        timeouts.add_metric([cmd], float(c.command_timeouts.get(cmd, 0)))
    out += [calls, seconds, timeouts]

    add(CounterMetricFamily(P + "target_daemon_restarts",
                            f"Restarts of the tgt daemon by the self-healing, {AS_OF}.",
                            value=float(c.target_daemon_restarts)))
    return out


# Every family this collector can emit: (name as exposed, type, labels). describe() and the
# tests use it; the docstring table above lists the same names.
METRICS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("iscsi_ha_up", "gauge", ()),
    ("iscsi_ha_build_info", "gauge", ("version", "drbd_version")),
    ("iscsi_ha_start_time_seconds", "gauge", ()),
    ("iscsi_ha_host_info", "gauge", ("hostname",)),
    ("iscsi_ha_pool_role", "gauge", ("role",)),
    ("iscsi_ha_manual_mode", "gauge", ()),
    ("iscsi_ha_manual_mode_requested_role", "gauge", ("role",)),
    ("iscsi_ha_manual_mode_since_timestamp_seconds", "gauge", ()),
    ("iscsi_ha_desired_role", "gauge", ("role",)),
    ("iscsi_ha_refusals", "gauge", ()),
    ("iscsi_ha_promotion_blocked", "gauge", ("resource", "reason")),
    ("iscsi_ha_planned_actions", "gauge", ()),
    ("iscsi_ha_last_cycle_outcome", "gauge", ("outcome",)),
    ("iscsi_ha_last_cycle_timestamp_seconds", "gauge", ()),
    ("iscsi_ha_last_cycle_duration_seconds", "gauge", ()),
    ("iscsi_ha_cycle_interval_seconds", "gauge", ()),
    ("iscsi_ha_dry_run", "gauge", ()),
    ("iscsi_ha_observation_error", "gauge", ("system",)),
    ("iscsi_ha_drbd_resource_configured", "gauge", ("resource",)),
    ("iscsi_ha_drbd_resource_error", "gauge", ("resource",)),
    ("iscsi_ha_drbd_role", "gauge", ("resource", "role")),
    ("iscsi_ha_drbd_peer_role", "gauge", ("resource", "role")),
    ("iscsi_ha_drbd_connection_state", "gauge", ("resource", "state")),
    ("iscsi_ha_drbd_disk_state", "gauge", ("resource", "side", "state")),
    ("iscsi_ha_drbd_out_of_sync_bytes", "gauge", ("resource",)),
    ("iscsi_ha_drbd_sync_progress_ratio", "gauge", ("resource",)),
    ("iscsi_ha_drbd_sync_eta_seconds", "gauge", ("resource",)),
    ("iscsi_ha_drbd_split_brain", "gauge", ("resource",)),
    ("iscsi_ha_drbd_quorum", "gauge", ("resource",)),
    ("iscsi_ha_target_daemon_up", "gauge", ()),
    ("iscsi_ha_target_present", "gauge", ()),
    ("iscsi_ha_target_serving", "gauge", ()),
    ("iscsi_ha_target_luns", "gauge", ()),
    ("iscsi_ha_target_sessions", "gauge", ()),
    ("iscsi_ha_lun_info", "gauge", ("lun", "backend", "serial", "wwn")),
    ("iscsi_ha_target_write_cache_enabled", "gauge", ("lun",)),
    ("iscsi_ha_vip_info", "gauge", ("address", "interface")),
    ("iscsi_ha_vip_local", "gauge", ()),
    ("iscsi_ha_vip_conflict", "gauge", ()),
    ("iscsi_ha_vip_announce_due", "gauge", ()),
    ("iscsi_ha_xenapi_reachable", "gauge", ()),
    ("iscsi_ha_sr_unattached_pbds", "gauge", ()),
    ("iscsi_ha_sr_pbd_attached", "gauge", ("sr", "sr_name", "host")),
    ("iscsi_ha_cycles_total", "counter", ("result",)),
    ("iscsi_ha_cycle_overruns_total", "counter", ()),
    ("iscsi_ha_cycle_duration_seconds", "histogram", ()),
    ("iscsi_ha_actions_total", "counter", ("action", "result")),
    ("iscsi_ha_commands_total", "counter", ("command",)),
    ("iscsi_ha_command_duration_seconds_total", "counter", ("command",)),
    ("iscsi_ha_command_timeouts_total", "counter", ("command",)),
    ("iscsi_ha_target_daemon_restarts_total", "counter", ()),
)


def _empty(name: str, kind: str) -> Metric:
    if kind == "counter":
        return CounterMetricFamily(name, "")
    if kind == "histogram":
        return HistogramMetricFamily(name, "")
    return GaugeMetricFamily(name, "")
