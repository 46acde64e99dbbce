#!/usr/bin/env python3
"""A stand-in for DRBD 8.4's ``drbdadm`` between the two nodes of the namespace lab.

The machine has no DRBD kernel module, so the lab replaces the kernel and ``drbdadm`` with this
script. What the controller sees must be what real DRBD 8.4.11 shows: ``/proc/drbd``, the answers
of ``drbdadm role|cstate|dstate``, the refusals with their exit codes and the kernel log lines of a
split brain are produced character for character in the formats captured from the real module
(``tests/fixtures/drbd84sim/``, a copy of ``shared/fixtures/drbd84/``). Only the counters that
depend on real I/O (ns, nr, dw, dr, al, oos) are approximations.

Shared state. Both nodes' halves of a resource live in one JSON file (``res-<name>.json``) in the
simulator directory; every command takes an ``fcntl`` lock on ``<dir>/lock``, lets time-driven
events happen (a resync that finished, a link that went down), applies its own change, writes the
files back atomically and regenerates each node's ``/proc/drbd`` (``<dir>/<node>/proc_drbd``). The
lab starts one ``--sim-kernel`` process that does the same every 0.1 s, so the file also follows
link cuts and resync progress when nobody runs ``drbdadm``.

What is modelled, after the 8.4 kernel (drbd_state.c, drbd_receiver.c):
* roles, disk states, ``up``/``down``/``connect``/``disconnect``/``primary``/``secondary``/
  ``outdate``; the refusals ``(-1)`` two primaries, ``(-2)`` no UpToDate data, ``(-12)`` held open;
* the connection follows both nodes' resource state and the lab's link state (``links.json``,
  changed by the harness's ``cut_link()``): Connected, WFConnection while the peer is away,
  StandAlone after ``disconnect`` or a split brain;
* data generation UUIDs (current, bitmap, two history slots) and ``drbd_uuid_compare()``'s rules,
  so a reconnect decides as the kernel does: no sync, SyncSource/SyncTarget (with a resync that
  takes ``resync_seconds`` and a real-looking progress line), or split brain when both sides
  were Primary apart (both StandAlone, "Split-Brain detected but unresolved" in the kernel log);
  ``connect --discard-my-data`` resolves it as in the recovery capture;
* a resource that is down (before ``up``, after ``down`` or a crash), as measured in the VM lab:
  ``role``/``cstate`` fail with rc 10 "(127) Device minor not allocated" plus the kernel's
  "unknown minor"; ``dstate`` answers from the meta data (``Inconsistent``, or ``Consistent`` for
  UpToDate data); ``up`` of a node that died as Primary prints "Nothing to do." (drbdmeta
  apply-al) on stderr with rc 0; ``up`` of an up node is refused by drbdmeta with rc 1;
  ``disconnect`` of a StandAlone node fails with rc 10 "(162) ... unknown connection";
* without a fencing policy (the lab's configuration) a consistent disk attaches UpToDate, and a
  disconnected Secondary stays UpToDate: that is why 8.4 can split-brain at all.

Block data: with one backing file per node (spec ``disks``: {node: path}, the namespace lab's
way) the simulator replicates the data at the moments DRBD's protocol C guarantees it, by copying
the file in place: when a connected Primary demotes or the connection ends without a resync
running (the peer then holds every write the Primary acknowledged), and when a resync finishes
(the target takes the source's data). A node promoted without its peer -- stale or not -- keeps
what its own file holds, so an acknowledged write lost to a stale promotion reads back wrong, as
on real DRBD. (The copy at a cut can also carry writes the Primary made in the same instant:
the peer is at most fresher than DRBD would leave it, never staler.) A spec ``disk`` (one path)
is one file both nodes share: nothing to copy. "Held open" is real: ``secondary`` and ``down``
are refused while a process in the node's network namespace holds the node's backing file open
(tgtd serving it), or while the flag file ``<dir>/<node>/open-<resource>`` exists (for tests
without tgtd).

Node identity: ``--sim-node NAME`` or ``$DRBDSIM_NODE``; directory: ``--sim-dir DIR`` or
``$DRBDSIM_DIR``. Extra entry points: ``--sim-dmesg`` prints the node's kernel log (what the lab's
``dmesg`` wrapper runs), ``--sim-kernel`` is the ticker. Standard library only: it runs with the
controller's interpreter inside a node namespace.

Speed: every ``drbdadm`` call is a fresh interpreter (``python -S``), so what it imports is paid
on every call. Real ``drbdadm role`` costs a few milliseconds; the simulator keeps close by
importing only ``json`` beyond builtins (no ``typing``, ``contextlib`` or ``random`` at run time:
random numbers come from ``os.urandom``). ``bench/bench_switch.py`` reports the per-call cost.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs ~8 ms on every call
    from typing import Dict, List, Optional, Sequence, TextIO, Tuple

ENV_NODE = "DRBDSIM_NODE"
ENV_DIR = "DRBDSIM_DIR"

PROC_HEADER = "version: 8.4.11 (api:1/proto:86-101)\nsrcversion: F73C670A7EC572DB9CF3E5B \n"
JUST_CREATED = 0x4  # UUID_JUST_CREATED: the current UUID of fresh meta data
NEW_BM_OFFSET = 1 << 48  # UUID_NEW_BM_OFFSET, added to the bitmap UUID when a resync starts
SB_UNRESOLVED = "Split-Brain detected but unresolved, dropping connection!"

# Ordered as DRBD orders disk states (enum drbd_disk_state); comparisons use the index.
DISK_ORDER = (
    "Diskless",
    "Attaching",
    "Failed",
    "Negotiating",
    "Inconsistent",
    "Outdated",
    "DUnknown",
    "Consistent",
    "UpToDate",
)

# drbdsetup's exit codes for state-change refusals (print_config_error in drbdsetup 8.4).
SS_TWO_PRIMARIES = (-1, "Multiple primaries not allowed by config", 11)
SS_NO_UP_TO_DATE_DISK = (-2, "Need access to UpToDate data", 17)
SS_CONNECTED_OUTDATES = (-6, "Refusing to be Outdated while Connected", 11)
SS_DEVICE_IN_USE = (-12, "Device is held open by someone", 11)
# Failures that are not state changes: "<obj>: Failure: (N) text", exit code 10.
ERR_DISCARD_IMPOSSIBLE = (123, "--discard-my-data not allowed when primary.")
ERR_NET_CONFIGURED = (125, "Device has a net-config (use disconnect first)")
ERR_MINOR_INVALID = (127, "Device minor not allocated")
ERR_RES_NOT_KNOWN = (158, "Unknown resource")
# What the kernel adds to a failure for a minor that does not exist (drbd_adm_prepare()).
UNKNOWN_MINOR_INFO = "additional info from kernel:\nunknown minor"
# `disconnect` of a StandAlone resource: 8.4 has no connection object left to address
# (measured in the VM lab, after a split brain; the object is printed as "??").
ERR_CONN_UNKNOWN = (162, "Invalid configuration request")
UNKNOWN_CONN_INFO = "additional info from kernel:\nunknown connection"
# `drbdadm dstate` of a resource that is down reads the meta data (drbdmeta), which knows only
# whether the data was consistent: UpToDate data says "Consistent" (measured in the VM lab; the
# Outdated word is drbdmeta's flag name, not measured).
MD_DISK_WORD = {"Inconsistent": "Inconsistent", "Outdated": "Outdated"}
# `up` of a node whose meta data still says Primary (it died as Primary): drbdmeta apply-al
# finds the activity log with nothing to replay and says so on stderr (rc 0, measured).
APPLY_AL_NOTHING = "Nothing to do."

DEFAULTS = {
    "resync_seconds": 1.0,  # how long every resync takes, whatever its size
    "diverge_kb": 64,  # what a Primary is assumed to write while the peer is away (oos)
    "port": 7789,
}


class SimError(Exception):
    """A usage or setup error of the simulator itself (not something DRBD would say)."""


def disk_rank(state: str) -> int:
    return DISK_ORDER.index(state)


def hex_uuid(value: int) -> str:
    return "%016X" % value


# --------------------------------------------------------------------------------------------
# Pure rendering: /proc/drbd and the sync progress lines, as drbd/drbd_proc.c prints them.
# --------------------------------------------------------------------------------------------


def thousands(value: int) -> str:
    """seq_printf_with_thousands_grouping(): 1664 -> '1,664'."""
    if value >= 1000000:
        rest = value % 1000000
        return "%d,%03d,%03d" % (value // 1000000, rest // 1000, rest % 1000)
    if value >= 1000:
        return "%d,%03d" % (value // 1000, value % 1000)
    return "%d" % value


def per_mil_done(left_kb: int, total_kb: int) -> int:
    """drbd_get_syncer_progress(): the kernel's coarse per-mille (bits of 4 KiB, shifted by 10)."""
    total_bits, left_bits = total_kb // 4, left_kb // 4
    if left_bits > total_bits:
        return 0 if total_bits else 1000
    shift = 16 if total_bits > 0xFFFFFFFF else 10
    return 1000 - (left_bits >> shift) * 1000 // (1 + (total_bits >> shift))


