"""Split brain: both hosts' evidence, which side should survive, and DRBD's steps to get there.

Pure: no I/O, no clock. ``splitbrain_ops.py`` gathers a ``Side`` on each host (the peer's over the
peer channel) and runs the steps; ``splitbrain_cli.py`` is ``iscsi-cfg split-brain``.

Why a guided recovery: after a split brain the operator picks the host whose data survives, and
DRBD throws away every write the other host took since the two diverged. Picking wrong rolls the
VMs back in time. The facts that decide it are spread over both hosts: which one served the
target with sessions while the two were apart (the ledger, the target), how much each changed
(DRBD's out-of-sync count, the bitmap of blocks written since the disconnection), DRBD's data
generations (a common ancestor and two new currents prove the divergence). This module puts them
side by side and recommends.

Real DRBD 8.4 detects a split brain on one side only about one time in three: that side is
``StandAlone`` with "Split-Brain detected but unresolved" in its kernel log, the other stays
``WFConnection`` and logs nothing (captured in the VM lab, ``tests/fixtures/drbd84-splitbrain``).
So a split brain is recognised when *either* side detected it, and the steps are planned from
each side's own connection state: the victim is disconnected first when it is not StandAlone
(``connect --discard-my-data`` needs a StandAlone resource), the survivor is told to ``connect``
only when it is StandAlone (from WFConnection it accepts the victim by itself).

The recommendation, in order of weight:

1. **The VMs' writes.** A side that served the target with iSCSI sessions while Primary without
   its peer (the ledger's ``alone_sessions``), or serves with sessions now, has the VMs' writes.
   When exactly one side has them, it is the survivor, and choosing the other is refused unless
   forced. When both have them, no choice keeps everything: either needs ``--force``.
2. Without that evidence: the side with more changes since the divergence (DRBD's out-of-sync
   count; DRBD's own ``discard-least-changes`` policy decides by the same count), said to be a
   weaker reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .systems.drbd import GenerationIds, parse_get_gi

SPLIT_BRAIN_KINDS = ("none", "both", "one-sided", "diverged", "unknown")

# The actions of a resolve, in DRBD's words (``drbdadm ACTION RESOURCE``).
DISCONNECT, SECONDARY, CONNECT_DISCARD, CONNECT = (
    "disconnect",
    "secondary",
    "connect --discard-my-data",
    "connect",
)
ACTIONS = (DISCONNECT, SECONDARY, CONNECT_DISCARD, CONNECT)


@dataclass(frozen=True)
class Side:
    """One host's view of one resource, as gathered on that host (see ``splitbrain_ops``).

    Unknown is None throughout: a field a host could not read is shown as unknown and never
    counts as evidence either way.
    """

    host: str
    resource: str
    error: Optional[str] = None  # the host or its DRBD state could not be read at all
    role: str = "Unknown"
    peer_role: str = "Unknown"
    connection: str = "Unknown"
    disk: str = "DUnknown"
    peer_disk: str = "DUnknown"
    split_brain: bool = False  # StandAlone and the kernel log says "Split-Brain detected ..."
    out_of_sync_bytes: Optional[int] = None
    sync_progress: Optional[float] = None
    sync_eta_seconds: Optional[float] = None
    gi: Optional[str] = None  # `drbdadm get-gi` as DRBD printed it (8.4)
    pool_role: Optional[str] = None
    manual: Optional[bool] = None  # the controller is in manual mode
    manual_requested: Optional[str] = None  # "primary" | "secondary": the operator's last ask
    vip_local: Optional[bool] = None
    target_present: Optional[bool] = None
    sessions: Optional[int] = None  # iSCSI sessions on this host's target now
    # From the ledger: this host Primary while its peer was unreachable (first and last seen)
    # and the most target sessions seen meanwhile; last time the two were seen in sync.
    alone_primary_since: Optional[float] = None
    alone_primary_last: Optional[float] = None
    alone_sessions: Optional[int] = None
    last_in_sync: Optional[float] = None
    # XenAPI: the pool's VMs with disks on this target's SRs ("name (Running on host, 1
    # disk(s))"); None when XenAPI is off or did not answer (``vms_error`` says why).
    vms: Optional[Tuple[str, ...]] = None
    vms_error: Optional[str] = None
    # The backing device (`drbdadm sh-ll-dev`) and, when it is an LVM logical volume, its name
    # and the free space of its volume group (for a snapshot before discarding); else why not.
    backing: Optional[str] = None
    lvm_volume: Optional[str] = None
    lvm_free: Optional[int] = None
    lvm_error: Optional[str] = None
    now: Optional[float] = None  # the host's clock when gathered

    @property
    def generation(self) -> Optional[GenerationIds]:
        if not self.gi:
            return None
        try:
            return parse_get_gi(self.gi)
        except ValueError:
            return None

    @property
    def serving_now(self) -> bool:
        return bool(self.sessions) or bool(self.vip_local)

    @property
    def wrote_alone(self) -> bool:
        """The VMs wrote here while the peer was away (sessions while Primary alone), or are
        connected to it now."""
        return bool(self.alone_sessions) or bool(self.sessions)


def side_to_dict(side: Side) -> Dict[str, Any]:
    out = dataclasses.asdict(side)
    if side.vms is not None:
        out["vms"] = list(side.vms)
    return out


_TYPES = {f.name: f.type for f in dataclasses.fields(Side)}


def side_from_dict(data: Mapping[str, Any]) -> Side:
    """A Side from the wire; unknown keys are ignored, wrong types become unknown (None)."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(Side):
        if f.name not in data:
            continue
        value = data[f.name]
        kind = str(f.type)
        if value is None:
            if "Optional" in kind:
                out[f.name] = None
            continue
        if "Tuple" in kind:
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
            value = tuple(value) if ok else value
        elif "bool" in kind:
            ok = isinstance(value, bool)
        elif "int" in kind:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif "float" in kind:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str)
        if ok:
            out[f.name] = value
        elif "Optional" in kind:
            out[f.name] = None
    if "host" not in out or "resource" not in out:
        raise ValueError("a side needs 'host' and 'resource'")
    return Side(**out)


