"""DRBD, as seen and driven by iscsi-ha: what every resource looks like, and role changes.

Two DRBD generations are in the field and they speak differently:

* **8.4** (XenServer / XCP-ng 8.x dom0): ``/proc/drbd`` lists every configured minor with its
  connection state, roles, disk states, the out-of-sync amount and, during a resync, a progress
  line. One read of that file describes every resource at once; the only thing it lacks is the
  resource *name*, which ``drbdadm sh-minor <res>`` gives from the configuration (no kernel call,
  so it is asked once per resource and remembered). ``drbdadm role|cstate|dstate`` are only run
  for a resource that ``/proc/drbd`` does not show, to confirm it is ``Unconfigured``.
* **9**: ``/proc/drbd`` holds only the version; ``drbdsetup status --json`` describes every
  resource, with the peer's role, disk and replication state under ``connections[]``. One command
  per cycle.

So ``observe()`` costs one command per cycle in the steady state on either version (plus one
kernel-log read while some resource is StandAlone), whatever the number of resources.

States are kept in DRBD's own words. DRBD 9 splits 8.4's connection state into a connection state
and a per-volume replication state; we report the connection state, except that a ``Connected``
connection whose replication is not ``Established`` reports the replication state
(``SyncSource``, ``SyncTarget``, ...). That way ``Connected`` means "connected and in sync" on
both generations, as it always did on 8.4.

Split brain is not a state DRBD reports: both sides just end ``StandAlone`` and every command
returns 0. Only the kernel log says "Split-Brain detected but unresolved". A StandAlone resource
whose log does not say so (or whose log shows a successful reconnection since) is an operator's
``disconnect``, not a split brain.

The parsers are pure module-level functions, tested on real captured outputs. Each returns a typed
value or raises ``DrbdParseError``, whose message quotes the text it could not read; ``observe()``
turns that into ``DrbdResource.error`` and never raises. Unknown fields and unknown state words are
carried through, not rejected: a newer DRBD may invent some.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from typing import (
    Any,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from ..model import DRBD_PEER_REACHABLE, DrbdResource, StepResult
from .runner import CommandResult, Runner

log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * 1024

# DRBD state words are CamelCase identifiers; anything else (a sentence, an error) is not a state.
_STATE_WORD = re.compile(r"^[A-Z][A-Za-z]*$")

# Worst first: when volumes of one resource disagree, the resource is as good as its worst volume.
_DISK_ORDER = (
    "Failed",
    "Diskless",
    "Detaching",
    "Attaching",
    "Negotiating",
    "Inconsistent",
    "Outdated",
    "DUnknown",
    "Consistent",
    "UpToDate",
)

# DRBD's state-change refusals ("State change failed: (-N) ..."), by DRBD's own code. These are
# safety stops (reported, not retried in a tight loop), not malfunctions.
REFUSALS = {
    -1: "multiple_primaries",  # "Multiple primaries not allowed by config"
    -2: "no_uptodate_data",  # "Need access to UpToDate data"
    -7: "peer_not_outdated",  # "Refusing to be Primary while peer is not outdated" (fencing)
    -10: "refused_by_peer",  # "State change was refused by peer node"
    -12: "held_open",  # "Device is held open by someone"
    -25: "no_quorum",  # DRBD 9: "No quorum"
}

_QUOTE_LIMIT = 300


class DrbdParseError(ValueError):
    """An output we do not understand. ``str()`` names the command and quotes the text:
    "cannot read `drbdadm cstate iscsi1`: 'garbage'"; ``detail`` says what was wrong with it."""

    def __init__(self, command: str, text: str, detail: str = "") -> None:
        self.command = command
        self.text = text
        self.detail = detail
        super().__init__(cannot_read(command, text))


def cannot_read(command: str, text: str, detail: str = "") -> str:
    """ "cannot read `drbdadm cstate iscsi1`: 'garbage'" — how an unreadable output is reported."""
    shown = text.strip()
    if len(shown) > _QUOTE_LIMIT:
        shown = shown[:_QUOTE_LIMIT] + "..."
    msg = f"cannot read {_backquote(command)}: {shown!r}"
    return f"{msg} ({detail})" if detail else msg


def _backquote(command: str) -> str:
    return command if command.startswith("`") else f"`{command}`"


# --------------------------------------------------------------------------------------------
# drbdadm role | cstate | dstate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalPeer:
    """``Primary/Secondary`` or ``UpToDate/DUnknown``; ``peer`` is None where DRBD 9 prints only
    the local part."""

    local: str
    peer: Optional[str] = None


def _lines(text: str) -> List[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _state_word(word: str, command: str, text: str) -> str:
    if not _STATE_WORD.match(word):
        raise DrbdParseError(command, text, f"{word!r} is not a DRBD state")
    return word


def _split_pair(line: str, command: str, text: str) -> LocalPeer:
    parts = line.split("/")
    if len(parts) > 2:
        raise DrbdParseError(command, text)
    local = _state_word(parts[0], command, text)
    peer = _state_word(parts[1], command, text) if len(parts) == 2 else None
    return LocalPeer(local, peer)


def _is_unconfigured(lines: List[str]) -> bool:
    return bool(lines) and all(line == "Unconfigured" for line in lines)


def parse_role(text: str, command: str = "drbdadm role") -> Optional[LocalPeer]:
    """``drbdadm role``: 8.4 ``Primary/Secondary`` (``Primary/Unknown`` when disconnected),
    9 ``Primary`` (local only). None for 8.4's ``Unconfigured``.

    A multi-volume 8.4 resource prints one line per volume; the role is per resource, so the lines
    must agree.
    """
    lines = _lines(text)
    if not lines:
        raise DrbdParseError(command, text, "empty output")
    if _is_unconfigured(lines):
        return None
    pairs = {_split_pair(line, command, text) for line in lines}
    if len(pairs) != 1:
        raise DrbdParseError(command, text, "volumes disagree about the role")
    return pairs.pop()


def parse_cstate(text: str, command: str = "drbdadm cstate") -> Optional[str]:
    """``drbdadm cstate``: one word (per volume on 8.4, per connection on 9). None for
    ``Unconfigured``. When lines differ, the first one that is not ``Connected`` is reported:
    a resource is only as connected as its least connected part."""
    lines = _lines(text)
    if not lines:
        raise DrbdParseError(command, text, "empty output")
    if _is_unconfigured(lines):
        return None
    words = [_state_word(line, command, text) for line in lines]
    for word in words:
        if word != "Connected":
            return word
    return words[0]


def _worst_disk(states: Iterable[str]) -> str:
    def rank(state: str) -> int:
        return _DISK_ORDER.index(state) if state in _DISK_ORDER else -1  # unknown: worst

    return min(states, key=rank)


def parse_dstate(text: str, command: str = "drbdadm dstate") -> Optional[LocalPeer]:
    """``drbdadm dstate``: ``UpToDate/DUnknown`` on 8.4 and 9. A DRBD 9 resource that is down
    answers from its meta data with one word (``Consistent``): ``peer`` is then None. None for 8.4's
    ``Unconfigured``. Several volumes: the worst disk of each side."""
    lines = _lines(text)
    if not lines:
        raise DrbdParseError(command, text, "empty output")
    if _is_unconfigured(lines):
        return None
    pairs = [_split_pair(line, command, text) for line in lines]
    local = _worst_disk(p.local for p in pairs)
    peers = [p.peer for p in pairs if p.peer is not None]
    if peers and len(peers) != len(pairs):
        raise DrbdParseError(command, text, "volumes disagree about the format")
    return LocalPeer(local, _worst_disk(peers) if peers else None)


def is_unknown_resource(rc: int, text: str) -> bool:
    """A resource that is not up. DRBD 9: rc 10 ``r0: Unknown resource`` (``role``) or
    ``Failure: (158) Unknown resource`` (``cstate``). DRBD 8.4 on a freshly booted host (seen on
    real 8.4.11 in the VM lab, where the module is loaded but the minor was never created): rc 10
    ``0: Failure: (127) Device minor not allocated``."""
    return rc == 10 and ("Unknown resource" in text or "(127) Device minor not allocated" in text)


# --------------------------------------------------------------------------------------------
# /proc/drbd
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resync:
    """The progress lines under a syncing (or verifying) minor in 8.4's /proc/drbd::

    [>...................] sync'ed:  6.3% (63832/65496)K
    finish: 0:00:31 speed: 1,664 (1,664) K/sec
    """

    percent: float  # as DRBD prints it; coarse on small devices, so not used for the ratio
    left_bytes: int
    total_bytes: int
    eta_seconds: Optional[float]
    speed_bytes_per_second: Optional[int]
    verify: bool = False  # "verified:" (online verify) instead of "sync'ed:"

    @property
    def ratio(self) -> float:
        if self.total_bytes <= 0:
            return 1.0
        done = (self.total_bytes - self.left_bytes) / self.total_bytes
        return min(1.0, max(0.0, done))


@dataclass(frozen=True)
class ProcMinor:
    """One minor of 8.4's /proc/drbd."""

    minor: int
    cstate: str
    role: Optional[str] = None  # None for an Unconfigured minor
    peer_role: Optional[str] = None
    disk: Optional[str] = None
    peer_disk: Optional[str] = None
    out_of_sync_bytes: Optional[int] = None
    resync: Optional[Resync] = None

    @property
    def configured(self) -> bool:
        return self.cstate != "Unconfigured"

    @property
    def sync_progress(self) -> Optional[float]:
        """1.0 when nothing is out of sync; the resync ratio during a resync; None otherwise
        (8.4 does not print the device size, so a stalled amount has no ratio)."""
        if self.out_of_sync_bytes == 0:
            return 1.0
        if self.resync is not None and not self.resync.verify:
            return self.resync.ratio
        return None