def render_progress(
    left_kb: int,
    total_kb: int,
    finish_seconds: int,
    speed: int,
    average: int,
    want: Optional[int] = None,
) -> str:
    """The two tab-indented lines under a SyncSource/SyncTarget device (``want`` on the target)."""
    res = per_mil_done(left_kb, total_kb)
    x = res // 50
    bar = "=" * max(0, x - 1) + ">" + "." * (20 - x)
    if total_kb // 4 > (4 << 18):  # more than 4 GiB: the kernel switches to MiB
        amount = "(%d/%d)M" % ((left_kb // 4 >> 10) * 4, (total_kb // 4 >> 10) * 4)
    else:
        amount = "(%d/%d)K" % (left_kb, total_kb)
    line1 = "\t[%s] sync'ed:%3d.%d%% %s\n" % (bar, res // 10, res % 10, amount)
    rt = max(0, finish_seconds)
    line2 = "\tfinish: %d:%02d:%02d speed: %s (%s)" % (
        rt // 3600,
        (rt % 3600) // 60,
        rt % 60,
        thousands(speed),
        thousands(average),
    )
    if want is not None:
        line2 += " want: " + thousands(want)
    return line1 + line2 + " K/sec\n"


def render_device(minor: int, view: Dict[str, object]) -> str:
    """One device of /proc/drbd: the state line, the counters, the progress lines if syncing."""
    protocol = "C" if view["net"] else " "
    flags = "r----" + ("s" if view["al_suspended"] else "-")
    text = "%2d: cs:%s ro:%s/%s ds:%s/%s %s %s\n" % (
        minor,
        view["cstate"],
        view["role"],
        view["peer_role"],
        view["disk"],
        view["peer_disk"],
        protocol,
        flags,
    )
    text += (
        "    ns:%(ns)d nr:%(nr)d dw:%(dw)d dr:%(dr)d al:%(al)d bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 "
        "wo:f oos:%(oos)d\n" % view
    )
    progress = view.get("progress")
    if progress:
        text += str(progress)
    return text


def render_proc_drbd(devices: Sequence[Tuple[int, Dict[str, object]]]) -> str:
    """The whole file; only configured minors appear, a gap in the numbering gives a blank line."""
    text = PROC_HEADER
    prev = -1
    for minor, view in sorted(devices, key=lambda d: d[0]):
        if prev != minor - 1:
            text += "\n"
        prev = minor
        text += render_device(minor, view)
    return text


def ppsize(kb: int) -> str:
    """drbd's ppsize(): "64 KB", "20 MB" (KiB below 10000 of a unit, rounded)."""
    units = "KMGTPE"
    base = 0
    while kb >= 10000 and base < len(units) - 1:
        kb = (kb >> 10) + (1 if kb & (1 << 9) else 0)
        base += 1
    return f"{kb} {units[base]}B"


def klog_line(timestamp: float, message: str) -> str:
    sec = int(timestamp)
    return "[%5d.%06d] %s\n" % (sec, int((timestamp - sec) * 1000000), message)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def new_side(initial: str, size_kb: int, common_uuid: int) -> Dict[str, object]:
    fresh = initial == "new"
    return {
        "up": False,
        "role": "Secondary",
        # The disk state the meta data would give on attach (kept while the resource is down).
        "disk": "Inconsistent" if fresh else "UpToDate",
        "net": True,  # a network configuration exists (False = StandAlone)
        "uuids": [JUST_CREATED if fresh else common_uuid, 0, 0, 0],
        "oos": size_kb if fresh else 0,
        "al_suspended": False,
        "discard": False,  # connect --discard-my-data, until the next handshake
        "primary_ind": False,  # the meta data says Primary: the node died as Primary
        "ns": 0,
        "nr": 0,
        "dw": 0,
        "dr": 0,
        "al": 8,
    }


class Cluster:
    """The simulator's shared state directory, for the harness (the CLI uses the same code)."""

    def __init__(self, directory: str) -> None:
        self.dir = os.path.abspath(directory)
        self._config: Optional[dict] = None

    # ---- set-up ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str,
        nodes: Dict[str, Dict[str, object]],
        resources: Dict[str, Dict[str, object]],
        initial: str = "synced",
        **settings: object,
    ) -> "Cluster":
        """A new cluster: ``nodes`` {name: {addr, netns}}, ``resources`` {name: {minor, size_kb,
        disk}}. ``initial="new"`` is fresh meta data on both (Inconsistent, as after create-md);
        ``"synced"`` is both UpToDate with one data generation (as after the initial sync)."""
        if len(nodes) != 2:
            raise SimError("the simulator models exactly two nodes")
        if initial not in ("new", "synced"):
            raise SimError("initial must be 'new' or 'synced'")
        os.makedirs(directory, exist_ok=True)
        config = dict(DEFAULTS)
        config.update(settings)
        config["nodes"] = {n: dict(v) for n, v in nodes.items()}
        config["resources"] = {}
        for minor, (name, res) in enumerate(resources.items()):
            spec = {"minor": minor, "size_kb": 65496, "disk": None}
            spec.update(res)
            config["resources"][name] = spec
        cluster = cls(directory)
        _write_json(os.path.join(cluster.dir, "cluster.json"), config)
        _write_json(os.path.join(cluster.dir, "links.json"), {n: True for n in nodes})
        for name, spec in config["resources"].items():
            common = _random64() & ~1
            state = {
                "connected": False,
                "sync": None,
                "sides": {n: new_side(initial, int(spec["size_kb"]), common) for n in nodes},
            }
            _write_json(cluster._res_path(name), state)
        for node in nodes:
            os.makedirs(os.path.join(cluster.dir, node), exist_ok=True)
            with open(cluster.kernel_log_path(node), "a"):
                pass
        if config.get("manual_clock"):
            _write_json(cluster._clock_path(), {"now": time.monotonic()})
        with cluster.locked() as world:
            world.refresh()
        return cluster

    # ---- paths ------------------------------------------------------------------------------

    @property
    def config(self) -> dict:
        if self._config is None:
            path = os.path.join(self.dir, "cluster.json")
            try:
                with open(path) as f:
                    self._config = json.load(f)
            except OSError as exc:
                raise SimError(f"no simulator state in {self.dir}: {exc.strerror}") from None
        return self._config

    @property
    def nodes(self) -> List[str]:
        return list(self.config["nodes"])

    def _res_path(self, name: str) -> str:
        return os.path.join(self.dir, f"res-{name}.json")

    def proc_drbd_path(self, node: str) -> str:
        return os.path.join(self.dir, node, "proc_drbd")

    def _clock_path(self) -> str:
        return os.path.join(self.dir, "clock.json")

    def now(self) -> float:
        """The simulator's time: the machine's monotonic clock, or, when the cluster was created
        with ``manual_clock=True``, a clock that only ``advance()`` moves. A test that asserts a
        state in the middle of a resync then sees it however loaded the machine is."""
        if not self.config.get("manual_clock"):
            return time.monotonic()
        with open(self._clock_path()) as f:
            return float(json.load(f)["now"])

    def kernel_log_path(self, node: str) -> str:
        return os.path.join(self.dir, node, "kern.log")

    def open_flag_path(self, node: str, resource: str) -> str:
        return os.path.join(self.dir, node, f"open-{resource}")

    # ---- locked access ------------------------------------------------------------------------

    def locked(self) -> "Locked":
        """The whole state under the lock; written back (atomically, file by file) on success."""
        return Locked(self)

    # ---- what the harness calls ---------------------------------------------------------------

    def set_link(self, node: str, up: bool) -> None:
        """The lab's link of ``node`` went down or came back (``cut_link()``/``restore_link()``)."""
        with self.locked() as world:
            world.links[node] = bool(up)
            world.links_dirty = True
            world.refresh()

    def crash(self, node: str) -> None:
        """The node died: its resources vanish without a clean demote or disconnect."""
        with self.locked() as world:
            for res in world.resources.values():
                res.crash(node)
            world.refresh()

    def tick(self) -> None:
        with self.locked() as world:
            world.refresh()

    def advance(self, seconds: float) -> None:
        """Manual clock only: let ``seconds`` of simulated time pass, then what falls due."""
        if not self.config.get("manual_clock"):
            raise SimError("advance() needs a cluster created with manual_clock=True")
        with self.locked() as world:
            world.now += seconds
            _write_json(self._clock_path(), {"now": world.now})
            world.refresh()

    def kernel_log(self, node: str) -> str:
        try:
            with open(self.kernel_log_path(node)) as f:
                return f.read()
        except FileNotFoundError:
            return ""


class Locked:
    """``with cluster.locked() as world``: a class, not contextlib's decorator (import cost)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def __enter__(self) -> "World":
        self.file = open(os.path.join(self.cluster.dir, "lock"), "a")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        try:
            self.world = World(self.cluster)
        except BaseException:
            self._release()
            raise
        return self.world

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                self.world.save()
        finally:
            self._release()

    def _release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


class World:
    """Everything loaded under the lock; commands and time-driven events change it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.config = cluster.config
        self.now = cluster.now()
        with open(os.path.join(cluster.dir, "links.json")) as f:
            self.links: Dict[str, bool] = json.load(f)
        self.links_dirty = False
        self.logs: Dict[str, List[str]] = {n: [] for n in self.config["nodes"]}
        self.resources: Dict[str, Resource] = {}
        for name, spec in self.config["resources"].items():
            with open(cluster._res_path(name)) as f:
                self.resources[name] = Resource(self, name, spec, json.load(f))

    def log(self, node: str, message: str, at: Optional[float] = None) -> None:
        self.logs[node].append(klog_line(self.now if at is None else at, message))

    def link_up(self, node: str) -> bool:
        return bool(self.links.get(node, True))

    def refresh(self) -> None:
        """Let time-driven events happen for every resource."""
        for res in self.resources.values():
            res.settle()

    def save(self) -> None:
        for node, lines in self.logs.items():
            if lines:
                with open(self.cluster.kernel_log_path(node), "a") as f:
                    f.write("".join(lines))
        for res in self.resources.values():
            if res.dirty:
                _write_json(self.cluster._res_path(res.name), res.state)
        if self.links_dirty:
            _write_json(os.path.join(self.cluster.dir, "links.json"), self.links)
        for node in self.config["nodes"]:
            devices = [
                (r.minor, r.view(node)) for r in self.resources.values() if r.side(node)["up"]
            ]
            _write_text(self.cluster.proc_drbd_path(node), render_proc_drbd(devices))


class Refusal(Exception):
    """What drbdsetup prints and the exit code drbdadm passes on."""

    def __init__(self, message: str, rc: int) -> None:
        super().__init__(message)
        self.message = message
        self.rc = rc


def state_refusal(obj: str, code: Tuple[int, str, int]) -> Refusal:
    return Refusal(f"{obj}: State change failed: ({code[0]}) {code[1]}", code[2])


def failure(obj: str, code: Tuple[int, str]) -> Refusal:
    message = f"{obj}: Failure: ({code[0]}) {code[1]}"
    if code == ERR_MINOR_INVALID:
        message += "\n" + UNKNOWN_MINOR_INFO
    elif code == ERR_CONN_UNKNOWN:
        message += "\n" + UNKNOWN_CONN_INFO
    return Refusal(message, 10)


class MetaRefusal(Refusal):
    """A failure of drbdmeta, run by drbdadm before drbdsetup (rc 1, names drbdmeta's line)."""

    def __init__(self, message: str, command: str, meta_rc: int) -> None:
        super().__init__(message, 1)
        self.command = command
        self.meta_rc = meta_rc


class Resource:
    """One resource, both sides; methods named after what the kernel does."""

    def __init__(self, world: World, name: str, spec: dict, state: dict) -> None:
        self.world = world
        self.name = name
        self.minor = int(spec["minor"])
        self.size_kb = int(spec["size_kb"])
        self.disk_path = spec.get("disk")  # one file both nodes share, or
        self.disks = dict(spec.get("disks") or {})  # {node: its own backing file}
        self.state = state
        self.dirty = False
        self.nodes = list(world.config["nodes"])

    # ---- small helpers ------------------------------------------------------------------------

    def side(self, node: str) -> dict:
        return self.state["sides"][node]

    def peer_of(self, node: str) -> str:
        return self.nodes[1] if node == self.nodes[0] else self.nodes[0]

    @property
    def connected(self) -> bool:
        return bool(self.state["connected"])

    def changed(self) -> None:
        self.dirty = True

    def disk_of(self, node: str) -> Optional[str]:
        return self.disks.get(node) or self.disk_path

    def mirror(self, source: str) -> None:
        """Protocol C's promise made visible: the peer's backing file gets ``source``'s data."""
        src, dst = self.disks.get(source), self.disks.get(self.peer_of(source))
        if not src or not dst or src == dst:
            return
        # In place: the peer's tgtd may hold its file open, and a replaced inode would not be it.
        # In the kernel (copy_file_range: ~10 ms for the lab's 16 MiB, a fifth of a Python
        # loop's), since it runs inside a demotion the lab times.
        with open(src, "rb") as fin, open(dst, "r+b") as fout:
            size = os.fstat(fin.fileno()).st_size
            done = 0
            try:
                for _ in range(1 << 16):  # bounded; one call usually copies it all
                    if done >= size:
                        break
                    n = os.copy_file_range(fin.fileno(), fout.fileno(), size - done, done, done)
                    if n <= 0:
                        break
                    done += n
            except OSError:  # a file system without it: the plain way
                fin.seek(done)
                fout.seek(done)
                for _ in range(1 << 16):
                    chunk = fin.read(1 << 20)
                    if not chunk:
                        break
                    fout.write(chunk)
            fout.truncate(size)

    def primary_side(self) -> Optional[str]:
        for node in self.nodes:
            if self.side(node)["up"] and self.side(node)["role"] == "Primary":
                return node
        return None

    def dev(self, node: str, message: str, at: Optional[float] = None) -> None:
        self.world.log(node, f"block drbd{self.minor}: {message}", at)

    def conn_log(self, node: str, message: str, at: Optional[float] = None) -> None:
        self.world.log(node, f"drbd {self.name}: {message}", at)

    def set_current(self, node: str, value: int) -> None:
        """__drbd_uuid_set(UI_CURRENT): bit 0 of the current UUID says "Primary"."""
        side = self.side(node)
        side["uuids"][0] = (value | 1) if side["role"] == "Primary" else (value & ~1)

    def new_current_uuid(self, node: str, writes_apart: bool = True) -> None:
        """drbd_uuid_new_current(): the data generation this side starts alone.

        The simulator cannot see the writes that follow, so it marks ``diverge_kb`` as out of
        sync right away: what a Primary is assumed to write while its peer is away."""
        side = self.side(node)
        side["uuids"][1] = side["uuids"][0]
        self.set_current(node, _random64())
        if writes_apart:
            side["oos"] = min(self.size_kb, int(side["oos"]) + int(self.world.config["diverge_kb"]))
        self.dev(node, "new current UUID " + self.uuid_text(node))

    def uuid_text(self, node: str) -> str:
        return ":".join(hex_uuid(u) for u in self.side(node)["uuids"])

    def cstate(self, node: str) -> str:
        side = self.side(node)
        if not side["up"]:
            return "Unconfigured"
        if not side["net"]:
            return "StandAlone"
        if not self.connected:
            return "WFConnection"
        sync = self.state["sync"]
        if sync:
            return "SyncSource" if sync["source"] == node else "SyncTarget"
        return "Connected"

    def view(self, node: str) -> Dict[str, object]:
        """What the node sees of this resource: /proc/drbd fields and drbdadm answers."""
        side, peer = self.side(node), self.side(self.peer_of(node))
        view: Dict[str, object] = {
            "cstate": self.cstate(node),
            "role": side["role"],
            "peer_role": peer["role"] if self.connected else "Unknown",
            "disk": side["disk"],
            "peer_disk": peer["disk"] if self.connected else "DUnknown",
            "net": side["net"],
            "al_suspended": side["al_suspended"],
            "ns": side["ns"],
            "nr": side["nr"],
            "dw": side["dw"],
            "dr": side["dr"],
            "al": side["al"],
            "oos": side["oos"],
        }
        sync = self.state["sync"]
        if self.connected and sync:
            left, total = self.sync_left(sync), int(sync["total_kb"])
            duration = max(0.001, sync["end"] - sync["start"])
            elapsed = max(1, int(self.world.now - sync["start"]))
            rate = int(total / duration)
            average = (total - left) // elapsed
            view["oos"] = left
            view["progress"] = render_progress(
                left,
                total,
                int(left / rate) if rate else 0,
                average,
                average,
                rate if sync["target"] == node else None,
            )
        return view

    def sync_left(self, sync: dict) -> int:
        total = int(sync["total_kb"])
        span = sync["end"] - sync["start"]
        done = 1.0 if span <= 0 else min(1.0, max(0.0, (self.world.now - sync["start"]) / span))
        return total - int(total * done) // 4 * 4

    # ---- time-driven events -----------------------------------------------------------------

    def can_connect(self) -> bool:
        return all(
            self.side(n)["up"] and self.side(n)["net"] and self.world.link_up(n) for n in self.nodes
        )

    def settle(self) -> None:
        sync = self.state["sync"]
        if self.connected and sync and self.world.now >= sync["end"]:
            self.finish_sync()
        if self.connected and not self.can_connect():
            self.lose_connection()
        elif not self.connected and self.can_connect():
            self.handshake()

    def lose_connection(self, reason: str = "PingAck did not arrive in time.") -> None:
        """The link or the peer went away (a clean peer disconnect/down logs its own lines)."""
        self.state["connected"] = False
        sync, self.state["sync"] = self.state["sync"], None
        self.changed()
        holder = self.primary_side()
        if not sync and holder:  # everything it acknowledged was on the peer too
            self.mirror(holder)
        for node in self.nodes:
            side, peer = self.side(node), self.side(self.peer_of(node))
            if sync:
                side["oos"] = self.sync_left(sync)  # the rest stays marked in the bitmap
            if not (side["up"] and side["net"]):
                continue
            was = (
                "SyncSource"
                if sync and sync["source"] == node
                else ("SyncTarget" if sync else "Connected")
            )
            if reason:
                self.conn_log(node, reason)
            self.dev(
                node,
                f"peer( {peer['role']} -> Unknown ) conn( {was} -> NetworkFailure ) "
                f"pdsk( {peer['disk']} -> DUnknown ) ",
            )
            self.conn_log(node, "Connection closed")
            self.conn_log(node, "conn( NetworkFailure -> Unconnected ) ")
            self.conn_log(node, "conn( Unconnected -> WFConnection ) ")
            self.lost_peer_disk(node)

    def lost_peer_disk(self, node: str) -> None:
        """after_state_ch(): a Primary that loses its peer's disk starts a new data generation."""
        side = self.side(node)
        if side["up"] and side["role"] == "Primary" and side["disk"] == "UpToDate":
            if side["uuids"][1] == 0:
                self.new_current_uuid(node)

    def uuid_compare(self, node: str) -> Tuple[int, int]:
        """drbd_uuid_compare() as seen from ``node``: (result, rule)."""
        mine = [u & ~1 for u in self.side(node)["uuids"]]
        theirs = [u & ~1 for u in self.side(self.peer_of(node))["uuids"]]
        if mine[0] == JUST_CREATED and theirs[0] == JUST_CREATED:
            return 0, 10
        if mine[0] in (JUST_CREATED, 0) and theirs[0] != JUST_CREATED:
            return -2, 20
        if mine[0] != JUST_CREATED and theirs[0] in (JUST_CREATED, 0):
            return 2, 30
        if mine[0] == theirs[0]:
            return 0, 40
        if mine[0] == theirs[1]:
            return -1, 50
        if mine[0] in theirs[2:]:
            return -2, 60
        if mine[1] == theirs[0]:
            return 1, 70
        if theirs[0] in mine[2:]:
            return 2, 80
        if mine[1] == theirs[1] and mine[1] != 0:
            return 100, 90
        if any(u and u in theirs[2:] for u in mine[2:]):
            return -100, 100
        return -1000, 100

    def handshake(self) -> None:
        """Both sides want to connect and the link is up: drbd_sync_handshake() on each side."""
        a, b = self.nodes
        sa, sb = self.side(a), self.side(b)
        self.changed()
        for node in self.nodes:
            side = self.side(node)
            side["ns"] = side["nr"] = 0  # the network counters are per connection
            self.conn_log(node, "Handshake successful: Agreed network protocol version 101")
            self.conn_log(
                node,
                "Feature flags enabled on protocol level: 0xf TRIM THIN_RESYNC WRITE_SAME "
                "WRITE_ZEROES.",
            )
            self.conn_log(node, "conn( WFConnection -> WFReportParams ) ")
            self.conn_log(node, f"Starting ack_recv thread (from drbd_r_{self.name} [{_pid()}])")
            self.dev(node, "drbd_sync_handshake:")
            self.dev(node, "self " + self.uuid_line(node, as_peer=False))
            self.dev(node, "peer " + self.uuid_line(self.peer_of(node), as_peer=True))
            hg_node, rule = self.uuid_compare(node)
            self.dev(node, f"uuid_compare()={hg_node} by rule {rule}")
        hg, _ = self.uuid_compare(a)  # > 0: a is the better side
        if hg == -1000:
            for node in self.nodes:
                self.dev(node, "Unrelated data, aborting!")
            self.drop_after_handshake(a, first=True)
            self.drop_after_handshake(b, first=True)
            return
        inc_a, inc_b = sa["disk"] == "Inconsistent", sb["disk"] == "Inconsistent"
        if inc_a != inc_b:  # an Inconsistent disk against a better one: the disk states decide
            full = hg == -100 or abs(hg) == 2
            hg = (1 if inc_b else -1) * (2 if full else 1)
            for node in self.nodes:
                role = "source" if (node == a) == (hg > 0) else "target"
                self.dev(node, f"Becoming sync {role} due to disk states.")
        if abs(hg) == 100:
            helper = f"/sbin/drbdadm initial-split-brain minor-{self.minor}"
            for node in self.nodes:
                self.dev(node, "helper command: " + helper)
                self.dev(node, "helper command: " + helper + " exit code 0 (0x0)")
            if bool(sa["discard"]) == bool(sb["discard"]):
                self.split_brain()
                return
            hg = -1 if sa["discard"] else 1
            for node in self.nodes:
                whose = "peer node" if (node == a) == (hg < 0) else "this node"
                self.dev(node, "Split-Brain detected, manually solved. Sync from " + whose)
        sa["discard"] = sb["discard"] = False
        sa["al_suspended"] = sb["al_suspended"] = False
        self.state["connected"] = True
        if hg == 0:
            for node in self.nodes:
                peer = self.side(self.peer_of(node))
                self.dev(
                    node,
                    f"peer( Unknown -> {peer['role']} ) conn( WFReportParams -> Connected ) "
                    f"pdsk( DUnknown -> {peer['disk']} ) ",
                )
            return
        source, target = (a, b) if hg > 0 else (b, a)
        if abs(hg) == 2:
            total = self.size_kb
        elif inc_a or inc_b:  # an interrupted resync: both bitmaps hold the same blocks
            total = max(int(sa["oos"]), int(sb["oos"]))
        else:  # both bitmaps are merged
            total = int(sa["oos"]) + int(sb["oos"])
        self.start_sync(source, target, min(self.size_kb, max(4, total // 4 * 4)), "handshake")

    def uuid_line(self, node: str, as_peer: bool) -> str:
        """drbd_uuid_dump(): own flags print as 0; the peer's carry its uuid flags."""
        side = self.side(node)
        flags = 0
        if as_peer:
            flags = (1 if side["discard"] else 0) | (4 if side["disk"] == "Inconsistent" else 0)
        return f"{self.uuid_text(node)} bits:{int(side['oos']) // 4} flags:{flags}"

    def split_brain(self) -> None:
        """Both sides changed the data apart and nobody said whose changes to drop."""
        first, second = self.nodes
        helper = f"/sbin/drbdadm split-brain minor-{self.minor}"
        for node in self.nodes:
            self.dev(node, SB_UNRESOLVED)
            self.dev(node, "helper command: " + helper)
        # The side that drops first tears down; the other sees its peer go (the capture's order).
        self.dev(first, "helper command: " + helper + " exit code 0 (0x0)")
        self.drop_after_handshake(first, first=True)
        self.conn_log(second, "meta connection shut down by peer.")
        self.conn_log(second, "conn( WFReportParams -> NetworkFailure ) ")
        self.conn_log(second, "ack_receiver terminated")
        self.conn_log(second, f"Terminating drbd_a_{self.name}")
        self.dev(second, "helper command: " + helper + " exit code 0 (0x0)")
        self.drop_after_handshake(second, first=False)

    def drop_after_handshake(self, node: str, first: bool) -> None:
        side = self.side(node)
        side["net"] = False
        side["discard"] = False
        self.state["connected"] = False
        source = "WFReportParams" if first else "NetworkFailure"
        self.conn_log(node, f"conn( {source} -> Disconnecting ) ")
        self.conn_log(node, "error receiving ReportState, e: -5 l: 0!")
        if first:
            self.conn_log(node, "ack_receiver terminated")
            self.conn_log(node, f"Terminating drbd_a_{self.name}")
        self.conn_log(node, "Connection closed")
        self.conn_log(node, "conn( Disconnecting -> StandAlone ) ")
        self.conn_log(node, "receiver terminated")
        self.conn_log(node, f"Terminating drbd_r_{self.name}")
        self.changed()

    def start_sync(self, source: str, target: str, total_kb: int, via: str) -> None:
        """Bitmap exchange and sync UUIDs, then the resync runs for ``resync_seconds``.

        ``via`` is "handshake" (after a connect) or "connected" (``primary --force`` while
        Connected to an Inconsistent peer)."""
        src, tgt = self.side(source), self.side(target)
        bits = total_kb // 4
        before = "WFReportParams" if via == "handshake" else "Connected"
        old_disk = tgt["disk"]
        src_line = f"conn( {before} -> WFBitMapS ) pdsk( {old_disk} -> Consistent ) "
        tgt_line = f"conn( {before} -> WFBitMapT ) "
        if old_disk == "UpToDate":
            tgt_line += "disk( UpToDate -> Outdated ) "
        if via == "handshake":
            src_line = f"peer( Unknown -> {tgt['role']} ) " + src_line.replace(
                f"pdsk( {old_disk} ", "pdsk( DUnknown "
            )
            tgt_line = f"peer( Unknown -> {src['role']} ) " + tgt_line
            tgt_line += "pdsk( DUnknown -> UpToDate ) "
        self.dev(source, src_line)
        self.dev(target, tgt_line)
        for node, order in ((source, ("send", "receive")), (target, ("receive", "send"))):
            for verb in order:
                rle = 25 if (verb == "send") == (node == source) else 28
                ratio = "98.8" if rle == 25 else "98.7"
                self.dev(
                    node,
                    f"{verb} bitmap stats [Bytes(packets)]: plain 0(0), RLE {rle}(1), total "
                    f"{rle}; compression: {ratio}%",
                )
        # The target later takes over the source's UUIDs as they were sent in the handshake.
        handshake_uuids = list(src["uuids"])
        # drbd_gen_and_send_sync_uuid() on the source, receive_sync_uuid() on the target.
        bitmap = src["uuids"][1]
        if bitmap and bitmap != JUST_CREATED:
            new_bitmap = (bitmap + NEW_BM_OFFSET) & (2**64 - 1)
        else:
            new_bitmap = _random64()
        if bitmap:
            src["uuids"][3] = src["uuids"][2]
            src["uuids"][2] = bitmap
        src["uuids"][1] = new_bitmap
        self.set_current(target, new_bitmap)
        tgt["uuids"][1] = 0
        self.dev(target, "conn( WFBitMapT -> WFSyncUUID ) ")
        self.dev(target, "updated sync uuid " + self.uuid_text(target))
        for node, kind in ((target, "target"), (source, "source")):
            helper = f"/sbin/drbdadm before-resync-{kind} minor-{self.minor}"
            self.dev(node, "helper command: " + helper)
            self.dev(node, "helper command: " + helper + " exit code 0 (0x0)")
        disk_change = "" if old_disk == "Inconsistent" else "disk( Outdated -> Inconsistent ) "
        self.dev(target, "conn( WFSyncUUID -> SyncTarget ) " + disk_change)
        self.dev(source, "conn( WFBitMapS -> SyncSource ) pdsk( Consistent -> Inconsistent ) ")
        for node, kind in ((target, "SyncTarget"), (source, "SyncSource")):
            self.dev(node, f"Began resync as {kind} (will sync {total_kb} KB [{bits} bits set]).")
        self.dev(source, "updated sync UUID " + self.uuid_text(source))
        tgt["disk"] = "Inconsistent"
        src["oos"] = tgt["oos"] = total_kb
        seconds = float(self.world.config["resync_seconds"])
        self.state["sync"] = {
            "source": source,
            "target": target,
            "total_kb": total_kb,
            "start": self.world.now,
            "end": self.world.now + seconds,
            "handshake_uuids": handshake_uuids,
        }
        self.changed()

    def finish_sync(self) -> None:
        """drbd_resync_finished(): both UpToDate, the target takes the source's generation."""
        sync = self.state["sync"]
        source, target = sync["source"], sync["target"]
        src, tgt = self.side(source), self.side(target)
        at = sync["end"]
        total = int(sync["total_kb"])
        secs = max(1, int(round(sync["end"] - sync["start"])))
        for node in (source, target):
            self.dev(
                node, f"Resync done (total {secs} sec; paused 0 sec; {total // secs} K/sec)", at
            )
        peer_uuids = sync["handshake_uuids"]
        own_current = tgt["uuids"][0]
        tgt["uuids"][1:4] = peer_uuids[1:4]
        if tgt["uuids"][1]:  # drbd_uuid_set(UI_BITMAP, ...) pushes a set bitmap UUID to history
            tgt["uuids"][3] = tgt["uuids"][2]
            tgt["uuids"][2] = tgt["uuids"][1]
        tgt["uuids"][1] = own_current
        self.set_current(target, peer_uuids[0])
        for node in (source, target):  # drbd_uuid_set_bm(0): the bitmap UUID goes to history
            side = self.side(node)
            if side["uuids"][1]:
                side["uuids"][3] = side["uuids"][2]
                side["uuids"][2] = side["uuids"][1]
                side["uuids"][1] = 0
        self.dev(source, "updated UUIDs " + self.uuid_text(source), at)
        self.dev(target, "updated UUIDs " + self.uuid_text(target), at)
        self.dev(target, "conn( SyncTarget -> Connected ) disk( Inconsistent -> UpToDate ) ", at)
        self.dev(source, "conn( SyncSource -> Connected ) pdsk( Inconsistent -> UpToDate ) ", at)
        helper = f"/sbin/drbdadm after-resync-target minor-{self.minor}"
        self.dev(target, "helper command: " + helper, at)
        self.dev(target, "helper command: " + helper + " exit code 0 (0x0)", at)
        tgt["disk"] = "UpToDate"
        self.mirror(source)
        src["ns"] += total
        src["dr"] += total
        tgt["nr"] += total
        tgt["dw"] += total
        src["oos"] = tgt["oos"] = 0
        self.state["sync"] = None
        self.changed()

    # ---- commands -----------------------------------------------------------------------------

    def require_up(self, node: str) -> None:
        if not self.side(node)["up"]:
            raise failure(str(self.minor), ERR_MINOR_INVALID)

    def is_held_open(self, node: str) -> bool:
        if os.path.exists(self.world.cluster.open_flag_path(node, self.name)):
            return True
        netns = self.world.config["nodes"][node].get("netns")
        disk = self.disk_of(node)
        return bool(netns and disk and open_holders(str(netns), str(disk)))

    def up(self, node: str) -> str:
        """Attach and connect; returns what drbdadm prints on stderr when it succeeds."""
        side = self.side(node)
        if side["up"]:
            # drbdadm runs `drbdmeta apply-al` first, which refuses a configured device.
            disk = self.disk_of(node) or "/dev/vda"  # the VM lab's backing disk when none is set
            raise MetaRefusal(
                f"Device '{self.minor}' is configured!",
                f"drbdmeta {self.minor} v08 {disk} internal apply-al",
                20,
            )
        notice = APPLY_AL_NOTHING + "\n" if side.get("primary_ind") else ""
        side["primary_ind"] = False
        fresh = side["uuids"][0] == JUST_CREATED and side["disk"] == "Inconsistent"
        side.update(up=True, role="Secondary", net=True, discard=False)
        # No fencing policy: a consistent disk attaches UpToDate (drbd_adm_attach()).
        if side["disk"] not in ("Inconsistent", "Outdated"):
            side["disk"] = "UpToDate"
        side["al_suspended"] = fresh and int(side["oos"]) >= self.size_kb
        self.dev(node, "disk( Diskless -> Attaching ) ")
        self.dev(node, f"disk( Attaching -> {side['disk']} ) ")
        self.conn_log(node, "conn( StandAlone -> Unconnected ) ")
        self.conn_log(node, f"Starting receiver thread (from drbd_w_{self.name} [{_pid()}])")
        self.conn_log(node, "receiver (re)started")
        self.conn_log(node, "conn( Unconnected -> WFConnection ) ")
        self.changed()
        self.settle()
        return notice

    def down(self, node: str) -> None:
        side = self.side(node)
        if not side["up"]:
            return
        if side["role"] == "Primary":
            if self.is_held_open(node):
                raise state_refusal(str(self.minor), SS_DEVICE_IN_USE)
            self.set_role(node, "Secondary")
        if side["net"]:
            self.disconnect(node)
        side.update(up=False, al_suspended=False)
        self.dev(node, f"disk( {side['disk']} -> Detaching ) ")
        self.dev(node, "disk( Detaching -> Diskless ) ")
        self.changed()

    def crash(self, node: str) -> None:
        side = self.side(node)
        if not side["up"]:
            return
        if self.connected:
            self.state["connected"] = False
            sync, self.state["sync"] = self.state["sync"], None
            peer = self.peer_of(node)
            if not sync and side["role"] == "Primary":
                self.mirror(node)
            if sync:
                self.side(node)["oos"] = self.side(peer)["oos"] = self.sync_left(sync)
            self.conn_log(peer, "PingAck did not arrive in time.")
            self.conn_log(peer, "conn( Connected -> NetworkFailure ) ")
            self.conn_log(peer, "conn( NetworkFailure -> Unconnected ) ")
            self.conn_log(peer, "conn( Unconnected -> WFConnection ) ")
            self.lost_peer_disk(peer)
        side.update(
            up=False,
            role="Secondary",
            al_suspended=False,
            discard=False,
            net=True,
            primary_ind=side["role"] == "Primary",
        )
        self.changed()

    def set_role(self, node: str, role: str) -> None:
        side = self.side(node)
        old = side["role"]
        side["role"] = role
        self.set_current(node, side["uuids"][0])
        self.dev(node, f"role( {old} -> {role} ) ")
        if role == "Secondary" and int(side["oos"]):  # the demote writes the bitmap out
            kb = int(side["oos"])
            self.dev(node, f"{ppsize(kb)} ({kb // 4} bits) marked out-of-sync by on disk bit-map.")
        self.changed()

    def primary(self, node: str, force: bool = False) -> None:
        self.require_up(node)
        side, peer = self.side(node), self.side(self.peer_of(node))
        if side["role"] == "Primary":
            return
        obj = str(self.minor)
        if self.connected and peer["role"] == "Primary":
            raise state_refusal(obj, SS_TWO_PRIMARIES)
        peer_good = self.connected and peer["disk"] == "UpToDate"
        if side["disk"] != "UpToDate" and not peer_good:
            if not force or side["disk"] == "Diskless":
                raise state_refusal(obj, SS_NO_UP_TO_DATE_DISK)
            # --force: this disk is declared good; a connected Inconsistent peer syncs from it.
            self.dev(node, f"disk( {side['disk']} -> UpToDate ) ")
            side["disk"] = "UpToDate"
            side["al_suspended"] = False
            self.new_current_uuid(node, writes_apart=False)
            self.set_role(node, "Primary")
            if self.connected and peer["disk"] != "UpToDate":
                self.start_sync(node, self.peer_of(node), self.size_kb, "connected")
            return
        # drbd_set_role(): promoted without a peer, this side starts a new data generation (the
        # UUID is made while still Secondary; the Primary bit is set after).
        if not self.connected and side["uuids"][1] == 0:
            self.new_current_uuid(node)
        self.set_role(node, "Primary")

    def secondary(self, node: str) -> None:
        self.require_up(node)
        if self.side(node)["role"] == "Secondary":
            return
        if self.is_held_open(node):
            raise state_refusal(str(self.minor), SS_DEVICE_IN_USE)
        if self.connected and not self.state["sync"]:
            self.mirror(node)
        self.set_role(node, "Secondary")

    def outdate(self, node: str) -> None:
        self.require_up(node)
        side = self.side(node)
        if self.connected:
            raise state_refusal(str(self.minor), SS_CONNECTED_OUTDATES)
        if side["role"] == "Primary":
            raise state_refusal(str(self.minor), SS_NO_UP_TO_DATE_DISK)
        if disk_rank(side["disk"]) > disk_rank("Outdated"):
            self.dev(node, f"disk( {side['disk']} -> Outdated ) ")
            side["disk"] = "Outdated"
            self.changed()

    def connect(self, node: str, discard: bool = False) -> None:
        side = self.side(node)
        if not side["up"]:
            raise failure(self.name, ERR_RES_NOT_KNOWN)
        if side["net"]:
            raise failure(self.name, ERR_NET_CONFIGURED)
        if discard and side["role"] == "Primary":
            raise failure(self.name, ERR_DISCARD_IMPOSSIBLE)
        side["net"] = True
        side["discard"] = bool(discard)
        self.conn_log(node, "conn( StandAlone -> Unconnected ) ")
        self.conn_log(node, f"Starting receiver thread (from drbd_w_{self.name} [{_pid()}])")
        self.conn_log(node, "receiver (re)started")
        self.conn_log(node, "conn( Unconnected -> WFConnection ) ")
        self.changed()
        self.settle()

    def disconnect(self, node: str) -> None:
        side = self.side(node)
        if not side["up"]:
            raise failure(self.name, ERR_RES_NOT_KNOWN)
        if not side["net"]:
            raise failure("??", ERR_CONN_UNKNOWN)
        was_connected = self.connected
        sync = self.state["sync"]
        side["net"] = False
        self.changed()
        if was_connected:
            peer = self.peer_of(node)
            self.state["connected"] = False
            self.state["sync"] = None
            holder = self.primary_side()
            if not sync and holder:
                self.mirror(holder)
            if sync:
                side["oos"] = self.side(peer)["oos"] = self.sync_left(sync)
            p, me = self.side(peer), side
            self.dev(
                node,
                f"peer( {p['role']} -> Unknown ) conn( {self.cstate_was(node, sync)} -> "
                f"Disconnecting ) pdsk( {p['disk']} -> DUnknown ) ",
            )
            self.conn_log(node, "Connection closed")
            self.conn_log(node, "conn( Disconnecting -> StandAlone ) ")
            self.dev(
                peer,
                f"peer( {me['role']} -> Unknown ) conn( {self.cstate_was(peer, sync)} -> "
                f"TearDown ) pdsk( {me['disk']} -> DUnknown ) ",
            )
            self.conn_log(peer, "Connection closed")
            self.conn_log(peer, "conn( TearDown -> Unconnected ) ")
            self.conn_log(peer, "conn( Unconnected -> WFConnection ) ")
            self.lost_peer_disk(node)
            self.lost_peer_disk(peer)
        else:
            self.conn_log(node, "conn( WFConnection -> Disconnecting ) ")
            self.conn_log(node, "conn( Disconnecting -> StandAlone ) ")

    def cstate_was(self, node: str, sync: Optional[dict]) -> str:
        if not sync:
            return "Connected"
        return "SyncSource" if sync["source"] == node else "SyncTarget"


# --------------------------------------------------------------------------------------------
# Helpers: files, processes holding the disk open
# --------------------------------------------------------------------------------------------


def _pid() -> int:
    # The kernel thread ids in the log mean nothing to a reader; keep them plausible.
    return 100 + int.from_bytes(os.urandom(2), "little") % 301


def _random64() -> int:
    return int.from_bytes(os.urandom(8), "little")


def _write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json(path: str, data: object) -> None:
    _write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def netns_inode(netns: str) -> Optional[int]:
    try:
        return os.stat(os.path.join("/run/netns", netns)).st_ino
    except OSError:
        return None


def open_holders(netns: str, path: str) -> List[int]:
    """PIDs in network namespace ``netns`` with ``path`` open (what "held open" means here)."""
    inode = netns_inode(netns)
    if inode is None:
        return []
    target = os.path.realpath(path)
    holders = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/net") != f"net:[{inode}]":
                continue
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") == target:
                    holders.append(int(entry))
                    break
            except OSError:
                continue
    return holders


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------

STATE_COMMANDS = ("role", "cstate", "dstate")
CHANGE_COMMANDS = (
    "up",
    "down",
    "primary",
    "secondary",
    "connect",
    "disconnect",
    "outdate",
    "adjust",
)


def setup_command(command: str, res: Resource, node: str, options: Sequence[str]) -> str:
    """The drbdsetup-84 command line drbdadm names when it fails (as in the captures)."""
    minor = str(res.minor)
    if command in ("primary", "secondary", "outdate", "role", "cstate"):
        return " ".join(["drbdsetup-84", command, minor] + [o for o in options if o == "--force"])
    if command in ("connect", "disconnect"):
        cfg = res.world.config
        me = cfg["nodes"][node].get("addr", "127.0.0.1")
        peer = cfg["nodes"][res.peer_of(node)].get("addr", "127.0.0.1")
        port = cfg.get("port", 7789) + res.minor
        if command == "disconnect":
            return f"drbdsetup-84 disconnect ipv4:{me}:{port} ipv4:{peer}:{port}"
        extra = [o for o in options if o == "--discard-my-data"]
        return " ".join(
            ["drbdsetup-84", "connect", res.name, f"ipv4:{me}:{port}", f"ipv4:{peer}:{port}"]
            + extra
            + ["--protocol=C"]
        )
    return f"drbdsetup-84 {command} {res.name}"


def parse_args(argv: Sequence[str]) -> Tuple[Dict[str, str], List[str], List[str]]:
    """Split drbdadm's argv into simulator settings, options and words (command, resources)."""
    sim: Dict[str, str] = {}
    options: List[str] = []
    words: List[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("--sim-node", "--sim-dir"):
            sim[arg[6:]] = next(it, "")
        elif arg in ("-c", "--config-file", "-t", "--config-to-test"):
            next(it, None)  # the simulator has no configuration file of its own to read
        elif arg == "--":
            continue
        elif arg.startswith("-"):
            options.append(arg)
        else:
            words.append(arg)
    return sim, options, words


def main(
    argv: Optional[Sequence[str]] = None,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
    env: Optional[Dict[str, str]] = None,
) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    environ = os.environ if env is None else env
    sim, options, words = parse_args(argv)
    node = sim.get("node") or environ.get(ENV_NODE, "")
    directory = sim.get("dir") or environ.get(ENV_DIR, "")
    if not directory:
        err.write(f"drbdadm (lab simulator): set ${ENV_DIR} or --sim-dir\n")
        return 20
    cluster = Cluster(directory)
    try:
        if "--sim-kernel" in options:
            return kernel_loop(cluster, options)
        if not node or node not in cluster.nodes:
            err.write(f"drbdadm (lab simulator): unknown node {node!r}; set ${ENV_NODE}\n")
            return 20
        if "--sim-dmesg" in options:
            out.write(cluster.kernel_log(node))
            return 0
        if "--sim-drbdsetup" in options:
            return drbdsetup_command(cluster, node, options, words, out, err)
        return run_command(cluster, node, options, words, out, err)
    except SimError as exc:
        err.write(f"drbdadm (lab simulator): {exc}\n")
        return 20


def run_command(
    cluster: Cluster, node: str, options: List[str], words: List[str], out: TextIO, err: TextIO
) -> int:
    if not words:
        err.write("USAGE: drbdadm COMMAND [OPTION...] {all|RESOURCE...}\n")
        return 1
    command, names = words[0], words[1:]
    known = list(cluster.config["resources"])
    if command == "sh-resources":
        out.write(" ".join(known) + "\n")
        return 0
    if command not in STATE_COMMANDS + CHANGE_COMMANDS + ("sh-minor",):
        err.write(f"drbdadm (lab simulator): command {command!r} is not simulated\n")
        return 1
    if not names:
        err.write(f"USAGE: drbdadm {command} [OPTION...] {{all|RESOURCE...}}\n")
        return 1
    if names == ["all"]:
        names = known
    for name in names:
        if name not in known:
            err.write(f"'{name}' not defined in your config (for this host).\n")
            return 10
    if command == "sh-minor":
        for name in names:
            out.write(f"{cluster.config['resources'][name]['minor']}\n")
        return 0
    with cluster.locked() as world:
        world.refresh()
        for name in names:
            res = world.resources[name]
            try:
                if command in STATE_COMMANDS:
                    out.write(answer(res, node, command) + "\n")
                    continue
                err.write(apply(res, node, command, options))
            except MetaRefusal as refusal:
                err.write(refusal.message + "\n")
                err.write(
                    f"Command '{refusal.command}' terminated with exit code {refusal.meta_rc}\n"
                )
                return refusal.rc
            except Refusal as refusal:
                err.write(refusal.message + "\n")
                err.write(
                    f"Command '{setup_command(command, res, node, options)}' terminated with "
                    f"exit code {refusal.rc}\n"
                )
                return refusal.rc
            finally:
                world.refresh()
    return 0


def answer(res: Resource, node: str, command: str) -> str:
    side = res.side(node)
    if not side["up"]:
        # Measured on 8.4.11 (tests/fixtures/drbd84sim/vm-down-answers-and-reup.jsonl): role and
        # cstate ask the kernel, which has no such minor; dstate reads the meta data instead.
        if command == "dstate":
            return MD_DISK_WORD.get(str(side["disk"]), "Consistent")
        raise failure(str(res.minor), ERR_MINOR_INVALID)
    view = res.view(node)
    if command == "role":
        return f"{view['role']}/{view['peer_role']}"
    if command == "cstate":
        return str(view["cstate"])
    return f"{view['disk']}/{view['peer_disk']}"


def apply(res: Resource, node: str, command: str, options: Sequence[str]) -> str:
    """Runs one change; returns what drbdadm prints on stderr although it succeeded."""
    if command == "up":
        return res.up(node)
    elif command == "down":
        res.down(node)
    elif command == "primary":
        res.primary(node, force="--force" in options)
    elif command == "secondary":
        res.secondary(node)
    elif command == "connect":
        res.connect(node, discard="--discard-my-data" in options)
    elif command == "disconnect":
        res.disconnect(node)
    elif command == "outdate":
        res.outdate(node)
    elif command == "adjust":  # brings the configuration back: up, and connected
        if not res.side(node)["up"]:
            return res.up(node)
        elif not res.side(node)["net"]:
            res.connect(node)
    return ""


def proc_states(text: str) -> Dict[int, str]:
    """``{minor: "cs:.. ro:../.. ds:../.."}`` from a /proc/drbd text."""
    states = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 4 and words[0].endswith(":") and words[0][:-1].isdigit():
            states[int(words[0][:-1])] = " ".join(words[1:4])
    return states


def drbdsetup_command(
    cluster: Cluster, node: str, options: Sequence[str], words: List[str], out: TextIO, err: TextIO
) -> int:
    """``drbdsetup events all`` (8.4): one ``ST`` line per state change of this node's minors.

    The kernel broadcasts a change as it happens; the simulator notices it by looking at the
    node's /proc/drbd file (rewritten by every command and tick) every ``EVENTS_POLL`` seconds,
    which adds at most that much to when a listener hears of it. Only ``ST`` lines are produced
    (the ``R``/``ST-prev``/``ST-new`` lines real DRBD adds carry nothing a listener needs).
    """
    if words[:1] != ["events"]:
        err.write(f"drbdsetup (lab simulator): only 'events' is simulated, not {words!r}\n")
        return 20
    names = {int(spec["minor"]): name for name, spec in cluster.config["resources"].items()}
    limit = 24 * 3600.0
    for opt in options:
        if opt.startswith("--max-seconds="):
            limit = float(opt.split("=", 1)[1])
    path = cluster.proc_drbd_path(node)
    last: Dict[int, str] = {}
    seen_stat = None
    seq = 0
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            try:
                st = os.stat(path)
                stat = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                if not os.path.isfile(os.path.join(cluster.dir, "cluster.json")):
                    return 0  # the lab is gone
                stat = None
            if stat != seen_stat:
                seen_stat = stat
                try:
                    with open(path) as f:
                        now = proc_states(f.read())
                except FileNotFoundError:
                    now = {}
                for minor in sorted(set(now) | set(last)):
                    state = now.get(minor, GONE_STATE)
                    if last.get(minor) != state and minor in names:
                        seq += 1
                        out.write(f"{seq} ST {minor},{names[minor]}[0] {{ {state} r--- }}\n")
                last = now
                out.flush()
            time.sleep(EVENTS_POLL)
    except BrokenPipeError:
        return 0
    return 0


EVENTS_POLL = 0.003
GONE_STATE = "cs:StandAlone ro:Secondary/Unknown ds:Diskless/DUnknown"  # after down (captured)


def kernel_loop(cluster: Cluster, options: Sequence[str]) -> int:
    """The ticker: let time pass for the files nobody asks about. Bounded by --max-seconds."""
    interval, limit = 0.1, 24 * 3600.0
    for opt in options:
        if opt.startswith("--interval="):
            interval = float(opt.split("=", 1)[1])
        elif opt.startswith("--max-seconds="):
            limit = float(opt.split("=", 1)[1])
    import signal

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    deadline = time.monotonic() + limit
    while not stop and time.monotonic() < deadline:
        if not os.path.isfile(os.path.join(cluster.dir, "cluster.json")):
            break  # the lab is gone
        cluster.tick()
        time.sleep(interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
