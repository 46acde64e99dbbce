"""The ledger: what this host saw of each resource's peer, kept so a promotion can be proven safe.

Why: the data loss most reported with two-node DRBD is the *sequential failure*. A (Primary) dies,
B takes over and writes for hours, B dies, A boots alone and is promoted with its old data. At A's
boot DRBD cannot tell: A's disk says UpToDate. So with the peer unreachable, ``decide()`` promotes
only with proof that this host holds every acknowledged write, and the proof comes from here.

The proof ("watched"): this controller saw the resource Connected with both disks UpToDate (or
itself Primary: it was the writer), then saw the peer vanish, and looked at the resource at least
every ``max_gap`` seconds from that Connected observation until now. With protocol C every write
the peer acknowledged was on this disk when the connection went, and nothing can have been written
since that this host did not see. Continuity is measured on CLOCK_MONOTONIC (wall-clock jumps
cannot fake it) and is void across a reboot (``/proc/sys/kernel/random/boot_id`` changes) and
across a restart of the controller (a fresh ``run_id``): a controller that was not running cannot
say what happened meanwhile. The ledger on disk therefore never *creates* proof by itself; it
keeps what the operator and the hold sentence need (when the peer was last seen, in which role),
across restarts and reboots.

The peer's disk being Outdated is the other proof; DRBD reports it itself (``ds:UpToDate/Outdated``,
kept in its meta data as the "peer out-dated" flag and restored at ``drbdadm up``), so it is read
from the observation, not from here.

File ``<state_dir>/ledger.json``, written atomically (temporary file, fsync, rename, fsync of the
directory). A file that is damaged, of another host, of an unknown format or written in the future
is not trusted: every resource then counts as "no proof" until it is seen Connected again.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .files import read_capped
from .model import DrbdResource, Evidence
from .said_once import SaidOnce
from .state import atomic_write

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.json"
FORMAT = 1
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
FUTURE_TOLERANCE = 300.0  # seconds a ledger's time may be ahead of ours (NTP steps, not years)
REWRITE_AFTER = 30.0  # rewrite an unchanged ledger this often (last-seen times for the report)
GI_REFRESH = 300.0  # re-read the generation identifiers of a connected resource this often

# Connection states in which the two disks are in sync and the peer's role is known.
IN_SYNC_CONNECTIONS = frozenset({"Connected", "Established"})


@dataclass(frozen=True)
class Seen:
    """The resource as it was when the peer was last seen connected."""

    at: float  # unix time
    role: str
    peer_role: str
    disk: str
    peer_disk: str
    # DRBD's data-generation identifiers then (`drbdadm get-gi`, 8.4), read when the connection
    # was first seen and every GI_REFRESH seconds after; None when not read.
    gi: Optional[str] = None
    gi_at: Optional[float] = None

    @property
    def complete(self) -> bool:
        """Whether this host had every acknowledged write at that moment."""
        return self.disk == "UpToDate" and (self.role == "Primary" or self.peer_disk == "UpToDate")


@dataclass(frozen=True)
class Entry:
    boot_id: str
    run_id: str
    last_seen_mono: float
    last_seen: float
    # True while this controller has looked without a gap since the last Connected observation.
    watching: bool = False
    connected: Optional[Seen] = None  # the last Connected observation (kept across restarts)
    lost_at: Optional[float] = None  # unix time the peer was first seen gone since `connected`
    proof: bool = False  # the loss was watched and `connected` was complete
    reason: str = "no_record"  # why there is no proof, machine-readable
    why_not: str = "no record of this resource in the ledger"
    unreachable_since_mono: Optional[float] = None  # this run, without a gap
    # This host Primary while the peer was unreachable, since the last in-sync observation
    # (unix times first and last seen) and the most target sessions seen meanwhile: after a
    # split brain, which side the VMs wrote to (`iscsi-cfg split-brain`, controller/splitbrain.py).
    alone_primary_since: Optional[float] = None
    alone_primary_last: Optional[float] = None
    alone_sessions: int = 0


@dataclass(frozen=True)
class Ledger:
    host: str
    entries: Mapping[str, Entry] = field(default_factory=dict)
    problem: Optional[str] = None  # set when the file was not trusted
    written: float = 0.0


# --------------------------------------------------------------------------- pure rules


def advance(
    ledger: Ledger,
    resources: Sequence[DrbdResource],
    now_mono: float,
    now: float,
    boot_id: str,
    run_id: str,
    max_gap: float,
    gis: Optional[Mapping[str, str]] = None,
    sessions: int = 0,
) -> Ledger:
    """The ledger after one more observation of ``resources`` (``gis``: get-gi lines read for
    some of them in this cycle, see ``gi_wanted``; ``sessions``: iSCSI sessions on this host's
    target in this cycle)."""
    entries: Dict[str, Entry] = dict(ledger.entries)
    for res in resources:
        entry = _advance_entry(
            entries.get(res.name), res, now_mono, now, boot_id, run_id, max_gap, ledger.problem
        )
        entry = _advance_alone(entry, res, now, sessions)
        gi = (gis or {}).get(res.name)
        if gi is not None and entry.connected is not None and entry.connected.at == now:
            # "" = read but unreadable: remembered as tried, so it is not retried every cycle.
            entry = replace(entry, connected=replace(entry.connected, gi=gi or None, gi_at=now))
        entries[res.name] = entry
    return replace(ledger, entries=entries)


def _advance_alone(entry: Entry, res: DrbdResource, now: float, sessions: int) -> Entry:
    """Record this host Primary without its peer (kept until the two are in sync again)."""
    if res.error or not res.configured:
        return entry
    if res.connection in IN_SYNC_CONNECTIONS:
        if entry.alone_primary_since is None and not entry.alone_sessions:
            return entry
        return replace(entry, alone_primary_since=None, alone_primary_last=None, alone_sessions=0)
    if res.peer_reachable or res.role != "Primary":
        return entry
    since = entry.alone_primary_since if entry.alone_primary_since is not None else now
    return replace(
        entry,
        alone_primary_since=since,
        alone_primary_last=now,
        alone_sessions=max(entry.alone_sessions, max(0, int(sessions))),
    )


def gi_wanted(ledger: Ledger, res: DrbdResource, now: float) -> bool:
    """Whether to read ``res``'s generation identifiers now: in sync with the peer, and none
    recorded for this connection yet or the last is older than GI_REFRESH."""
    if res.error or res.connection not in IN_SYNC_CONNECTIONS:
        return False
    entry = ledger.entries.get(res.name)
    seen = entry.connected if entry is not None else None
    return seen is None or seen.gi_at is None or now - seen.gi_at >= GI_REFRESH


def _advance_entry(
    entry: Optional[Entry],
    res: DrbdResource,
    now_mono: float,
    now: float,
    boot_id: str,
    run_id: str,
    max_gap: float,
    problem: Optional[str],
) -> Entry:
    if entry is None:
        entry = _fresh_entry(boot_id, run_id, now_mono, now, problem)
    else:
        entry = _after_gap(entry, now_mono, boot_id, run_id, max_gap)
    entry = replace(entry, last_seen_mono=now_mono, last_seen=now)
    if res.error or not res.configured:
        # Nothing seen: the watch goes on only while the resource is actually observed.
        if entry.watching or entry.proof:
            what = res.error or "resource not up"
            entry = replace(
                entry,
                watching=False,
                proof=False,
                reason="gap",
                why_not=f"the resource could not be observed ({what})",
            )
        return entry
    if res.connection in IN_SYNC_CONNECTIONS:
        old = entry.connected
        keep = (
            (old.gi, old.gi_at)
            if old is not None and entry.lost_at is None and entry.watching
            else (None, None)
        )
        seen = Seen(now, res.role, res.peer_role, res.disk, res.peer_disk, *keep)
        return replace(
            entry,
            watching=True,
            connected=seen,
            lost_at=None,
            proof=False,
            reason="peer_reachable",
            why_not="the peer is reachable",
            unreachable_since_mono=None,
        )
    if res.peer_reachable:  # resyncing: in touch with the peer but not in sync
        return replace(
            entry,
            lost_at=None,
            proof=False,
            reason="not_in_sync",
            why_not=f"the resource was {res.connection} when last in touch with the peer",
            unreachable_since_mono=None,
        )
    return _peer_unreachable(entry, now_mono, now)


def _fresh_entry(
    boot_id: str, run_id: str, now_mono: float, now: float, problem: Optional[str]
) -> Entry:
    """A resource the ledger has no (trusted) record of: no watch, no proof."""
    reason, why = (
        ("untrusted_record", problem)
        if problem
        else ("no_record", "no record of this resource in the ledger (fresh state directory)")
    )
    return Entry(boot_id, run_id, now_mono, now, reason=reason, why_not=why)


def _after_gap(entry: Entry, now_mono: float, boot_id: str, run_id: str, max_gap: float) -> Entry:
    """The watch ended (no proof) when a gap broke it: a reboot, a restart, a pause longer than
    ``max_gap``."""
    gap = _gap(entry, now_mono, boot_id, run_id, max_gap)
    if gap is not None:
        reason, why = gap
        entry = replace(
            entry,
            boot_id=boot_id,
            run_id=run_id,
            watching=False,
            proof=False,
            reason=reason,
            why_not=why,
            unreachable_since_mono=None,
        )
    return entry


def _peer_unreachable(entry: Entry, now_mono: float, now: float) -> Entry:
    """The peer is unreachable now: proof when it was watched in sync to the end."""
    since = entry.unreachable_since_mono if entry.unreachable_since_mono is not None else now_mono
    entry = replace(entry, unreachable_since_mono=since)
    if entry.lost_at is None and entry.watching and entry.connected is not None:
        seen = entry.connected
        if seen.complete:
            return replace(
                entry, lost_at=now, proof=True, reason="watched", why_not="watched without a gap"
            )
        return replace(
            entry,
            lost_at=now,
            proof=False,
            reason="not_in_sync",
            why_not=f"when the peer was last seen this host was {seen.role} with its "
            f"disk {seen.disk} and the peer's {seen.peer_disk}",
        )
    if entry.lost_at is None and entry.reason == "peer_reachable":
        # Unreachable without a Connected observation before it in this watch (e.g. resyncing).
        return replace(
            entry,
            lost_at=now,
            proof=False,
            reason="not_in_sync",
            why_not="the peer vanished while the disks were not in sync",
        )
    return entry


def _gap(
    entry: Entry, now_mono: float, boot_id: str, run_id: str, max_gap: float
) -> Optional[Tuple[str, str]]:
    if entry.boot_id != boot_id:
        return "rebooted", "this host rebooted since; nobody watched in between"
    if entry.run_id != run_id:
        return "restarted", "the controller restarted since; nobody watched in between"
    elapsed = now_mono - entry.last_seen_mono
    if elapsed < 0 or elapsed > max_gap:
        return "gap", (
            f"this controller did not look for {elapsed:.0f}s (more than the "
            f"{max_gap:g}s a watch may miss)"
        )
    return None


def evidence(
    ledger: Ledger, name: str, now_mono: float, boot_id: str, run_id: str, max_gap: float
) -> Evidence:
    """What the ledger proves about ``name`` now. Only an entry of this very run and boot,
    looked at within ``max_gap``, can prove anything."""
    entry = ledger.entries.get(name)
    if entry is None:
        if ledger.problem:
            return Evidence(name, why_not=ledger.problem, reason="untrusted_record")
        return Evidence(name)
    seen = entry.connected
    base = Evidence(name)
    if seen is not None:
        base = replace(
            base,
            last_connected=seen.at,
            last_peer_role=seen.peer_role,
            last_peer_disk=seen.peer_disk,
            last_role=seen.role,
        )
    gap = _gap(entry, now_mono, boot_id, run_id, max_gap)
    if gap is not None:
        return replace(base, watched=False, reason=gap[0], why_not=gap[1])
    unreachable_for = (
        now_mono - entry.unreachable_since_mono
        if entry.unreachable_since_mono is not None
        else None
    )
    watched = entry.proof and entry.watching and entry.lost_at is not None
    return replace(
        base,
        watched=watched,
        reason=entry.reason,
        why_not=entry.why_not,
        unreachable_for=unreachable_for,
    )


# --------------------------------------------------------------------------- the file


def render(ledger: Ledger, now: float) -> str:
    return (
        json.dumps(
            {
                "format": FORMAT,
                "host": ledger.host,
                "written": now,
                "resources": {name: _entry_dict(e) for name, e in sorted(ledger.entries.items())},
            },
            sort_keys=True,
            indent=1,
        )
        + "\n"
    )


def _entry_dict(e: Entry) -> Dict[str, Any]:
    out = {k: getattr(e, k) for k in Entry.__dataclass_fields__ if k != "connected"}
    out["connected"] = None if e.connected is None else dict(e.connected.__dict__)
    return out


LEDGER_LIMIT = 1 << 20  # bytes; a few hundred resources take a few tens of KiB


def parse(text: str, host: str, now: float) -> Ledger:
    """The ledger in ``text``; an untrusted one comes back empty with ``problem`` set."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format") != FORMAT:
            return Ledger(
                host,
                problem=f"the ledger has format {data.get('format')!r}, this "
                f"controller reads format {FORMAT}: not trusted",
            )
        if data.get("host") != host:
            return Ledger(
                host,
                problem=f"the ledger was written by host {data.get('host')!r}, "
                f"not {host!r} (copied state directory?): not trusted",
            )
        written = float(data["written"])
        if written > now + FUTURE_TOLERANCE:
            return Ledger(
                host,
                problem=f"the ledger was written in the future ({written:.0f}, "
                f"now {now:.0f}): not trusted",
            )
        entries = {str(name): _entry(raw) for name, raw in dict(data["resources"]).items()}
        for name, e in entries.items():
            if e.last_seen > now + FUTURE_TOLERANCE or (
                e.connected is not None and e.connected.at > now + FUTURE_TOLERANCE
            ):
                return Ledger(
                    host, problem=f"the ledger's entry for {name} is from the future: not trusted"
                )
        return Ledger(host, entries, written=written)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        return Ledger(
            host, problem=f"the ledger is damaged ({type(exc).__name__}: {exc}): not trusted"
        )


