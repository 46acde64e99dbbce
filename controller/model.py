"""The vocabulary of the controller: what it observes, what it wants, what it does, what it reports.

Everything here is a frozen dataclass or an enum, so an observation or a plan can be logged,
compared in a test, serialised to JSON and handed to another thread (the exporter, the control
socket) without a lock. Adapters produce these values, ``decide()`` consumes them, the executor
turns actions into commands, and the cycle wraps it all into a ``Snapshot``.

DRBD states are kept as DRBD spells them ("Primary", "Connected", "UpToDate", ...) instead of being
mapped onto our own enums: the operator reads the same words in ``drbdadm``, the kernel log, our
status output and our metrics, and a state a newer DRBD invents is carried through unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple, Union


class PoolRole(str, enum.Enum):
    MASTER = "master"
    SLAVE = "slave"
    UNKNOWN = "unknown"


class StorageRole(str, enum.Enum):
    PRIMARY = "primary"
    SECONDARY = "secondary"


# DRBD's own words. Lists of every value DRBD 8.4 and 9 can report, so the exporter can emit one
# series per possible value (a state that was never seen must still read 0, not be absent).
DRBD_ROLES = ("Primary", "Secondary", "Unknown")
DRBD_CONNECTION_STATES = (
    # DRBD 8.4 (drbd_strings.c) and DRBD 9 connection + replication states.
    "StandAlone",
    "Disconnecting",
    "Unconnected",
    "Timeout",
    "BrokenPipe",
    "NetworkFailure",
    "ProtocolError",
    "TearDown",
    "WFConnection",
    "WFReportParams",
    "Connecting",
    "Connected",
    "StartingSyncS",
    "StartingSyncT",
    "WFBitMapS",
    "WFBitMapT",
    "WFSyncUUID",
    "SyncSource",
    "SyncTarget",
    "VerifyS",
    "VerifyT",
    "PausedSyncS",
    "PausedSyncT",
    "Ahead",
    "Behind",
    "Established",
    "Off",
)
DRBD_DISK_STATES = (
    "Diskless",
    "Attaching",
    "Detaching",
    "Failed",
    "Negotiating",
    "Inconsistent",
    "Outdated",
    "DUnknown",
    "Consistent",
    "UpToDate",
)

# The connection states in which the peer is reachable and its role is known: Connected and the
# sync, verify and congestion states that follow it in DRBD 8.4's order (through Behind), and
# DRBD 9's Established.
DRBD_PEER_REACHABLE = frozenset(
    DRBD_CONNECTION_STATES[
        DRBD_CONNECTION_STATES.index("Connected") : DRBD_CONNECTION_STATES.index("Behind") + 1
    ]
    + ("Established",)
)


# --------------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolObservation:
    role: PoolRole
    master_address: Optional[str] = None  # the address after "slave:" in pool.conf
    detail: str = ""  # why the role is unknown ("pool.conf is empty", "pool.conf says 'broken'")


@dataclass(frozen=True)
class DrbdResource:
    """One DRBD resource as seen from this host.

    ``configured`` is False before ``drbdadm up`` (DRBD 8.4 prints ``Unconfigured`` with rc 0;
    DRBD 9 answers rc 10 ``Unknown resource``). ``error`` is set when an output could not be read;
    the other fields are then meaningless and ``decide()`` holds.
    """

    name: str
    configured: bool = True
    role: str = "Unknown"  # local role
    peer_role: str = "Unknown"
    connection: str = "StandAlone"
    disk: str = "DUnknown"
    peer_disk: str = "DUnknown"
    out_of_sync_bytes: Optional[int] = None
    sync_progress: Optional[float] = None  # 0..1; 1.0 when nothing is out of sync
    sync_eta_seconds: Optional[float] = None  # only during a resync
    split_brain: bool = False
    quorum: bool = True  # DRBD 9 only; False when I/O is suspended for lack of quorum
    error: Optional[str] = None

    @property
    def peer_reachable(self) -> bool:
        return self.connection in DRBD_PEER_REACHABLE


@dataclass(frozen=True)
class LunInfo:
    """What one served LUN presents to initiators, as read back from the target."""

    number: int
    serial: str = ""  # VPD 0x80 unit serial
    wwn: str = ""  # VPD 0x83 NAA designator, "naa.6..."
    vendor: str = ""
    product: str = ""
    write_cache: Optional[bool] = None  # True: a WRITE may complete before DRBD has it


@dataclass(frozen=True)
class TargetObservation:
    """The target daemon (tgtd, or the kernel target) and our target in it.

    ``serving`` means the configured target exists with every configured LUN, the configured
    identity, the write cache off and an initiator binding; a target that exists only in part
    (or with a wrong identity or the write cache on) counts as not serving (and is completed).
    """

    daemon_running: bool = False
    target_present: bool = False
    serving: bool = False
    luns: int = 0  # LUNs of our target (not counting the controller LUN 0)
    sessions: int = 0
    error: Optional[str] = None
    backend: str = ""  # "tgt" | "lio"
    # What each LUN presents; while not served here, what it will present (from the config).
    lun_info: Tuple[LunInfo, ...] = ()


@dataclass(frozen=True)
class VipObservation:
    address: str = ""  # "10.10.10.3/24"
    interface: str = ""
    local: bool = False
    # Another host answers ARP for the VIP (arping -D rc 1). None = not probed yet.
    conflict: Optional[bool] = None
    announce_due: bool = False  # the periodic gratuitous ARP is due (decided by the cycle's clock)
    error: Optional[str] = None


@dataclass(frozen=True)
class PbdState:
    uuid: str
    host: str  # host name or uuid the PBD belongs to
    attached: bool


@dataclass(frozen=True)
class SrState:
    uuid: str
    name: str
    type: str
    pbds: Tuple[PbdState, ...] = ()


@dataclass(frozen=True)
class SrObservation:
    srs: Tuple[SrState, ...] = ()
    reachable: bool = True  # XenAPI answered
    error: Optional[str] = None

    def unattached_pbds(self) -> Tuple[str, ...]:
        return tuple(p.uuid for sr in self.srs for p in sr.pbds if not p.attached)


@dataclass(frozen=True)
class ManualMode:
    """Operator override, persisted in the state directory (see ``controller/state.py``)."""

    enabled: bool = False
    requested: Optional[StorageRole] = None  # last become-primary / become-secondary
    since: Optional[float] = None  # unix time manual mode was enabled


@dataclass(frozen=True)
class Evidence:
    """What this host can prove about holding the newest data of one resource.

    Built by ``controller/ledger.py`` from what this controller watched (see that module for the
    exact rule); ``decide()`` only reads it. Everything defaults to "no proof".
    """

    resource: str
    # Watched without a gap, Connected and UpToDate, to a peer that then vanished (SPEC: protocol
    # C means every acknowledged write is here).
    watched: bool = False
    why_not: str = "no record of this resource in the ledger"  # when not watched, in words
    reason: str = "no_record"  # machine-readable kind of why_not, the metric's ``reason`` label
    last_connected: Optional[float] = None  # unix time this host last saw the peer connected
    last_peer_role: Optional[str] = None  # the peer's role and disk then
    last_peer_disk: Optional[str] = None
    last_role: Optional[str] = None
    # Seconds this controller has watched the peer be unreachable, without a gap (for the
    # relaxing setting promotion.unproven_wait); None when not known.
    unreachable_for: Optional[float] = None
    # DRBD's own meta-data flags (drbdadm get-gi, 8.4), read while the peer is unreachable:
    # "the peer's disk was outdated or inconsistent" is proof; "crashed primary" is said.
    drbd_peer_outdated: bool = False
    drbd_crashed_primary: bool = False


@dataclass(frozen=True)
class PeerObservation:
    """The other controller, as it answered over the peer channel (controller/peer.py)."""

    reachable: bool = False
    pool_role: Optional[str] = None  # "master" | "slave" | "unknown"
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> states
    age: Optional[float] = None  # seconds since the answer
    error: Optional[str] = None
    answered_at: Optional[float] = None  # monotonic time of the answer (this process's clock)
    # How old the peer's own observation was when it answered (its last cycle; a duration, so no
    # clock is compared across hosts). With ``age``: how long ago the peer saw what it reports.
    view_age: Optional[float] = None
    # The newest poll got no answer while this (older) one is still within its lifetime.
    last_poll_failed: bool = False

    def view_ago(self) -> Optional[float]:
        """Seconds since the peer made the observation it reported, or None when unknown."""
        if self.age is None or self.view_age is None:
            return None
        return self.age + self.view_age


@dataclass(frozen=True)
class Policy:
    """Settings of the promotion rule (config section ``promotion``)."""

    # Promote without proof after watching the peer unreachable this long (0 = never; the safe
    # default). Like DRBD's degr-wfc-timeout: it trades the risk of serving stale data for
    # availability.
    unproven_wait: float = 0.0


@dataclass(frozen=True)
class Observation:
    pool: PoolObservation
    resources: Tuple[DrbdResource, ...]
    target: TargetObservation
    vip: VipObservation
    srs: Optional[SrObservation] = None  # None when not observed (slave, or SR handling off)
    evidence: Tuple[Evidence, ...] = ()  # per resource; a resource without one has no proof
    peer: Optional[PeerObservation] = None  # None when no peer channel is configured
    now: float = 0.0  # unix time of the observation (decide() has no clock; for "2 h ago")
    # Resources the operator accepted to promote without proof (become-primary --accept-stale).
    accept_stale: Tuple[str, ...] = ()

    def evidence_for(self, name: str) -> Evidence:
        for ev in self.evidence:
            if ev.resource == name:
                return ev
        return Evidence(name)

    def resource(self, name: str) -> DrbdResource:
        for res in self.resources:
            if res.name == name:
                return res
        raise KeyError(name)

    def unreadable(self) -> Tuple[str, ...]:
        """Reasons this observation cannot be trusted; decide() holds when there are any."""
        errs = [r.error for r in self.resources if r.error]
        for part in (self.target, self.vip):
            if part.error:
                errs.append(part.error)
        return tuple(errs)


# --------------------------------------------------------------------------------------------
# Actions and plans
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpResource:
    resource: str


@dataclass(frozen=True)
class Promote:
    resource: str


@dataclass(frozen=True)
class Demote:
    resource: str


@dataclass(frozen=True)
class StartTargetDaemon:
    pass


@dataclass(frozen=True)
class ServeTarget:
    """Create (or complete) the target, its LUNs and the initiator binding from the config."""


@dataclass(frozen=True)
class StopServingTarget:
    """Delete the target with --force; the daemon stays up, empty, for a fast promotion."""


@dataclass(frozen=True)
class BindVip:
    pass


@dataclass(frozen=True)
class UnbindVip:
    pass


@dataclass(frozen=True)
class AnnounceVip:
    """Gratuitous ARP (in the background) so clients learn the VIP's MAC."""