_PROC_VERSION = re.compile(r"^version:\s*(\d{1,9}\.\d{1,9}\.\d{1,9}\S*)", re.M | re.A)
_PROC_MINOR = re.compile(r"^\s*(\d{1,9}):\s+cs:(\S+)(.*)$", re.A)
_PROC_FIELD = re.compile(r"\b(ro|ds|st):(\S+)")
_PROC_OOS = re.compile(r"\boos:(\d{1,20})\b", re.A)
_PROC_SYNCED = re.compile(
    r"(sync'ed|verified):\s*(\d{1,3}(?:\.\d{1,9})?)%\s*\((\d{1,20})/(\d{1,20})\)([KM])", re.A
)
_PROC_FINISH = re.compile(r"finish:\s*(\d{1,9}):(\d{2}):(\d{2})", re.A)
_PROC_SPEED = re.compile(r"speed:\s*([\d,]{1,30})", re.A)
_SPEED_UNIT = re.compile(r"([KM])/sec")


@dataclass(frozen=True)
class GenerationIds:
    """``drbdadm get-gi`` (8.4): DRBD's data-generation UUIDs and its meta-data flags.

    The flags, in DRBD's order (``drbdadm show-gi`` labels them): data consistent, data was/is
    UpToDate, node was/is Primary, node was/is connected, full sync in progress, the peer's disk
    was outdated or inconsistent, this node was a crashed Primary and has not seen its peer since.
    """

    current: str
    bitmap: str
    history: Tuple[str, str]
    consistent: bool
    was_uptodate: bool
    primary: bool
    connected: bool
    full_sync: bool
    peer_outdated: bool
    crashed_primary: bool
    text: str  # the line as DRBD printed it, for the operator