# ------------------------------------------------------------------------------ generations


def _base(uuid: str) -> int:
    """DRBD 8.4 keeps the Primary role in a UUID's lowest bit; comparisons ignore it."""
    return int(uuid, 16) & ~1


def same_generation(a: Optional[GenerationIds], b: Optional[GenerationIds]) -> Optional[bool]:
    if a is None or b is None:
        return None
    return _base(a.current) == _base(b.current)


def diverged(a: Optional[GenerationIds], b: Optional[GenerationIds]) -> Optional[bool]:
    """Whether the two data generations split from a common one: different currents, and each
    side's bitmap UUID (the generation it started tracking changes from when the two parted) is
    the same, or one side's current is the other's history. None when a side is not readable."""
    if a is None or b is None:
        return None
    if _base(a.current) == _base(b.current):
        return False
    if int(a.bitmap, 16) == 0 or int(b.bitmap, 16) == 0:
        # One side has no changes tracked since a disconnection: the other simply has newer data
        # (or the pair was never in sync): DRBD resyncs that without a split brain.
        return False
    return _base(a.bitmap) == _base(b.bitmap)


# ------------------------------------------------------------------------------ the assessment


@dataclass(frozen=True)
class Assessment:
    resource: str
    kind: str  # one of SPLIT_BRAIN_KINDS
    detected_by: Tuple[str, ...]  # hosts whose DRBD detected it
    sides: Tuple[Side, Side]  # (this host, the peer)
    survivor: Optional[str]  # recommended
    confident: bool  # the recommendation rests on the VMs' writes
    reasons: Tuple[str, ...]
    wrote: Tuple[str, ...]  # hosts with evidence of the VMs' writes while apart
    problems: Tuple[str, ...] = ()  # what could not be read

    def side(self, host: str) -> Side:
        for s in self.sides:
            if s.host == host:
                return s
        raise KeyError(host)

    def other(self, host: str) -> Side:
        for s in self.sides:
            if s.host != host:
                return s
        raise KeyError(host)

    @property
    def in_split_brain(self) -> bool:
        return self.kind in ("both", "one-sided", "diverged")


def _kind(a: Side, b: Side) -> Tuple[str, Tuple[str, ...]]:
    detected = tuple(s.host for s in (a, b) if s.split_brain)
    if len(detected) == 2:
        return "both", detected
    if len(detected) == 1:
        return "one-sided", detected
    if a.error or b.error:
        return "unknown", ()
    connected = {"Connected", "SyncSource", "SyncTarget", "Established"}
    if a.connection in connected or b.connection in connected:
        return "none", ()
    if diverged(a.generation, b.generation):
        # Neither kernel log says so (rotated, or the hosts rebooted), but the generations do.
        return "diverged", ()
    return "none", ()