@dataclass(frozen=True)
class PlugPbds:
    pbds: Tuple[str, ...]


Action = Union[
    UpResource,
    Promote,
    Demote,
    StartTargetDaemon,
    ServeTarget,
    StopServingTarget,
    BindVip,
    UnbindVip,
    AnnounceVip,
    PlugPbds,
]

# Names used in logs, JSON and the ``action`` label of iscsi_ha_actions_total.
ACTION_NAMES = {
    UpResource: "drbd_up",
    Promote: "promote",
    Demote: "demote",
    StartTargetDaemon: "target_start",
    ServeTarget: "target_serve",
    StopServingTarget: "target_stop",
    BindVip: "vip_add",
    UnbindVip: "vip_del",
    AnnounceVip: "vip_announce",
    PlugPbds: "sr_plug",
}


def action_name(action: Action) -> str:
    return ACTION_NAMES[type(action)]


def action_to_dict(action: Action) -> dict:
    out: dict = {"action": action_name(action)}
    out.update(_plain(dataclasses.asdict(action)))
    return out


@dataclass(frozen=True)
class Plan:
    """What one cycle will do.

    ``desired`` is None when the controller holds (pool role unknown, unreadable state).
    ``refusals`` are the safety reasons that cut the plan short ("not promoting iscsi1: peer is
    Primary"); the actions listed are the ones that are safe to run before that point.
    """

    desired: Optional[StorageRole]
    reason: str  # why this role ("host is pool master", "manual mode: operator asked for ...")
    actions: Tuple[Action, ...] = ()
    refusals: Tuple[str, ...] = ()
    held: Optional[str] = None  # set when nothing is done on purpose, with the reason
    # The refusal is expected to clear within seconds (the peer is demoting right now, a resource
    # just came up): the daemon runs the next cycle soon instead of a full interval later.
    retry_soon: bool = False
    # (resource, reason) for each promotion held for lack of proof of the newest data; exported
    # as iscsi_ha_promotion_blocked{resource, reason} and paged on.
    blocked: Tuple[Tuple[str, str], ...] = ()

    @property
    def converged(self) -> bool:
        return not self.actions and not self.refusals and self.held is None