_GI = re.compile(r"^(?P<uuids>(?:[0-9A-F]{16}:){4})(?P<flags>(?:[01]:){6}[01])$")


def parse_get_gi(text: str, command: str = "drbdadm get-gi") -> GenerationIds:
    line = text.strip()
    m = _GI.match(line)
    if not m:
        raise DrbdParseError(command, text, "expected 4 UUIDs and 7 flags separated by ':'")
    uuids = m.group("uuids").rstrip(":").split(":")
    f = [flag == "1" for flag in m.group("flags").split(":")]
    return GenerationIds(uuids[0], uuids[1], (uuids[2], uuids[3]), consistent=f[0],
                         was_uptodate=f[1], primary=f[2], connected=f[3], full_sync=f[4],
                         peer_outdated=f[5], crashed_primary=f[6], text=line)


def parse_proc_version(text: str, command: str = "cat /proc/drbd") -> str:
    """``version: 8.4.11 (api:1/proto:86-101)`` -> ``"8.4.11"``."""
    match = _PROC_VERSION.search(text)
    if not match:
        raise DrbdParseError(command, text, "no 'version:' line")
    return match.group(1)


def _thousands(number: str) -> int:
    """DRBD groups thousands with commas: ``1,664`` -> 1664."""
    if not re.fullmatch(r"\d{1,3}(,\d{3}){0,6}|\d{1,20}", number, re.A):
        raise ValueError(number)
    return int(number.replace(",", ""))


def _parse_resync(line: str) -> Optional[Tuple[float, int, int, bool]]:
    match = _PROC_SYNCED.search(line)
    if not match:
        return None
    kind, percent, left, total, unit = match.groups()
    scale = KIB if unit == "K" else MIB
    return float(percent), int(left) * scale, int(total) * scale, kind == "verified"


def parse_proc_drbd(text: str, command: str = "cat /proc/drbd") -> Dict[int, ProcMinor]:
    """8.4's /proc/drbd -> one record per minor (empty on DRBD 9, whose /proc/drbd holds only
    the version). Out-of-sync amounts are converted from KiB to bytes.

    Lines we do not know (``srcversion:``, ``GIT-hash:``, ``act_log:`` details) are skipped; a
    minor line or a progress line we cannot read raises.
    """
    parse_proc_version(text, command)
    minors: Dict[int, ProcMinor] = {}
    current: Optional[Dict[str, Any]] = None

    def close() -> None:
        if current is not None:
            minors[current["minor"]] = ProcMinor(**current)

    pending_sync: Optional[Tuple[float, int, int, bool]] = None
    for line in text.splitlines():
        head = _PROC_MINOR.match(line)
        if head:
            close()
            minor, cstate, rest = int(head.group(1)), head.group(2), head.group(3)
            _state_word(cstate, command, text)
            current = {"minor": minor, "cstate": cstate}
            pending_sync = None
            if cstate == "Unconfigured":
                continue
            fields = dict(_PROC_FIELD.findall(rest))
            roles = fields.get("ro") or fields.get("st")  # "st:" on 8.3
            disks = fields.get("ds")
            if roles is None or disks is None:
                raise DrbdParseError(command, text, f"minor {minor} has no ro:/ds: fields")
            role = _split_pair(roles, command, text)
            disk = _split_pair(disks, command, text)
            current.update(
                role=role.local, peer_role=role.peer, disk=disk.local, peer_disk=disk.peer
            )
            continue
        if current is None:
            continue  # header lines
        oos = _PROC_OOS.search(line)
        if oos and "ns:" in line:
            current["out_of_sync_bytes"] = int(oos.group(1)) * KIB
            continue
        if "sync'ed:" in line or "verified:" in line:
            pending_sync = _parse_resync(line)
            if pending_sync is None:
                raise DrbdParseError(command, text, "unreadable progress line")
            # Until a "finish:" line arrives, the resync is known without its ETA.
            current["resync"] = Resync(*pending_sync[:3], None, None, pending_sync[3])
            continue
        if "finish:" in line:
            if pending_sync is None:
                raise DrbdParseError(command, text, "'finish:' without a progress line")
            finish = _PROC_FINISH.search(line)
            speed = _PROC_SPEED.search(line)
            if not finish or not speed:
                raise DrbdParseError(command, text, "unreadable 'finish:' line")
            hours, minutes, seconds = (int(x) for x in finish.groups())
            try:
                rate = _thousands(speed.group(1))
            except ValueError:
                raise DrbdParseError(command, text, "unreadable speed") from None
            unit = _SPEED_UNIT.search(line)
            rate *= MIB if unit and unit.group(1) == "M" else KIB
            percent, left, total, verify = pending_sync
            current["resync"] = Resync(
                percent, left, total, float(hours * 3600 + minutes * 60 + seconds), rate, verify
            )
            pending_sync = None
            continue
    close()
    return minors


