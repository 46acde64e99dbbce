"""DRBD 8.4: ``/proc/drbd`` (every minor at once), ``drbdadm get-gi``, and one resource from its
minors' records."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from ...model import DrbdResource
from .common import KIB, MIB, DrbdParseError, _split_pair, _state_word, _worst_disk


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
    return GenerationIds(
        uuids[0],
        uuids[1],
        (uuids[2], uuids[3]),
        consistent=f[0],
        was_uptodate=f[1],
        primary=f[2],
        connected=f[3],
        full_sync=f[4],
        peer_outdated=f[5],
        crashed_primary=f[6],
        text=line,
    )


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