# --------------------------------------------------------------------------------------------
# Results and snapshots
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """What an adapter's mutating method returns (``Drbd.primary``, ``Target.serve``, ...).

    ``refused`` marks a safety refusal (DRBD's rc 11 "Multiple primaries not allowed", a VIP
    conflict): reported as such and not retried in a tight loop. ``message`` carries the system's
    own words (DRBD's message, tgtadm's error) so the operator sees what the system said.
    """

    ok: bool
    message: str = ""
    refused: bool = False
    reason: Optional[str] = None  # machine-readable kind: "multiple_primaries", "held_open", ...


class Outcome(str, enum.Enum):
    OK = "ok"  # converged, or every planned action succeeded
    HELD = "held"  # nothing done on purpose (pool role unknown, refusal, unreadable output)
    ERROR = "error"  # an action failed or the cycle raised


@dataclass(frozen=True)
class ActionResult:
    action: Action
    ok: bool
    message: str = ""
    duration: float = 0.0
    # A DRBD refusal or a detected conflict: a safety stop, not a malfunction.
    refused: bool = False
    # The adapter's machine-readable kind of failure (StepResult.reason: "timeout",
    # "multiple_primaries", "pbd_plug_failed", ...), for scripts reading `status --json`.
    reason: Optional[str] = None

    @property
    def result_label(self) -> str:
        return "ok" if self.ok else ("refused" if self.refused else "error")


