"""The metric catalogue: every metric the exporter can emit, declared once.

Each entry is the name as exposed, its type, its label names, its HELP text and a note for the
reader (which values it takes, when it is absent). The collector builds every family from here
(``family()``), ``describe()`` lists it, the alert and dashboard tests check their queries against
it, and ``docs/metrics.md`` is generated from it (``make docs``; a test fails when it drifts).

To add a metric: one entry here, the code that fills it in ``collector.py``, ``make docs``.
Conventions (docs/design.md, "Metrics"): prefix ``iscsi_ha_``, base units, enums one-hot with the
state in a label, HELP saying the value is as of the last cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Type, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

PREFIX = "iscsi_ha_"
AS_OF = "as of the last cycle"
KINDS = ("gauge", "counter", "histogram", "info")


@dataclass(frozen=True)
class MetricDef:
    name: str  # as exposed, with the prefix and the _total / _info suffix
    kind: str  # one of KINDS
    labels: Tuple[str, ...]
    help: str  # the HELP line
    note: str = ""  # for the docs: the values it takes, when it is absent
    # Which collector emits it: "snapshot" (collector.py, from the last cycle), "probe" or
    # "audit" (probe_collector.py, audit_collector.py: those jobs run on their own).
    source: str = "snapshot"

    @property
    def family_name(self) -> str:
        """The name prometheus_client wants: without the suffix it adds itself."""
        for kind, suffix in (("counter", "_total"), ("info", "_info")):
            if self.kind == kind and self.name.endswith(suffix):
                return self.name[: -len(suffix)]
        return self.name

    @property
    def exposed_kind(self) -> str:
        """The type in the text format (an info family is a gauge there)."""
        return "gauge" if self.kind == "info" else self.kind


def _m(
    name: str, kind: str, labels: Sequence[str], help: str, note: str = "", source: str = "snapshot"
) -> MetricDef:
    return MetricDef(PREFIX + name, kind, tuple(labels), help, note, source)


PROBE_HELP = "as of the last storage probe (its own job, every cycle interval)"
AUDIT = "as of the last data-safety audit (every audit.interval)"


CATALOGUE: Tuple[MetricDef, ...] = (
    # -- always present, from the controller's start
    _m("up", "gauge", (), "1 while the iscsi-ha controller runs.", "always present"),
    _m(
        "build_info",
        "info",
        ("version", "drbd_version"),
        "Version of iscsi-ha and of the DRBD kernel module it drives.",
        'always present; drbd_version "unknown" before the first snapshot',
    ),
    _m(
        "start_time_seconds",
        "gauge",
        (),
        "Unix time the iscsi-ha controller started.",
        "always present",
    ),
    # -- the last cycle
    _m("host_info", "gauge", ("hostname",), f"Host name of this iscsi-ha node, {AS_OF}.", "1"),
    _m(
        "pool_role",
        "gauge",
        ("role",),
        f"Pool role of this host from pool.conf (one series per role, 1 = current), {AS_OF}.",
        "one-hot over master/slave/unknown",
    ),
    _m(
        "manual_mode",
        "gauge",
        (),
        f"1 when manual mode is on (no automatic role changes), {AS_OF}.",
    ),
    _m(
        "manual_mode_requested_role",
        "gauge",
        ("role",),
        "Storage role the operator last asked for in manual mode (one series per role, none = "
        f"not asked), {AS_OF}.",
        "one-hot over primary/secondary/none",
    ),
    _m(
        "manual_mode_since_timestamp_seconds",
        "gauge",
        (),
        f"Unix time manual mode was enabled, {AS_OF}.",
        "absent when manual mode is off",
    ),
    _m(
        "switchover_duration_seconds",
        "gauge",
        ("phase",),
        "Seconds each phase of the last `iscsi-cfg switchover` this host took part in took "
        "(check, arm, release, react, promote, serve, vip, total), as published with the last "
        "cycle.",
        "absent until a switchover ran since the controller started; react is measured across "
        "both hosts' clocks",
    ),
    _m(
        "desired_role",
        "gauge",
        ("role",),
        "Storage role the controller wants for this host (one series per role, none = "
        f"holding), {AS_OF}.",
        "one-hot over primary/secondary/none",
    ),
    _m("refusals", "gauge", (), f"Safety refusals in the plan, {AS_OF}."),
    _m(
        "promotion_blocked",
        "gauge",
        ("resource", "reason"),
        "1 for each resource whose promotion is held because this host cannot prove it has the "
        "newest data (reason: no_record, untrusted_record, restarted, rebooted, gap, "
        "not_in_sync, two_masters, peer_channel_primary, or local_disk_<state> when DRBD's "
        f"disk is not UpToDate); 0 without a reason when it is not held, {AS_OF}.",
        "alert IscsiHaPromotionBlocked",
    ),
    _m("planned_actions", "gauge", (), f"Actions in the plan (0 = converged or holding), {AS_OF}."),
    _m(
        "last_cycle_outcome",
        "gauge",
        ("outcome",),
        "Outcome of the last cycle (one series per outcome, 1 = current).",
        "one-hot over ok/held/error",
    ),
    _m(
        "last_cycle_timestamp_seconds",
        "gauge",
        (),
        "Unix time the last cycle ended.",
        "/healthz fails when it is older than 3 intervals",
    ),
    _m("last_cycle_duration_seconds", "gauge", (), "Duration of the last cycle."),
    _m("cycle_interval_seconds", "gauge", (), f"Configured interval between cycles, {AS_OF}."),
    _m("dry_run", "gauge", (), "1 when the last cycle only planned and changed nothing (dry run)."),
    _m(
        "observation_error",
        "gauge",
        ("system",),
        f"1 when the output of that system could not be read, {AS_OF}.",
        "system: drbd, target, vip, sr",
    ),
    # -- DRBD
    _m(
        "drbd_resource_configured",
        "gauge",
        ("resource",),
        f"0 when the DRBD resource is not up (not configured), {AS_OF}.",
        "0 before `drbdadm up` (its state series are then absent)",
    ),
    _m(
        "drbd_resource_error",
        "gauge",
        ("resource",),
        f"1 when the state of the DRBD resource could not be read, {AS_OF}.",
        "its state series are then absent",
    ),
    _m(
        "drbd_role",
        "gauge",
        ("resource", "role"),
        f"Local DRBD role (one series per role, 1 = current), {AS_OF}.",
        "one-hot over model.DRBD_ROLES",
    ),
    _m(
        "drbd_peer_role",
        "gauge",
        ("resource", "role"),
        f"DRBD role of the peer (one series per role, 1 = current), {AS_OF}.",
        "one-hot over model.DRBD_ROLES",
    ),
    _m(
        "drbd_connection_state",
        "gauge",
        ("resource", "state"),
        f"DRBD connection state of the resource (one series per state, 1 = current), {AS_OF}.",
        "one-hot over model.DRBD_CONNECTION_STATES (8.4 and 9)",
    ),
    _m(
        "drbd_disk_state",
        "gauge",
        ("resource", "side", "state"),
        f"DRBD disk state, local and peer (one series per state, 1 = current), {AS_OF}.",
        "one-hot over model.DRBD_DISK_STATES; side local/peer",
    ),
    _m(
        "drbd_out_of_sync_bytes",
        "gauge",
        ("resource",),
        f"Bytes of the resource out of sync, {AS_OF}.",
        "absent when unknown",
    ),
    _m(
        "drbd_sync_progress_ratio",
        "gauge",
        ("resource",),
        f"Share of the resource in sync, 0..1 (1 = in sync), {AS_OF}.",
        "absent when unknown",
    ),
    _m(
        "drbd_sync_eta_seconds",
        "gauge",
        ("resource",),
        f"Estimated seconds until the running resync ends, {AS_OF}.",
        "only during a resync",
    ),
    _m(
        "drbd_split_brain",
        "gauge",
        ("resource",),
        f"1 when DRBD split brain was detected, {AS_OF}.",
    ),
    _m(
        "drbd_quorum",
        "gauge",
        ("resource",),
        f"1 when the DRBD resource has quorum (DRBD 9), {AS_OF}.",
        "always 1 on DRBD 8.4",
    ),
    # -- the iSCSI target
    _m(
        "target_daemon_up",
        "gauge",
        (),
        f"1 when the target daemon (tgtd, or the kernel target LIO) runs, {AS_OF}.",
    ),
    _m(
        "target_present",
        "gauge",
        (),
        f"1 when our iSCSI target exists, {AS_OF}.",
        "in tgtd, or in LIO's configfs",
    ),
    _m(
        "target_serving",
        "gauge",
        (),
        f"1 when the iSCSI target serves every configured LUN, {AS_OF}.",
    ),
    _m("target_luns", "gauge", (), f"LUNs of our iSCSI target (LUN 0 not counted), {AS_OF}."),
    _m("target_sessions", "gauge", (), f"iSCSI initiator sessions on our target, {AS_OF}."),
    _m(
        "lun_info",
        "gauge",
        ("lun", "backend", "serial", "wwn"),
        "1 per served LUN: the identity an initiator reads (VPD 0x80 unit serial, VPD 0x83 NAA "
        f"designator), {AS_OF}.",
        "must be equal on both hosts (alert IscsiHaLunIdentityDiffers)",
    ),
    _m(
        "target_write_cache_enabled",
        "gauge",
        ("lun",),
        "1 when a WRITE to the LUN may complete before DRBD has it (the controller turns it "
        f"off), {AS_OF}.",
    ),
    # -- the VIP
    _m(
        "vip_info",
        "gauge",
        ("address", "interface"),
        f"The configured virtual IP address and its interface, {AS_OF}.",
        '1; address as configured, e.g. "10.10.10.3/24"',
    ),
    _m("vip_local", "gauge", (), f"1 when the virtual IP is bound on this host, {AS_OF}."),
    _m(
        "vip_conflict",
        "gauge",
        (),
        f"1 when another host answers ARP for the virtual IP, {AS_OF}.",
        "absent until probed",
    ),
    _m("vip_announce_due", "gauge", (), f"1 when the periodic gratuitous ARP was due, {AS_OF}."),
    # -- XenAPI and the SRs
    _m(
        "xenapi_reachable",
        "gauge",
        (),
        f"1 when XenAPI answered, {AS_OF}.",
        "absent when XenAPI is not used or not known yet",
    ),
    _m(
        "sr_unattached_pbds",
        "gauge",
        (),
        f"PBDs of iSCSI storage repositories that are not attached, {AS_OF}.",
        "absent when the SRs were not observed",
    ),
    _m(
        "sr_pbd_attached",
        "gauge",
        ("sr", "sr_name", "host"),
        f"1 when the host's PBD of the iSCSI SR is attached, {AS_OF}.",
        "sr is the SR's uuid",
    ),
    # -- counters since the controller started, copied into each snapshot
    _m(
        "cycles_total",
        "counter",
        ("result",),
        f"Cycles by result since the controller started, {AS_OF}.",
        "ok/held/error, all three always present",
    ),
    _m("cycle_overruns_total", "counter", (), f"Cycles that overran their deadline, {AS_OF}."),
    _m("cycle_duration_seconds", "histogram", (), f"Duration of the controller's cycles, {AS_OF}."),
    _m(
        "actions_total",
        "counter",
        ("action", "result"),
        f"Actions run, by action and result, {AS_OF}.",
        "every model.ACTION_NAMES action x ok/error/refused",
    ),
    _m("commands_total", "counter", ("command",), f"External commands run, by command, {AS_OF}."),
    _m(
        "command_duration_seconds_total",
        "counter",
        ("command",),
        f"Seconds spent in external commands, by command, {AS_OF}.",
    ),
    _m(
        "command_timeouts_total",
        "counter",
        ("command",),
        f"External commands killed on timeout, by command, {AS_OF}.",
    ),
    _m(
        "target_daemon_restarts_total",
        "counter",
        (),
        f"Restarts of the tgt daemon by the self-healing, {AS_OF}.",
    ),
    # -- the storage probe (controller/probe.py): this host as an iSCSI client of the VIP.
    # `observer` is this host's node name. Absent until the first probe has run.
    _m(
        "storage_probe_success",
        "gauge",
        ("observer", "lun"),
        "1 when the storage probe from this host logged in to the target at the VIP and read "
        f"block 0 of the LUN, 0 when it could not, {PROBE_HELP}.",
        source="probe",
    ),
    _m(
        "storage_probe_timestamp_seconds",
        "gauge",
        ("observer",),
        "Unix time the last storage probe started.",
        source="probe",
    ),
    _m(
        "storage_probes_total",
        "counter",
        ("observer", "lun"),
        "Storage probes that tried the LUN since the controller started.",
        "the SLO's events",
        source="probe",
    ),
    _m(
        "storage_probe_failures_total",
        "counter",
        ("observer", "lun"),
        "Storage probes that could not read the LUN since the controller started.",
        "the SLO's bad events",
        source="probe",
    ),
    _m(
        "storage_probe_duration_seconds",
        "histogram",
        ("observer",),
        "Duration of whole storage probes (connect, login, every LUN, logout).",
        source="probe",
    ),
    # -- the data-safety audit (controller/audit.py), every audit.interval. Absent until the
    # first audit; a check that could not run leaves its series out and says so in audit_error.
    _m(
        "audit_timestamp_seconds",
        "gauge",
        (),
        "Unix time the last data-safety audit started.",
        source="audit",
    ),
    _m(
        "audit_error",
        "gauge",
        ("check",),
        "1 when that check of the data-safety audit could not run (drbd, lvm, multipath), "
        f"{AUDIT}.",
        "the reason is in the controller's log",
        source="audit",
    ),
    _m(
        "drbd_replication_protocol",
        "gauge",
        ("resource", "protocol"),
        f"DRBD replication protocol the kernel runs (one series per protocol), {AUDIT}.",
        "one-hot over A/B/C; only C waits for both disks",
        source="audit",
    ),
    _m(
        "drbd_split_brain_policy_discards",
        "gauge",
        ("resource", "policy"),
        "1 when the after-sb policy (0pri, 1pri, 2pri) resolves a split brain by discarding one "
        f"side's writes automatically, {AUDIT}.",
        source="audit",
    ),
    _m(
        "drbd_fencing",
        "gauge",
        ("resource",),
        "1 when DRBD fences the peer (fencing resource-only or resource-and-stonith, with a "
        f"fence-peer handler), {AUDIT}.",
        source="audit",
    ),
    _m(
        "lvm_filter_rejects",
        "gauge",
        ("device", "kind"),
        "1 when LVM's filter and global_filter reject the device (kind drbd: /dev/drbdN; "
        f"backing: DRBD's backing device), {AUDIT}.",
        source="audit",
    ),
    _m(
        "multipath_blacklists_drbd",
        "gauge",
        ("device",),
        f"1 when multipath's blacklist leaves the DRBD device alone, {AUDIT}.",
        "absent when multipath is not configured (no multipath.conf)",
        source="audit",
    ),
)

BY_NAME: Dict[str, MetricDef] = {m.name: m for m in CATALOGUE}
if len(BY_NAME) != len(CATALOGUE):  # pragma: no cover - caught at import, by every test
    raise AssertionError("a metric is declared twice in the catalogue")


def get(short: str) -> MetricDef:
    """The entry of ``iscsi_ha_<short>`` (``get("cycles_total")``)."""
    return BY_NAME[PREFIX + short]


def _kind(short: str, kind: str) -> MetricDef:
    m = get(short)
    if m.kind != kind:
        raise TypeError(f"{m.name} is declared a {m.kind}, not a {kind}")
    return m


_F = TypeVar("_F", GaugeMetricFamily, CounterMetricFamily)


def _simple(cls: Type[_F], short: str, kind: str, value: Optional[float]) -> _F:
    m = _kind(short, kind)
    if value is not None:
        return cls(m.family_name, m.help, value=float(value))
    return cls(m.family_name, m.help, labels=list(m.labels))


def gauge(short: str, value: Optional[float] = None) -> GaugeMetricFamily:
    """Gauge ``iscsi_ha_<short>`` with the catalogue's HELP: empty with its labels, or, for an
    unlabelled one, holding ``value``."""
    return _simple(GaugeMetricFamily, short, "gauge", value)


def counter(short: str, value: Optional[float] = None) -> CounterMetricFamily:
    """Counter ``iscsi_ha_<short>`` (``short`` ends in _total), like ``gauge()``."""
    return _simple(CounterMetricFamily, short, "counter", value)


def info(short: str, labels: Dict[str, str]) -> InfoMetricFamily:
    m = _kind(short, "info")
    return InfoMetricFamily(m.family_name, m.help, value=labels)


def histogram(
    short: str, buckets: Sequence[Tuple[str, float]], sum_value: float
) -> HistogramMetricFamily:
    m = _kind(short, "histogram")
    return HistogramMetricFamily(m.family_name, m.help, buckets=list(buckets), sum_value=sum_value)


def empty(m: MetricDef) -> Metric:
    """A family with the name and type only, for ``describe()``."""
    if m.kind == "counter":
        return CounterMetricFamily(m.family_name, "")
    if m.kind == "histogram":
        return HistogramMetricFamily(m.family_name, "")
    return GaugeMetricFamily(m.name, "")


DOC_HEAD = """\
# Metrics

Generated by `make docs` from `exporter/catalogue.py`, where each metric is declared once: do not
edit it by hand. Every value is as of the controller's last cycle (how old that is:
`iscsi_ha_last_cycle_timestamp_seconds`); before the first cycle only the three "always present"
metrics are exported, so no state is invented. Enums are one-hot: one series per possible value,
1 for the current one, and every value DRBD 8.4 or 9 can report has its series. Counters and the
histogram count since the controller started.
"""


def render_markdown() -> str:
    """docs/metrics.md: the catalogue as a table (``make docs`` writes it)."""
    rows = [DOC_HEAD, "| metric | type | labels | meaning |", "|---|---|---|---|"]
    for m in CATALOGUE:
        labels = ", ".join(f"`{label}`" for label in m.labels)
        meaning = m.help + (f" ({m.note})" if m.note else "")
        rows.append(f"| `{m.name}` | {m.exposed_kind} | {labels} | {meaning.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