# --------------------------------------------------------------------------------------------
# DRBD 9: drbdsetup status --json
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drbd9Device:
    volume: int
    minor: Optional[int]
    disk: str
    quorum: bool = True


@dataclass(frozen=True)
class Drbd9PeerDevice:
    volume: int
    replication: str
    peer_disk: str
    out_of_sync_bytes: Optional[int] = None
    percent_in_sync: Optional[float] = None
    resync_done: Optional[float] = None  # percent, only while has-sync-details
    eta_seconds: Optional[float] = None


@dataclass(frozen=True)
class Drbd9Connection:
    name: str
    peer_node_id: Optional[int]
    state: str
    peer_role: str
    peer_devices: Tuple[Drbd9PeerDevice, ...] = ()


@dataclass(frozen=True)
class Drbd9Resource:
    name: str
    role: str
    suspended_quorum: bool = False
    devices: Tuple[Drbd9Device, ...] = ()
    connections: Tuple[Drbd9Connection, ...] = ()


def parse_status_json(
    text: str, command: str = "drbdsetup status --json"
) -> Dict[str, Drbd9Resource]:
    """``drbdsetup status --json`` -> resources by name. A resource that is not up is absent
    (no resource at all prints ``[ ]``). Unknown keys are ignored; a missing state raises."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DrbdParseError(command, text, f"not JSON: {exc}") from None
    if not isinstance(data, list):
        raise DrbdParseError(command, text, "not a list of resources")

    def need(obj: Any, key: str, kind: type) -> Any:
        value = obj.get(key) if isinstance(obj, dict) else None
        if not _is_a(value, kind):
            raise DrbdParseError(command, text, f"{key!r} missing or not a {kind.__name__}")
        return value

    def opt(obj: dict, key: str, *kinds: type) -> Any:
        value = obj.get(key)
        return value if any(_is_a(value, kind) for kind in kinds) else None

    def state(obj: Any, key: str) -> str:
        return _state_word(need(obj, key, str), command, text)

    def objects(obj: dict, key: str) -> List[dict]:
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise DrbdParseError(command, text, f"{key!r} is not a list of objects")
        return value

    resources: Dict[str, Drbd9Resource] = {}
    for res in data:
        name = need(res, "name", str)
        devices = tuple(
            Drbd9Device(
                volume=need(dev, "volume", int),
                minor=opt(dev, "minor", int),
                disk=state(dev, "disk-state"),
                quorum=opt(dev, "quorum", bool) is not False,
            )
            for dev in objects(res, "devices")
        )
        connections = []
        for conn in objects(res, "connections"):
            peer_devices = []
            for pd in objects(conn, "peer_devices"):
                syncing = opt(pd, "has-sync-details", bool) is True
                oos = opt(pd, "out-of-sync", int)
                eta = opt(pd, "estimated-seconds-to-finish", int, float) if syncing else None
                done = opt(pd, "percent-resync-done", int, float) if syncing else None
                in_sync = opt(pd, "percent-in-sync", int, float)
                peer_devices.append(
                    Drbd9PeerDevice(
                        volume=need(pd, "volume", int),
                        replication=state(pd, "replication-state"),
                        peer_disk=state(pd, "peer-disk-state"),
                        out_of_sync_bytes=oos * KIB if oos is not None else None,
                        percent_in_sync=float(in_sync) if in_sync is not None else None,
                        resync_done=float(done) if done is not None else None,
                        eta_seconds=float(eta) if eta is not None else None,
                    )
                )
            connections.append(
                Drbd9Connection(
                    name=str(conn.get("name", "")),
                    peer_node_id=opt(conn, "peer-node-id", int),
                    state=state(conn, "connection-state"),
                    peer_role=state(conn, "peer-role"),
                    peer_devices=tuple(peer_devices),
                )
            )
        resources[name] = Drbd9Resource(
            name=name,
            role=state(res, "role"),
            suspended_quorum=opt(res, "suspended-quorum", bool) is True,
            devices=devices,
            connections=tuple(connections),
        )
    return resources


def _is_a(value: Any, kind: type) -> bool:
    # JSON's true/false must not pass for numbers (bool is an int subclass in Python).
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, kind)


def resource_from_status(res: Drbd9Resource) -> DrbdResource:
    """One DRBD 9 resource in the controller's vocabulary (see the module docstring for the
    connection word). With several peers, a Primary anywhere makes the peer role Primary (never two
    Primaries), and the least healthy connection is the one reported."""
    disk = _worst_disk(d.disk for d in res.devices) if res.devices else "Diskless"
    quorum = not res.suspended_quorum and all(d.quorum for d in res.devices)
    if not res.connections:
        return DrbdResource(
            name=res.name, role=res.role, disk=disk, quorum=quorum, connection="StandAlone"
        )

    def word(conn: Drbd9Connection) -> str:
        if conn.state == "Connected":
            for pd in conn.peer_devices:
                if pd.replication != "Established":
                    return pd.replication
        return conn.state

    words = [word(c) for c in res.connections]
    connection = next((w for w in words if w != "Connected"), words[0])
    roles = [c.peer_role for c in res.connections]
    peer_role = "Primary" if "Primary" in roles else roles[0]
    peer_devices = [pd for c in res.connections for pd in c.peer_devices]
    peer_disk = _worst_disk(pd.peer_disk for pd in peer_devices) if peer_devices else "DUnknown"

    oos_by_volume: Dict[int, int] = {}
    progress: List[float] = []
    etas: List[float] = []
    oos_known = True
    for pd in peer_devices:
        if pd.out_of_sync_bytes is None:
            oos_known = False
        else:
            # The same blocks are out of sync towards each peer: count a volume once, worst peer.
            oos_by_volume[pd.volume] = max(oos_by_volume.get(pd.volume, 0), pd.out_of_sync_bytes)
        percent = pd.resync_done if pd.resync_done is not None else pd.percent_in_sync
        if percent is not None:
            progress.append(min(1.0, max(0.0, percent / 100.0)))
        if pd.eta_seconds is not None:
            etas.append(pd.eta_seconds)
    oos = sum(oos_by_volume.values()) if oos_known and peer_devices else None
    sync_progress = 1.0 if oos == 0 else (min(progress) if progress else None)
    return DrbdResource(
        name=res.name,
        role=res.role,
        peer_role=peer_role,
        connection=connection,
        disk=disk,
        peer_disk=peer_disk,
        out_of_sync_bytes=oos,
        sync_progress=sync_progress,
        sync_eta_seconds=max(etas) if etas else None,
        quorum=quorum,
    )


def resource_from_proc(name: str, minors: Sequence[ProcMinor]) -> DrbdResource:
    """One DRBD 8.4 resource from the /proc/drbd records of its minors (one per volume)."""
    if not minors:
        raise ValueError("a resource has at least one minor")
    words = [m.cstate for m in minors]
    connection = next((w for w in words if w != "Connected"), words[0])
    first = minors[0]
    oos_values = [m.out_of_sync_bytes for m in minors]
    oos = sum(v for v in oos_values if v is not None) if None not in oos_values else None
    progresses = [m.sync_progress for m in minors]
    if oos == 0:
        progress: Optional[float] = 1.0
    elif None in progresses:
        progress = None
    else:
        progress = min(p for p in progresses if p is not None)
    etas = [m.resync.eta_seconds for m in minors if m.resync and m.resync.eta_seconds is not None]
    return DrbdResource(
        name=name,
        role=first.role or "Unknown",
        peer_role=first.peer_role or "Unknown",
        connection=connection,
        disk=_worst_disk(m.disk or "DUnknown" for m in minors),
        peer_disk=_worst_disk(m.peer_disk or "DUnknown" for m in minors),
        out_of_sync_bytes=oos,
        sync_progress=progress,
        sync_eta_seconds=max(etas) if etas else None,
    )


# --------------------------------------------------------------------------------------------
# drbdadm sh-minor, the kernel log, refusals
# --------------------------------------------------------------------------------------------


def parse_sh_minor(text: str, command: str = "drbdadm sh-minor") -> Tuple[int, ...]:
    """``drbdadm sh-minor <res>``: one minor number per volume, from the configuration."""
    lines = _lines(text)
    if not lines or not all(re.fullmatch(r"[0-9]{1,9}", line) for line in lines):
        raise DrbdParseError(command, text, "expected one minor number per line")
    return tuple(int(line) for line in lines)


SplitBrainKey = Union[str, int]

# "drbd r0/0 drbd0 node2: ..." (9, a volume), "block drbd0: ..." (8.4, a minor),
# "drbd r0 node2: ..." / "drbd r0: ..." (a resource or a connection, both versions).
_LOG_VOLUME = re.compile(r"\bdrbd ([^\s/:]+)/\d{1,9} drbd(\d{1,9})\b", re.A)
_LOG_MINOR = re.compile(r"\bblock drbd(\d{1,9}):", re.A)
_LOG_RESOURCE = re.compile(r"\bdrbd ([^\s/:]+)(?: [^\s:]+)?:")
_LOG_CONN_TO = re.compile(r"\b(?:conn|repl)\( \S+ -> (\S+) \)")
SPLIT_BRAIN_UNRESOLVED = "Split-Brain detected but unresolved"


def find_split_brain(
    kernel_log: str, minor_names: Optional[Mapping[int, str]] = None
) -> FrozenSet[SplitBrainKey]:
    """Resources (names) or minors (ints, 8.4 logs name only the minor) whose last word in the
    kernel log is an unresolved split brain.

    A later successful handshake clears it: a resolved split brain ("Split-Brain detected,
    manually solved" / "automatically solved"), or a move to a state in which the peer is reachable
    (``conn( ... -> Connected )``, ``-> SyncTarget``, ...). With ``minor_names`` an 8.4 minor is
    reported (and cleared) under its resource's name. Lines that are not DRBD's are ignored, so any
    text is accepted.
    """
    names = dict(minor_names or {})
    flagged: Dict[SplitBrainKey, bool] = {}
    for line in kernel_log.splitlines():
        if "drbd" not in line:
            continue
        key: Optional[SplitBrainKey] = None
        volume = _LOG_VOLUME.search(line)
        if volume:
            key = volume.group(1)
        else:
            minor = _LOG_MINOR.search(line)
            if minor:
                key = names.get(int(minor.group(1)), int(minor.group(1)))
            else:
                resource = _LOG_RESOURCE.search(line)
                if resource:
                    key = resource.group(1)
        if key is None:
            continue
        if SPLIT_BRAIN_UNRESOLVED in line:
            flagged[key] = True
        elif "Split-Brain detected," in line:
            flagged[key] = False
        else:
            moved = _LOG_CONN_TO.search(line)
            if moved and moved.group(1) in DRBD_PEER_REACHABLE:
                flagged[key] = False
    return frozenset(k for k, v in flagged.items() if v)


_STATE_CHANGE = re.compile(r"\((-\d{1,9})\)\s*([^\n]+)", re.A)
_MINOR_EXISTS = re.compile(r"\(161\)\s*([^\n]+)")
_COMMAND_TRAILER = re.compile(r"^Command '.*' terminated with exit code \d+$")


def parse_refusal(text: str) -> Optional[Tuple[int, str, str]]:
    """DRBD's "State change failed: (-N) message" -> (code, reason, "(-N) message") when the code
    is one of DRBD's safety refusals (``REFUSALS``); None otherwise."""
    for match in _STATE_CHANGE.finditer(text):
        code = int(match.group(1))
        if code in REFUSALS:
            return code, REFUSALS[code], f"({code}) {match.group(2).strip()}"
    return None


def drbd_words(text: str) -> str:
    """What DRBD said, without drbdadm's "Command '...' terminated with exit code N" trailer."""
    lines = [line for line in _lines(text) if not _COMMAND_TRAILER.match(line)]
    return "; ".join(lines) if lines else (text.strip() or "no output")


# --------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------


class Drbd:
    """DRBD through one injected runner. ``version`` is ``"auto"``, ``"8.4"`` or ``"9"``."""

    def __init__(
        self,
        runner: Runner,
        version: str = "auto",
        drbdadm: str = "drbdadm",
        drbdsetup: str = "drbdsetup",
        proc_drbd: str = "/proc/drbd",
        kernel_log: Sequence[str] = ("dmesg",),
        timeout: Optional[float] = None,
    ) -> None:
        if version not in ("auto", "8.4", "9"):
            raise ValueError(f"DRBD version must be auto, 8.4 or 9, not {version!r}")
        self.runner = runner
        self.wanted = version
        self.drbdadm = drbdadm
        self.drbdsetup = drbdsetup
        self.proc_drbd = proc_drbd
        self.kernel_log = tuple(kernel_log)
        self.timeout = timeout
        self._version = ""  # full version from /proc/drbd, "" while unknown
        self._minors: Dict[str, Tuple[int, ...]] = {}  # 8.4: from the configuration, cached

    # -- commands -------------------------------------------------------------------------------

    def _run(self, *argv: str) -> CommandResult:
        return self.runner.run(argv, timeout=self.timeout)

    def _read_proc(self) -> CommandResult:
        return self._run("cat", self.proc_drbd)

    @staticmethod
    def _failure(res: CommandResult) -> str:
        if res.timed_out:
            return res.describe_failure()
        return cannot_read(res.command, res.stderr or res.stdout, f"rc {res.rc}")

    # -- version --------------------------------------------------------------------------------

    def version(self) -> str:
        """``"8.4.11"``, ``"9.2.18"``; ``""`` while it cannot be read (module not loaded)."""
        if not self._version:
            res = self._read_proc()
            if res.ok:
                try:
                    self._version = parse_proc_version(res.stdout, res.command)
                except DrbdParseError:
                    pass
        return self._version

    def generation(self) -> Optional[str]:
        """``"8.4"`` or ``"9"`` (configured, or read from /proc/drbd); None while unknown."""
        return self._generation(self.version())

    def _generation(self, version: str) -> Optional[str]:
        if self.wanted != "auto":
            return self.wanted
        if version.startswith("9."):
            return "9"
        if version.startswith("8."):
            return "8.4"
        return None

    # -- observe --------------------------------------------------------------------------------

    def observe(self, resources: Sequence[str]) -> Tuple[DrbdResource, ...]:
        """One entry per resource, in order. Never raises: what cannot be read is an ``error``."""
        names = list(resources)
        try:
            return self._observe(names)
        except Exception as exc:  # a parser bug must not stop the loop; decide() holds on errors
            log.exception("reading DRBD failed")
            return self._all_failed(names, f"cannot read DRBD's state: {exc!r}")

    def _observe(self, names: List[str]) -> Tuple[DrbdResource, ...]:
        proc: Optional[CommandResult] = None
        generation = self.wanted if self.wanted != "auto" else self._generation(self._version)
        if generation is None or generation == "8.4":
            proc = self._read_proc()
            if not proc.ok:
                if _missing_file(proc, self.proc_drbd):
                    # No /proc/drbd: the module is not loaded, so nothing is up (`up` loads it).
                    self._version = ""
                    return tuple(DrbdResource(name=n, configured=False) for n in names)
                return self._all_failed(names, self._failure(proc))
            try:
                self._version = parse_proc_version(proc.stdout, proc.command)
            except DrbdParseError as exc:
                return self._all_failed(names, str(exc))
            generation = self._generation(self._version)
            if generation is None:
                return self._all_failed(
                    names, f"unsupported DRBD version {self._version!r} in {proc.command}"
                )
        if generation == "9":
            observed, minor_names = self._observe_9(names)
        else:
            assert proc is not None
            observed, minor_names = self._observe_84(names, proc)
        return self._mark_split_brain(observed, minor_names)

    def _all_failed(self, names: Sequence[str], error: str) -> Tuple[DrbdResource, ...]:
        return tuple(DrbdResource(name=n, error=error) for n in names)

    def _observe_9(self, names: Sequence[str]) -> Tuple[List[DrbdResource], Dict[int, str]]:
        res = self._run(self.drbdsetup, "status", "--json")
        if not res.ok:
            if self.wanted == "auto":
                self._version = ""  # a module reload may have changed the generation
            return list(self._all_failed(names, self._failure(res))), {}
        try:
            status = parse_status_json(res.stdout, res.command)
        except DrbdParseError as exc:
            return list(self._all_failed(names, str(exc))), {}
        out = []
        minor_names: Dict[int, str] = {}
        for name in names:
            found = status.get(name)
            if found is None:
                out.append(DrbdResource(name=name, configured=False))
                continue
            out.append(resource_from_status(found))
            minor_names.update({d.minor: name for d in found.devices if d.minor is not None})
        return out, minor_names

    def _minors_of(self, name: str) -> Union[Tuple[int, ...], str]:
        """The minors of a resource from the configuration, or an error message."""
        cached = self._minors.get(name)
        if cached is not None:
            return cached
        res = self._run(self.drbdadm, "sh-minor", name)
        if not res.ok:
            return self._failure(res)
        try:
            minors = parse_sh_minor(res.stdout, res.command)
        except DrbdParseError as exc:
            return str(exc)
        self._minors[name] = minors
        return minors

    def _observe_84(
        self, names: Sequence[str], proc: CommandResult
    ) -> Tuple[List[DrbdResource], Dict[int, str]]:
        try:
            table = parse_proc_drbd(proc.stdout, proc.command)
        except DrbdParseError as exc:
            return list(self._all_failed(names, str(exc))), {}
        out = []
        minor_names: Dict[int, str] = {}
        for name in names:
            minors = self._minors_of(name)
            if isinstance(minors, str):
                out.append(DrbdResource(name=name, error=minors))
                continue
            minor_names.update({m: name for m in minors})
            records = [table.get(m) for m in minors]
            if all(r is not None and r.configured for r in records):
                out.append(resource_from_proc(name, [r for r in records if r is not None]))
            else:
                # Not (fully) in /proc/drbd: ask drbdadm, which says "Unconfigured" if it is down.
                out.append(self._observe_by_drbdadm(name))
        return out, minor_names

    def _observe_by_drbdadm(self, name: str) -> DrbdResource:
        """``drbdadm cstate`` (then ``role`` and ``dstate`` if it is up after all)."""
        cstate_res = self._run(self.drbdadm, "cstate", name)
        if is_unknown_resource(cstate_res.rc, cstate_res.stderr + cstate_res.stdout):
            return DrbdResource(name=name, configured=False)
        if not cstate_res.ok:
            return DrbdResource(name=name, error=self._failure(cstate_res))
        try:
            cstate = parse_cstate(cstate_res.stdout, cstate_res.command)
        except DrbdParseError as exc:
            return DrbdResource(name=name, error=str(exc))
        if cstate is None:
            return DrbdResource(name=name, configured=False)
        role_res = self._run(self.drbdadm, "role", name)
        dstate_res = self._run(self.drbdadm, "dstate", name)
        for res in (role_res, dstate_res):
            if not res.ok:
                return DrbdResource(name=name, error=self._failure(res))
        try:
            role = parse_role(role_res.stdout, role_res.command)
            disk = parse_dstate(dstate_res.stdout, dstate_res.command)
        except DrbdParseError as exc:
            return DrbdResource(name=name, error=str(exc))
        if role is None or disk is None:
            # cstate said it is up, role or dstate says it is not: it changed under us.
            return DrbdResource(name=name, error=f"DRBD changed state while {name} was being read")
        return DrbdResource(
            name=name,
            role=role.local,
            peer_role=role.peer or "Unknown",
            connection=cstate,
            disk=disk.local,
            peer_disk=disk.peer or "DUnknown",
        )

    def _mark_split_brain(
        self, observed: List[DrbdResource], minor_names: Mapping[int, str]
    ) -> Tuple[DrbdResource, ...]:
        standalone = {
            i
            for i, r in enumerate(observed)
            if r.configured and r.error is None and r.connection == "StandAlone"
        }
        if not standalone:
            return tuple(observed)  # the usual case: no kernel-log read
        kernel = self._run(*self.kernel_log)
        if not kernel.ok:
            # Without the log a split brain cannot be told from a disconnect: do not guess.
            error = self._failure(kernel)
            return tuple(
                replace(r, error=error) if i in standalone else r for i, r in enumerate(observed)
            )
        flagged = find_split_brain(kernel.stdout, minor_names)
        for minor, name in minor_names.items():
            if minor in flagged:
                flagged = flagged | {name}
        return tuple(
            replace(r, split_brain=True) if i in standalone and r.name in flagged else r
            for i, r in enumerate(observed)
        )

    # -- actions --------------------------------------------------------------------------------

    def up(self, resource: str) -> StepResult:
        """``drbdadm up``. Idempotent: a resource that is already up makes drbdadm fail with
        ``(161) Minor or volume exists already``, which counts as success."""
        self._minors.pop(resource, None)  # the configuration may have changed since
        res = self._run(self.drbdadm, "up", resource)
        if res.timed_out:
            return StepResult(False, res.describe_failure(), reason="timeout")
        if res.ok:
            return StepResult(True, f"{res.command}: brought {resource} up")
        text = res.stderr + "\n" + res.stdout
        exists = _MINOR_EXISTS.search(text)
        if exists:
            return StepResult(
                True, f"{resource} is already up ({res.command}: (161) {exists.group(1).strip()})"
            )
        return self._failed(res)

    def primary(self, resource: str) -> StepResult:
        """``drbdadm primary`` (never ``--force``)."""
        return self._role_change("primary", resource)

    def secondary(self, resource: str) -> StepResult:
        return self._role_change("secondary", resource)

    def outdate(self, resource: str) -> StepResult:
        """``drbdadm outdate``: mark this (Secondary, disconnected) disk Outdated, for the peer's
        fence-peer handler. DRBD refuses it on a Primary; its words come back refused."""
        return self._role_change("outdate", resource)

    def generation_ids(self, resource: str) -> Optional[GenerationIds]:
        """DRBD 8.4's ``drbdadm get-gi``; None when it cannot be read (or on DRBD 9, whose
        get-gi is per peer and not captured yet)."""
        if self.generation() != "8.4":
            return None
        res = self._run(self.drbdadm, "get-gi", resource)
        if not res.ok:
            return None
        try:
            return parse_get_gi(res.stdout, res.command)
        except DrbdParseError as exc:
            log.debug("%s", exc)
            return None

    def _role_change(self, verb: str, resource: str) -> StepResult:
        res = self._run(self.drbdadm, verb, resource)
        if res.timed_out:
            return StepResult(False, res.describe_failure(), reason="timeout")
        if res.ok:
            return StepResult(True, f"{res.command}: {resource} is {verb.capitalize()}")
        return self._failed(res)

    def _failed(self, res: CommandResult) -> StepResult:
        text = res.stderr + "\n" + res.stdout
        refusal = parse_refusal(text)
        if refusal:
            _code, reason, words = refusal
            return StepResult(
                False, f"{res.command} refused by DRBD (rc {res.rc}): {words}", True, reason
            )
        return StepResult(
            False, f"{res.command} failed (rc {res.rc}): {drbd_words(text)}", reason="failed"
        )


def _missing_file(res: CommandResult, path: str) -> bool:
    """``cat`` says the file does not exist (not: ``cat`` itself could not be started)."""
    return (
        res.rc == 1
        and not res.timed_out
        and path in res.stderr
        and ("No such file or directory" in res.stderr)
    )