def _size(n: Optional[int]) -> str:
    if n is None:
        return "unknown"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KiB"
    if n < 1024**3:
        return f"{n / 1024 / 1024:.1f} MiB"
    return f"{n / 1024**3:.2f} GiB"


def assess(local: Side, peer: Side) -> Assessment:
    """Both sides of one resource -> the kind of split brain and a recommended survivor."""
    kind, detected = _kind(local, peer)
    problems = tuple(f"{s.host}: {s.error}" for s in (local, peer) if s.error)
    sides = (local, peer)
    wrote = tuple(s.host for s in sides if not s.error and s.wrote_alone)
    reasons: List[str] = []
    survivor: Optional[str] = None
    confident = False
    if kind in ("none", "unknown"):
        return Assessment(local.resource, kind, detected, sides, None, False, (), wrote, problems)
    if len(wrote) == 1:
        survivor, confident = wrote[0], True
        s = local if local.host == survivor else peer
        if s.alone_sessions:
            reasons.append(
                f"{s.host} served the target to {s.alone_sessions} iSCSI session(s) "
                "while Primary without its peer: the VMs wrote there"
            )
        if s.sessions:
            reasons.append(f"{s.host} serves {s.sessions} iSCSI session(s) now")
        other = peer if s is local else local
        reasons.append(
            f"{other.host} had no iSCSI sessions while the two were apart "
            "(as far as its ledger and target say)"
        )
    else:
        if len(wrote) == 2:
            reasons.append(
                "BOTH hosts served iSCSI sessions while apart: the VMs wrote on "
                "both, and no DRBD command merges them; whichever is discarded loses "
                "writes (keep a copy of it first: see --snapshot)"
            )
        else:
            reasons.append(
                "no evidence of the VMs' writes on either host (no sessions in the ledgers or now)"
            )
        a, b = local.out_of_sync_bytes, peer.out_of_sync_bytes
        if a is not None and b is not None and a != b:
            survivor = local.host if a > b else peer.host
            reasons.append(
                f"{survivor} changed more since the two parted "
                f"({_size(max(a, b))} vs {_size(min(a, b))}, DRBD's out-of-sync "
                "count): a weaker reason than the VMs' writes"
            )
        elif local.alone_primary_since is not None or peer.alone_primary_since is not None:
            survivor = max((local, peer), key=lambda s: _alone_for(s) or 0.0).host
            reasons.append(f"{survivor} was Primary without its peer for longer")
    return Assessment(
        local.resource, kind, detected, sides, survivor, confident, tuple(reasons), wrote, problems
    )


def _alone_for(s: Side) -> Optional[float]:
    if s.alone_primary_since is None or s.alone_primary_last is None:
        return None
    return max(0.0, s.alone_primary_last - s.alone_primary_since)


# ------------------------------------------------------------------------------ resolve


@dataclass(frozen=True)
class Step:
    host: str
    action: str  # one of ACTIONS
    why: str

    @property
    def command(self) -> str:
        verb, _, option = self.action.partition(" ")
        return f"drbdadm {verb}{' ' + option if option else ''}"


def refusals(a: Assessment, survivor: str) -> Tuple[List[str], List[str]]:
    """(hard refusals, refusals that --force overrides) for resolving ``a`` with ``survivor``."""
    hard: List[str] = []
    forceable: List[str] = []
    hosts = [s.host for s in a.sides]
    if survivor not in hosts:
        return [f"{survivor!r} is neither host of {a.resource} ({' nor '.join(hosts)})"], []
    if a.problems:
        hard.append("cannot see both sides: " + "; ".join(a.problems))
        return hard, forceable
    if not a.in_split_brain:
        hard.append(f"{a.resource} is not in split brain ({_states(a)})")
        return hard, forceable
    victim = a.other(survivor)
    if victim.sessions:
        hard.append(
            f"the victim {victim.host} is serving: {victim.sessions} iSCSI session(s) on its target"
        )
    if victim.vip_local:
        hard.append(f"the victim {victim.host} holds the VIP")
    if victim.role == "Primary" and victim.target_present:
        hard.append(f"the victim {victim.host} is Primary and its target uses the device")
    if victim.pool_role == "master" and not victim.manual:
        hard.append(
            f"the victim {victim.host} is pool master outside manual mode: its "
            "controller would promote it again"
        )
    elif victim.manual and victim.manual_requested == "primary":
        hard.append(
            f"the victim {victim.host} is in manual mode asked to be primary: its "
            "controller would promote it again"
        )
    if hard:
        hard.append(
            f"first, on {victim.host}: `iscsi-cfg manual-mode-enable` and `iscsi-cfg "
            "become-secondary` (VIP away, target stopped, DRBD Secondary)"
        )
    if a.wrote and survivor not in a.wrote:
        forceable.append(
            f"{survivor} is not the side the VMs wrote to ({', '.join(a.wrote)} "
            f"is): resolving this way discards the VMs' writes on {victim.host}"
        )
    elif len(a.wrote) == 2:
        forceable.append(
            f"the VMs wrote on both hosts: resolving discards their writes on {victim.host}"
        )
    return hard, forceable