@dataclass(frozen=True)
class CycleResult:
    started: float  # unix time
    duration: float
    observation: Optional[Observation]
    plan: Optional[Plan]
    results: Tuple[ActionResult, ...]
    outcome: Outcome
    message: str  # the one sentence that goes to the log
    overran: bool = False
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {
            "started": self.started,
            "duration": self.duration,
            "outcome": self.outcome.value,
            "message": self.message,
            "overran": self.overran,
            "dry_run": self.dry_run,
            "observation": (
                _plain(dataclasses.asdict(self.observation)) if self.observation else None
            ),
            "plan": [action_to_dict(a) for a in self.plan.actions] if self.plan else [],
            "desired": self.plan.desired.value if self.plan and self.plan.desired else None,
            "reason": self.plan.reason if self.plan else "",
            "refusals": list(self.plan.refusals) if self.plan else [],
            "held": self.plan.held if self.plan else None,
            "blocked": [list(b) for b in self.plan.blocked] if self.plan else [],
            "results": [
                {
                    **action_to_dict(r.action),
                    "ok": r.ok,
                    "refused": r.refused,
                    "reason": r.reason,
                    "message": r.message,
                    "duration": r.duration,
                }
                for r in self.results
            ],
        }


@dataclass(frozen=True)
class HistogramData:
    """A cumulative histogram in Prometheus' shape, copied into each snapshot."""

    buckets: Tuple[float, ...]  # upper bounds, ascending, without +Inf
    counts: Tuple[int, ...]  # cumulative count per bucket, then one more for +Inf
    total: float = 0.0
    count: int = 0


@dataclass(frozen=True)
class Counters:
    """Cumulative counters since the controller started (copied into each snapshot)."""

    cycles: Mapping[str, int] = field(default_factory=dict)  # outcome -> count
    actions: Mapping[Tuple[str, str], int] = field(default_factory=dict)  # (action, result) -> n
    command_timeouts: Mapping[str, int] = field(default_factory=dict)  # command -> n
    command_calls: Mapping[str, int] = field(default_factory=dict)
    command_seconds: Mapping[str, float] = field(default_factory=dict)  # command -> total time
    target_daemon_restarts: int = 0
    cycle_overruns: int = 0
    cycle_duration: Optional[HistogramData] = None


@dataclass(frozen=True)
class Snapshot:
    """Everything the exporter and the control socket show; replaced whole after each cycle."""

    version: str
    hostname: str
    drbd_version: str
    started: float  # when the controller started (unix time)
    interval: float
    last: Optional[CycleResult]
    manual: ManualMode
    counters: Counters
    xenapi_reachable: Optional[bool] = None
    # The last `iscsi-cfg switchover` this host took part in: (phase, seconds), switchover.PHASES.
    switchover_phases: Tuple[Tuple[str, float], ...] = ()


def _plain(value: Any) -> Any:
    """Enums to their values, tuples to lists: for JSON."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
