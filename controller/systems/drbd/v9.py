"""DRBD 9: ``drbdsetup status --json`` and one resource in the controller's vocabulary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ...model import DrbdResource
from .common import KIB, DrbdParseError, _state_word, _worst_disk


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


class _Reader:
    """Typed access to one ``drbdsetup status --json`` document; a missing or mistyped state
    raises DrbdParseError quoting the command and its output."""

    def __init__(self, command: str, text: str) -> None:
        self.command, self.text = command, text

    def need(self, obj: Any, key: str, kind: type) -> Any:
        value = obj.get(key) if isinstance(obj, dict) else None
        if not _is_a(value, kind):
            raise DrbdParseError(
                self.command, self.text, f"{key!r} missing or not a {kind.__name__}"
            )
        return value

    @staticmethod
    def opt(obj: dict, key: str, *kinds: type) -> Any:
        value = obj.get(key)
        return value if any(_is_a(value, kind) for kind in kinds) else None

    def state(self, obj: Any, key: str) -> str:
        return _state_word(self.need(obj, key, str), self.command, self.text)

    def objects(self, obj: dict, key: str) -> List[dict]:
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise DrbdParseError(self.command, self.text, f"{key!r} is not a list of objects")
        return value


def _peer_device(r: _Reader, pd: dict) -> Drbd9PeerDevice:
    syncing = r.opt(pd, "has-sync-details", bool) is True
    oos = r.opt(pd, "out-of-sync", int)
    eta = r.opt(pd, "estimated-seconds-to-finish", int, float) if syncing else None
    done = r.opt(pd, "percent-resync-done", int, float) if syncing else None
    in_sync = r.opt(pd, "percent-in-sync", int, float)
    return Drbd9PeerDevice(
        volume=r.need(pd, "volume", int),
        replication=r.state(pd, "replication-state"),
        peer_disk=r.state(pd, "peer-disk-state"),
        out_of_sync_bytes=oos * KIB if oos is not None else None,
        percent_in_sync=float(in_sync) if in_sync is not None else None,
        resync_done=float(done) if done is not None else None,
        eta_seconds=float(eta) if eta is not None else None,
    )


def _connection(r: _Reader, conn: dict) -> Drbd9Connection:
    # The peer devices are read before the connection's own states, as DRBD lists them.
    peer_devices = tuple(_peer_device(r, pd) for pd in r.objects(conn, "peer_devices"))
    return Drbd9Connection(
        name=str(conn.get("name", "")),
        peer_node_id=r.opt(conn, "peer-node-id", int),
        state=r.state(conn, "connection-state"),
        peer_role=r.state(conn, "peer-role"),
        peer_devices=peer_devices,
    )


def _resource(r: _Reader, res: Any) -> Drbd9Resource:
    name = r.need(res, "name", str)
    devices = tuple(
        Drbd9Device(
            volume=r.need(dev, "volume", int),
            minor=r.opt(dev, "minor", int),
            disk=r.state(dev, "disk-state"),
            quorum=r.opt(dev, "quorum", bool) is not False,
        )
        for dev in r.objects(res, "devices")
    )
    connections = tuple(_connection(r, conn) for conn in r.objects(res, "connections"))
    return Drbd9Resource(
        name=name,
        role=r.state(res, "role"),
        suspended_quorum=r.opt(res, "suspended-quorum", bool) is True,
        devices=devices,
        connections=connections,
    )


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
    r = _Reader(command, text)
    resources: Dict[str, Drbd9Resource] = {}
    for res in data:
        resource = _resource(r, res)
        resources[resource.name] = resource
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