def _entry(raw: Any) -> Entry:
    if not isinstance(raw, dict):
        raise ValueError("an entry is not an object")
    seen = raw.get("connected")
    connected = None
    if seen is not None:
        gi, gi_at = seen.get("gi"), seen.get("gi_at")
        connected = Seen(
            float(seen["at"]),
            str(seen["role"]),
            str(seen["peer_role"]),
            str(seen["disk"]),
            str(seen["peer_disk"]),
            str(gi) if gi is not None else None,
            float(gi_at) if gi_at is not None else None,
        )
    since = raw.get("unreachable_since_mono")
    lost = raw.get("lost_at")
    alone_since, alone_last = raw.get("alone_primary_since"), raw.get("alone_primary_last")
    return Entry(
        boot_id=str(raw["boot_id"]),
        run_id=str(raw["run_id"]),
        last_seen_mono=float(raw["last_seen_mono"]),
        last_seen=float(raw["last_seen"]),
        watching=bool(raw["watching"]),
        connected=connected,
        lost_at=float(lost) if lost is not None else None,
        proof=bool(raw["proof"]),
        reason=str(raw["reason"]),
        why_not=str(raw["why_not"]),
        unreachable_since_mono=float(since) if since is not None else None,
        # Absent in ledgers written before these were kept.
        alone_primary_since=float(alone_since) if alone_since is not None else None,
        alone_primary_last=float(alone_last) if alone_last is not None else None,
        alone_sessions=int(raw.get("alone_sessions") or 0),
    )