def _states(a: Assessment) -> str:
    return "; ".join(
        f"{s.host}: {s.connection} {s.role}/{s.peer_role} {s.disk}/{s.peer_disk}" for s in a.sides
    )


def plan(a: Assessment, survivor: str) -> Tuple[Step, ...]:
    """DRBD's steps, in order: the victim first (StandAlone, Secondary, then reconnect
    discarding its changes), then the survivor if it is StandAlone too."""
    victim, keep = a.other(survivor), a.side(survivor)
    steps = []
    if victim.connection != "StandAlone":
        steps.append(
            Step(
                victim.host,
                DISCONNECT,
                f"{victim.host} is {victim.connection}; --discard-my-data applies "
                "to a new connection",
            )
        )
    if victim.role == "Primary":
        steps.append(Step(victim.host, SECONDARY, "only a Secondary can discard its data"))
    steps.append(
        Step(
            victim.host,
            CONNECT_DISCARD,
            f"reconnect, throwing away {victim.host}'s changes since the split",
        )
    )
    if keep.connection == "StandAlone":
        steps.append(
            Step(
                keep.host,
                CONNECT,
                f"{keep.host} is StandAlone: reconnect it "
                "(it keeps its data and becomes the resync source)",
            )
        )
    return tuple(steps)


MIB = 1024 * 1024
SNAPSHOT_MIN = 32 * MIB


