"""``iscsi-cfg status``: the control socket's ``status`` answer as typed objects, and the screen.

The answer is JSON (``control.describe_snapshot``: the last ``CycleResult.to_dict()`` plus what
surrounds it). ``Status.from_answer`` reads it once into the dataclasses below, tolerating
missing keys (an older or newer controller may send fewer or more); ``render`` turns a ``Status``
into the text an operator reads at a glance, one small function per block of the screen.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

STALE_GRACE = 5.0  # seconds on top of the interval before a status counts as stale
LABEL = 15  # width of the left column


def _d(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> List[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


# --------------------------------------------------------------------------------------------
# The answer, typed
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceView:
    name: str
    error: Any = None
    configured: bool = True
    role: Any = None
    peer_role: Any = None
    connection: Any = None
    disk: Any = None
    peer_disk: Any = None
    split_brain: bool = False
    quorum: Any = None  # False = lost (DRBD 9)
    sync_progress: Optional[float] = None
    out_of_sync_bytes: Optional[float] = None
    sync_eta_seconds: Optional[float] = None

    @classmethod
    def from_json(cls, r: Mapping[str, Any]) -> "ResourceView":
        return cls(
            name=str(r.get("name", "?")),
            error=r.get("error"),
            configured=bool(r.get("configured", True)),
            role=r.get("role"),
            peer_role=r.get("peer_role"),
            connection=r.get("connection"),
            disk=r.get("disk"),
            peer_disk=r.get("peer_disk"),
            split_brain=bool(r.get("split_brain")),
            quorum=r.get("quorum"),
            sync_progress=r.get("sync_progress"),
            out_of_sync_bytes=r.get("out_of_sync_bytes"),
            sync_eta_seconds=r.get("sync_eta_seconds"),
        )


@dataclass(frozen=True)
class LunView:
    number: Any
    serial: Any
    wwn: Any
    vendor: Any
    product: Any
    write_cache: Optional[bool]

    @classmethod
    def from_json(cls, lun: Mapping[str, Any]) -> "LunView":
        return cls(
            lun.get("number"),
            lun.get("serial"),
            lun.get("wwn"),
            lun.get("vendor"),
            lun.get("product"),
            lun.get("write_cache"),
        )


@dataclass(frozen=True)
class TargetView:
    luns: int = 0
    sessions: int = 0
    backend: Any = None
    serving: bool = False
    target_present: bool = False
    daemon_running: bool = False
    error: Any = None
    lun_info: Tuple[LunView, ...] = ()

    @classmethod
    def from_json(cls, t: Mapping[str, Any]) -> "TargetView":
        return cls(
            luns=int(t.get("luns") or 0),
            sessions=int(t.get("sessions") or 0),
            backend=t.get("backend"),
            serving=bool(t.get("serving")),
            target_present=bool(t.get("target_present")),
            daemon_running=bool(t.get("daemon_running")),
            error=t.get("error"),
            lun_info=tuple(LunView.from_json(_d(x)) for x in _list(t.get("lun_info"))),
        )


@dataclass(frozen=True)
class VipView:
    address: Any = None
    interface: Any = None
    local: bool = False
    conflict: bool = False
    error: Any = None

    @classmethod
    def from_json(cls, v: Mapping[str, Any]) -> "VipView":
        return cls(
            v.get("address"),
            v.get("interface"),
            bool(v.get("local")),
            bool(v.get("conflict")),
            v.get("error"),
        )


@dataclass(frozen=True)
class SrsView:
    error: Any = None
    srs: int = 0
    pbds: Tuple[Tuple[Any, bool], ...] = ()  # (host, attached) of every PBD of every SR

    @classmethod
    def from_json(cls, s: Mapping[str, Any]) -> "SrsView":
        items = _list(s.get("srs"))
        pbds = tuple(
            (p.get("host"), bool(p.get("attached")))
            for sr in items
            for p in (_d(x) for x in _list(_d(sr).get("pbds")))
        )
        return cls(s.get("error"), len(items), pbds)


@dataclass(frozen=True)
class ObservationView:
    pool_role: Any = None
    master_address: Any = None
    pool_detail: Any = None
    resources: Tuple[ResourceView, ...] = ()
    target: TargetView = field(default_factory=TargetView)
    vip: VipView = field(default_factory=VipView)
    srs: Optional[SrsView] = None

    @classmethod
    def from_json(cls, obs: Mapping[str, Any]) -> "ObservationView":
        pool = _d(obs.get("pool"))
        srs = obs.get("srs")
        return cls(
            pool.get("role", "unknown"),
            pool.get("master_address"),
            pool.get("detail"),
            tuple(ResourceView.from_json(_d(r)) for r in _list(obs.get("resources"))),
            TargetView.from_json(_d(obs.get("target"))),
            VipView.from_json(_d(obs.get("vip"))),
            SrsView.from_json(_d(srs)) if srs else None,
        )


@dataclass(frozen=True)
class CycleView:
    outcome: str = "?"
    message: str = ""
    duration: float = 0.0
    desired: Any = None
    reason: str = ""
    acted: bool = False  # the cycle ran actions (its observation predates them)
    observation: Optional[ObservationView] = None

    @classmethod
    def from_json(cls, last: Mapping[str, Any]) -> "CycleView":
        obs = last.get("observation")
        return cls(
            str(last.get("outcome", "?")),
            str(last.get("message", "")),
            float(last.get("duration") or 0.0),
            last.get("desired"),
            str(last.get("reason") or ""),
            bool(last.get("results")),
            ObservationView.from_json(_d(obs)) if obs else None,
        )


@dataclass(frozen=True)
class ManualView:
    enabled: bool = False
    requested: Any = None
    since: Optional[float] = None
    problem: Any = None

    @classmethod
    def from_json(cls, m: Mapping[str, Any]) -> "ManualView":
        return cls(bool(m.get("enabled")), m.get("requested"), m.get("since"), m.get("problem"))


@dataclass(frozen=True)
class Status:
    """A ``status`` answer; ``starting`` when the controller has no snapshot yet."""

    starting: bool
    now: float
    version: Any = "?"
    hostname: Any = "?"
    drbd_version: Any = None
    uptime: Optional[float] = None
    interval: float = 5.0
    manual: ManualView = field(default_factory=ManualView)
    last: Optional[CycleView] = None
    last_cycle_ended: Optional[float] = None
    last_cycle_age: Optional[float] = None
    cycles: Mapping[str, Any] = field(default_factory=dict)
    command_timeouts: int = 0
    target_daemon_restarts: int = 0
    xenapi_reachable: Optional[bool] = None

    @classmethod
    def from_answer(cls, doc: Mapping[str, Any], default_interval: float = 5.0) -> "Status":
        now = doc.get("now") or time.time()
        if doc.get("starting") or "hostname" not in doc:
            return cls(starting=True, now=now)
        last = doc.get("last")
        c = _d(doc.get("counters"))
        return cls(
            starting=False,
            now=now,
            version=doc.get("version", "?"),
            hostname=doc.get("hostname", "?"),
            drbd_version=doc.get("drbd_version"),
            uptime=doc.get("uptime"),
            interval=float(doc.get("interval") or default_interval),
            manual=ManualView.from_json(_d(doc.get("manual"))),
            last=CycleView.from_json(_d(last)) if last else None,
            last_cycle_ended=doc.get("last_cycle_ended"),
            last_cycle_age=doc.get("last_cycle_age"),
            cycles=_d(c.get("cycles")),
            command_timeouts=sum(_d(c.get("command_timeouts")).values()),
            target_daemon_restarts=int(c.get("target_daemon_restarts") or 0),
            xenapi_reachable=doc.get("xenapi_reachable"),
        )


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def fmt_time(t: Optional[float]) -> str:
    if t is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def sync_text(res: ResourceView) -> str:
    """The SYNC column: in sync, or the progress of a resync with its ETA."""
    progress, oos = res.sync_progress, res.out_of_sync_bytes
    if progress is None:
        return "-" if not oos else f"{fmt_bytes(oos)} out of sync"
    if progress >= 1.0 and not oos:
        return "in sync"
    text = f"{progress * 100:.1f}%"
    if res.sync_eta_seconds is not None:
        text += f" ETA {fmt_duration(res.sync_eta_seconds)}"
    if oos:
        text += f" ({fmt_bytes(oos)} to go)"
    return text


def storage_role(resources: Sequence[ResourceView]) -> str:
    roles = [r.role for r in resources if r.configured and not r.error]
    if not roles or len(roles) != len(resources):
        return "UNKNOWN"
    if all(r == "Primary" for r in roles):
        return "PRIMARY"
    if not any(r == "Primary" for r in roles):
        return "SECONDARY"
    return "MIXED"


def _table(rows: List[List[str]], indent: str) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows
    ]


def _line(label: str, text: str) -> str:
    return f"{label.ljust(LABEL)}{text}"


# --------------------------------------------------------------------------------------------
# The screen, block by block: each appends its lines to ``out`` and its warnings to ``warn``
# --------------------------------------------------------------------------------------------


def _roles(s: Status, out: List[str]) -> None:
    last = s.last
    obs = last.observation if last else None
    if obs is not None and last is not None:
        extra = ""
        if obs.pool_role == "slave" and obs.master_address:
            extra = f"  (pool master is {obs.master_address})"
        elif obs.pool_role not in ("master", "slave") and obs.pool_detail:
            extra = f"  ({obs.pool_detail})"
        out.append(_line("HOST ROLE", str(obs.pool_role).upper() + extra))
        if last.desired:
            wanted = f"  (wanted {last.desired}: {last.reason})"
        else:
            wanted = f"  (holding: {last.reason})" if last.reason else ""
        out.append(_line("STORAGE ROLE", storage_role(obs.resources) + wanted))
    elif last is not None:
        out.append(_line("HOST ROLE", "UNKNOWN (the last cycle could not observe)"))
    else:
        out.append(_line("HOST ROLE", "not observed yet"))


def _manual(m: ManualView, out: List[str], warn: List[str]) -> None:
    if m.enabled:
        what = f"operator asked for {m.requested}" if m.requested else "keeping the current roles"
        out.append(_line("MANUAL MODE", f"ON since {fmt_time(m.since)} ({what})"))
    else:
        out.append(_line("MANUAL MODE", "off (storage follows the pool role)"))
    if m.problem:
        warn.append(str(m.problem))


def _drbd(resources: Sequence[ResourceView], out: List[str], warn: List[str]) -> None:
    rows = [["RESOURCE", "ROLE", "PEER", "CONNECTION", "DISK", "PEER DISK", "SYNC"]]
    errors: List[str] = []
    for r in resources:
        if r.error:
            rows.append([r.name, "?", "?", "?", "?", "?", "-"])
            errors.append(f"{r.name}: {r.error}")
            continue
        if not r.configured:
            rows.append([r.name, "down", "-", "Unconfigured", "-", "-", "-"])
            continue
        sync = sync_text(r)
        if r.split_brain:
            sync = "SPLIT BRAIN"
            warn.append(
                f"split brain on {r.name}: DRBD will not reconnect by itself; "
                "resolve by hand (choose the victim)"
            )
        if r.quorum is False:
            sync += " NO QUORUM"
            warn.append(f"{r.name} has lost quorum: I/O is suspended")
        rows.append(
            [
                r.name,
                str(r.role),
                str(r.peer_role),
                str(r.connection),
                str(r.disk),
                str(r.peer_disk),
                sync,
            ]
        )
    table = _table(rows, "")
    out.append(_line("DRBD", table[0]))
    out.extend(_line("", row) for row in table[1:])
    out.extend(_line("", f"ERROR {e}") for e in errors)


def _target(t: TargetView, out: List[str], warn: List[str]) -> None:
    daemon = "kernel target LIO" if t.backend == "lio" else "tgtd"
    if t.serving:
        target = f"serving {plural(t.luns, 'LUN')}, {plural(t.sessions, 'session')}"
    elif t.target_present:
        target = f"INCOMPLETE: target present with {plural(t.luns, 'LUN')}, not serving"
    elif t.daemon_running:
        target = f"standby ({daemon} running, no target)"
    else:
        target = f"stopped ({daemon} not running)"
    if t.error:
        target += f"; ERROR {t.error}"
    out.append(_line("ISCSI TARGET", target))
    # The identity initiators read (XenServer's SCSIid): must be the same on both hosts.
    for i, lun in enumerate(t.lun_info):
        ident = f"LUN {lun.number}: serial {lun.serial}, {lun.wwn}, {lun.vendor} {lun.product}"
        if lun.write_cache:
            ident += ", WRITE CACHE ON"
            warn.append(
                f"LUN {lun.number} acknowledges writes before DRBD has them (write cache on)"
            )
        elif lun.write_cache is False:
            ident += ", write cache off"
        elif not (t.serving or t.target_present):
            ident += " (when served here)"
        out.append(_line("IDENTITY" if i == 0 else "", ident))


def _vip(v: VipView, out: List[str], warn: List[str]) -> None:
    vip = f"{v.address or '?'} on {v.interface or '?'}: "
    vip += "local" if v.local else "not local"
    if v.conflict:
        vip += ", CONFLICT: another host answers ARP for it"
        warn.append(f"another host answers for the VIP {v.address} (duplicate address)")
    if v.error:
        vip += f"; ERROR {v.error}"
    out.append(_line("VIRTUAL IP", vip))


def srs_text(srs: SrsView) -> str:
    if srs.error:
        return f"ERROR {srs.error}"
    text = plural(srs.srs, "SR")
    if not srs.pbds:
        return text
    detached = [host for host, attached in srs.pbds if not attached]
    if detached:
        hosts = ", ".join(str(h) for h in detached)
        return f"{text}, {len(detached)} of {len(srs.pbds)} PBDs NOT attached ({hosts})"
    return f"{text}, all {len(srs.pbds)} PBDs attached"


def _observation(last: CycleView, out: List[str], warn: List[str]) -> None:
    obs = last.observation
    if obs is None:
        return
    _drbd(obs.resources, out, warn)
    _target(obs.target, out, warn)
    _vip(obs.vip, out, warn)
    if obs.srs:
        out.append(_line("ISCSI SRS", srs_text(obs.srs)))
    if last.acted:
        # The snapshot's observation is taken before the cycle acts.
        out.append(
            _line(
                "",
                "(states as observed before the last cycle's actions; the next "
                "cycle shows their effect)",
            )
        )


def _last_cycle(s: Status, out: List[str], warn: List[str]) -> None:
    last, age = s.last, s.last_cycle_age
    if last is None:
        out.append(_line("LAST CYCLE", "none yet (the controller has just started)"))
        return
    out.append(
        _line(
            "LAST CYCLE",
            f"{last.outcome.upper()}, {fmt_duration(age)} ago (took {last.duration * 1000:.0f} ms)",
        )
    )
    for chunk in textwrap.wrap(last.message, 100 - LABEL):
        out.append(_line("", chunk))
    if age is not None and age > s.interval + STALE_GRACE:
        warn.append(
            f"the last cycle ended {fmt_duration(age)} ago at "
            f"{fmt_time(s.last_cycle_ended)}, but the interval is {s.interval:g}s: "
            "the controller may be stuck"
        )


def _counters(s: Status, out: List[str], warn: List[str]) -> None:
    cycles = s.cycles
    out.append(
        _line(
            "SINCE START",
            (
                f"{cycles.get('ok', 0)} ok, {cycles.get('held', 0)} held, {cycles.get('error', 0)} "
                f"error cycles; {plural(s.command_timeouts, 'command timeout')}; "
                f"{plural(s.target_daemon_restarts, 'tgtd restart')}"
            ),
        )
    )
    if s.xenapi_reachable is False:
        warn.append("XenAPI does not answer: SRs are neither checked nor plugged")


def render(s: Status) -> str:
    """The status screen: what an operator reads at a glance."""
    if s.starting:
        return "iscsi-ha controller is starting: no snapshot yet\n"
    head = f"iscsi-ha {s.version} on {s.hostname}"
    if s.drbd_version:
        head += f" - DRBD {s.drbd_version}"
    head += f" - up {fmt_duration(s.uptime)} - {fmt_time(s.now)}"
    out = [head, "-" * max(60, len(head))]
    warn: List[str] = []
    _roles(s, out)
    _manual(s.manual, out, warn)
    if s.last is not None:
        _observation(s.last, out, warn)
    _last_cycle(s, out, warn)
    _counters(s, out, warn)
    out.extend(f"WARNING: {w}" for w in warn)
    return "\n".join(out) + "\n"


def render_answer(doc: Dict[str, Any], default_interval: float = 5.0) -> str:
    """``render`` of a raw ``status`` answer."""
    return render(Status.from_answer(doc, default_interval))