def read_boot_id(path: str = BOOT_ID_PATH) -> str:
    """This boot's id; a fresh random one if unreadable (then nothing carries over: safe)."""
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return f"unknown-{uuid.uuid4()}"


class LedgerStore:
    """The ledger in memory and on disk. Not thread-safe: used under the controller's lock."""

    def __init__(
        self,
        state_dir: str,
        host: str,
        now: float,
        boot_id: Optional[str] = None,
        run_id: Optional[str] = None,
    ) -> None:
        self.path = os.path.join(state_dir, LEDGER_FILE)
        self.boot_id = boot_id or read_boot_id()
        self.run_id = run_id or uuid.uuid4().hex
        self.ledger = self.load(host, now)
        self._saved: Optional[Ledger] = None
        self._saved_at = 0.0
        self._writes = SaidOnce(log)  # write errors, said once (not every cycle)

    @property
    def write_problem(self) -> Optional[str]:
        """Why the last write failed; None once one succeeds."""
        return self._writes.problem

    def load(self, host: str, now: float) -> Ledger:
        try:
            # Capped and regular files only: a FIFO or a device here must not hang a cycle.
            raw = read_capped(self.path, LEDGER_LIMIT)
        except FileNotFoundError:
            return Ledger(host)
        except OSError as exc:
            return Ledger(
                host, problem=f"cannot read the ledger {self.path}: {exc.strerror}: not trusted"
            )
        ledger = parse(raw.decode("utf-8", errors="replace"), host, now)
        if ledger.problem:
            log.warning("%s: %s", self.path, ledger.problem)
        return ledger

    def save_if_changed(self, now: float) -> None:
        """Write when anything but the last-seen times changed, or every REWRITE_AFTER s."""
        if (
            self._saved is not None
            and _without_times(self._saved) == _without_times(self.ledger)
            and now - self._saved_at < REWRITE_AFTER
        ):
            return
        try:
            atomic_write(self.path, render(self.ledger, now), mode=0o600)
        except OSError as exc:
            note = " (said once until it changes or a write succeeds)"
            self._writes.failed(exc, f"the ledger {self.path}", note)
            return
        self._writes.worked(f"ledger {self.path} written again")
        self._saved, self._saved_at = self.ledger, now


def _without_times(ledger: Ledger) -> Dict[str, Entry]:
    return {n: replace(e, last_seen=0.0, last_seen_mono=0.0) for n, e in ledger.entries.items()}