def snapshot_size(a: Assessment, survivor: str) -> int:
    """Copy-on-write space for a snapshot of the victim taken before the resync: the resync
    rewrites the blocks either side changed (both out-of-sync counts), and the snapshot must
    also outlive the writes that follow; twice that, at least SNAPSHOT_MIN, in whole MiB."""
    victim, keep = a.other(survivor), a.side(survivor)
    changed = (victim.out_of_sync_bytes or 0) + (keep.out_of_sync_bytes or 0)
    size = max(2 * changed, SNAPSHOT_MIN)
    return -(-size // MIB) * MIB


def snapshot_refusal(a: Assessment, survivor: str) -> Optional[str]:
    """Why the victim's data cannot be kept in an LVM snapshot; None when it can."""
    victim = a.other(survivor)
    if victim.lvm_volume is None:
        return (
            f"{victim.host}'s backing device {victim.backing or '(unknown)'} cannot be "
            f"snapshotted: {victim.lvm_error or 'not on LVM'}"
        )
    need = snapshot_size(a, survivor)
    if victim.lvm_free is None or victim.lvm_free < need:
        return (
            f"{victim.host}'s volume group of {victim.lvm_volume} has "
            f"{_size(victim.lvm_free)} free; a snapshot needs {_size(need)}"
        )
    return None


def snapshot_help(host: str, snapshot: str) -> str:
    """How to read a kept snapshot later, and to drop it."""
    return (
        f"{host}'s data before the resolve is kept in the read-only LVM snapshot "
        f"{snapshot} (on {host}). To read it: `lvchange -ay {snapshot}` if it is not "
        f"active, then `losetup -r -f --show /dev/{snapshot}`: it holds what DRBD's backing "
        "device held (the data first, DRBD's internal meta data at the end); an LVM-based SR "
        "inside is itself an LVM physical volume: `vgimportclone` on the loop device shows "
        "its volumes without clashing with the live SR. It fills as the origin changes and "
        f"becomes invalid when full: `lvremove {snapshot}` once done."
    )


def discarded(a: Assessment, survivor: str) -> str:
    """One sentence: what resolving with ``survivor`` throws away."""
    victim = a.other(survivor)
    parts = [
        f"{victim.host}'s changes to {a.resource} since the two parted: "
        f"{_size(victim.out_of_sync_bytes)} of blocks (DRBD's out-of-sync count)"
    ]
    period = _alone_for(victim)
    if period is not None and victim.alone_primary_since is not None:
        parts.append(f"it was Primary without its peer for {_duration(period)}")
    if victim.alone_sessions:
        parts.append(f"with up to {victim.alone_sessions} iSCSI session(s): VM writes")
    return "; ".join(parts)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


@dataclass(frozen=True)
class Verdict:
    done: bool
    sentence: str


def verify(local: Side, peer: Side) -> Verdict:
    """After a resolve: both Connected and UpToDate, and the same data generation."""
    for s in (local, peer):
        if s.error:
            return Verdict(False, f"{s.host}: {s.error}")
        if s.connection != "Connected" or (s.disk, s.peer_disk) != ("UpToDate", "UpToDate"):
            return Verdict(False, f"{s.host} is {s.connection} {s.disk}/{s.peer_disk}")
    same = same_generation(local.generation, peer.generation)
    if same is False:
        return Verdict(
            False, f"the generations differ: {local.host} {local.gi}, {peer.host} {peer.gi}"
        )
    gen = local.generation
    tail = (
        f", same data generation {gen.current[:15]}x"
        if same and gen
        else " (generations not readable)"
    )
    return Verdict(True, f"both Connected and UpToDate/UpToDate{tail}")


def progress(local: Side, peer: Side) -> str:
    """One line while the resync runs: the SyncTarget's progress and ETA."""
    target = next((s for s in (local, peer) if s.connection == "SyncTarget"), None)
    src = target or next((s for s in (local, peer) if s.connection == "SyncSource"), None)
    if src is None:
        return " / ".join(f"{s.host} {s.connection} {s.disk}/{s.peer_disk}" for s in (local, peer))
    pct = f"{src.sync_progress * 100:.1f}%" if src.sync_progress is not None else "?%"
    eta = f", ETA {_duration(src.sync_eta_seconds)}" if src.sync_eta_seconds is not None else ""
    left = f", {_size(src.out_of_sync_bytes)} left" if src.out_of_sync_bytes is not None else ""
    return f"resync {src.host} {src.connection}: {pct}{left}{eta}"


def audit_line(
    resource: str,
    survivor: str,
    victim: str,
    amount: Optional[int],
    who: str,
    when: str,
    took: Optional[float],
    verdict: str,
    forced: bool,
) -> str:
    took_text = f"{took:.1f} s" if took is not None else "unknown"
    return (
        f"split-brain resolve {resource}: survivor {survivor}, discarded {victim}'s changes "
        f"({_size(amount)} out of sync there); by {who or 'unknown'} at {when}"
        f"{'; FORCED' if forced else ''}; resync {took_text}; {verdict}"
    )


# ------------------------------------------------------------------------------ rendering


def _row(label: str, a: str, b: str, width: int = 30) -> str:
    return f"  {label:<22} {a:<{width}} {b}"


def _when(t: Optional[float], now: Optional[float]) -> str:
    if t is None:
        return "-"
    if now is None:
        return f"{t:.0f}"
    return f"{_duration(max(0.0, now - t))} ago"


def render(a: Assessment) -> str:
    """The side-by-side view of ``iscsi-cfg split-brain``."""
    l, p = a.sides  # noqa: E741 - local, peer
    by = a.detected_by[0] if a.detected_by else "?"
    waiting = a.other(by).connection if a.detected_by else "?"
    head = {
        "both": "SPLIT BRAIN, detected by both hosts",
        "one-sided": f"SPLIT BRAIN, detected by {by} only (the other host stays {waiting} "
        "and logs nothing: real DRBD 8.4 does that about one time in three)",
        "diverged": "SPLIT BRAIN by the data generations (neither kernel log says so)",
        "none": "no split brain",
        "unknown": "unknown: one side could not be read",
    }[a.kind]
    out = [f"{a.resource}: {head}", _row("", l.host + " (this host)", p.host)]
    out += [_row(*r) for r in _evidence_rows(l, p)]
    for problem in a.problems:
        out.append(f"  cannot read: {problem}")
    out.append(_vms_line(a))
    lg = l.generation
    if lg is not None and diverged(lg, p.generation):
        out.append(
            f"  generations: both descend from {lg.bitmap[:15]}x "
            "and each has its own newer one: diverged"
        )
    if a.in_split_brain:
        out += _recommendation(a)
    return "\n".join(out)


def _evidence_rows(l: Side, p: Side) -> List[Tuple[str, str, str]]:  # noqa: E741
    """(what, this host, the peer) for each line of the side-by-side table."""

    def yn(v: Optional[bool]) -> str:
        return "?" if v is None else ("yes" if v else "no")

    def num(v: Optional[int]) -> str:
        return "?" if v is None else str(v)

    return [
        ("DRBD role", f"{l.role}/{l.peer_role}", f"{p.role}/{p.peer_role}"),
        ("connection", l.connection, p.connection),
        ("disk", f"{l.disk}/{l.peer_disk}", f"{p.disk}/{p.peer_disk}"),
        ("split brain logged", yn(l.split_brain), yn(p.split_brain)),
        ("changed since split", _size(l.out_of_sync_bytes), _size(p.out_of_sync_bytes)),
        ("generation (get-gi)", _gi_short(l), _gi_short(p)),
        ("pool role", l.pool_role or "?", p.pool_role or "?"),
        ("manual mode", yn(l.manual), yn(p.manual)),
        ("VIP here now", yn(l.vip_local), yn(p.vip_local)),
        ("iSCSI sessions now", num(l.sessions), num(p.sessions)),
        (
            "Primary alone since",
            _when(l.alone_primary_since, l.now),
            _when(p.alone_primary_since, p.now),
        ),
        ("  for", _period(l), _period(p)),
        ("  sessions meanwhile", num(l.alone_sessions), num(p.alone_sessions)),
        ("last in sync", _when(l.last_in_sync, l.now), _when(p.last_in_sync, p.now)),
        ("backing (LVM free)", _backing(l), _backing(p)),
    ]


def _vms_line(a: Assessment) -> str:
    vms = next((s.vms for s in a.sides if s.vms is not None), None)
    if vms is None:
        why = next((s.vms_error for s in a.sides if s.vms_error), None)
        return f"  VMs with disks on this target: unknown ({why or 'XenAPI not enabled'})"
    holder = [s.host for s in a.sides if s.vip_local]
    through = f", through the VIP held now by {holder[0]}" if len(holder) == 1 else ""
    return f"  VMs with disks on this target (XenAPI){through}: {', '.join(vms) if vms else 'none'}"


def _recommendation(a: Assessment) -> List[str]:
    """Which side to keep and why, what it discards, and the command that does it."""
    out = []
    if a.survivor:
        strength = "" if a.confident else " (weak evidence: check before choosing)"
        out.append(
            f"Recommendation: keep {a.survivor}{strength}, discard {a.other(a.survivor).host}"
        )
    else:
        out.append("Recommendation: none; the evidence does not single out a side")
    out += [f"  because {r}" for r in a.reasons]
    if a.survivor:
        out.append(f"Would be discarded: {discarded(a, a.survivor)}")
        if snapshot_refusal(a, a.survivor) is None:
            out.append(
                f"Keep a copy first: add --snapshot (a read-only LVM snapshot of "
                f"{a.other(a.survivor).lvm_volume}, "
                f"{_size(snapshot_size(a, a.survivor))} copy-on-write)"
            )
        out.append(f"Resolve: iscsi-cfg split-brain resolve --survivor {a.survivor} {a.resource}")
    return out


def _backing(s: Side) -> str:
    if s.lvm_volume is not None:
        return f"{s.lvm_volume} ({_size(s.lvm_free)})"
    return f"{s.backing or '?'} (not LVM)" if s.backing else "?"


def _gi_short(s: Side) -> str:
    g = s.generation
    if g is None:
        return "?"
    return f"{g.current[:8]}.. base {g.bitmap[:8]}.."


def _period(s: Side) -> str:
    d = _alone_for(s)
    return "-" if d is None else _duration(d)


def assessment_to_dict(a: Assessment) -> Dict[str, Any]:
    return {
        "resource": a.resource,
        "kind": a.kind,
        "split_brain": a.in_split_brain,
        "detected_by": list(a.detected_by),
        "sides": [side_to_dict(s) for s in a.sides],
        "recommended_survivor": a.survivor,
        "confident": a.confident,
        "reasons": list(a.reasons),
        "vms_wrote_on": list(a.wrote),
        "would_discard": discarded(a, a.survivor) if a.survivor and a.in_split_brain else None,
        "problems": list(a.problems),
        "vms": next((list(s.vms) for s in a.sides if s.vms is not None), None),
        "diverged_generations": diverged(a.sides[0].generation, a.sides[1].generation),
    }


def sides_of(items: Sequence[Side]) -> Tuple[Side, Side]:
    if len(items) != 2:
        raise ValueError("two sides expected")
    return items[0], items[1]
