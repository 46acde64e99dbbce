"""The demo a newcomer runs first: two iscsi-ha controllers keep one iSCSI LUN on the pool master.

    python -m lab.demo            the scenario below, then the lab stays up until Ctrl-C
    python -m lab.demo --once     the scenario end to end; exit 0 only if every check passed
    python -m lab.demo --once --rounds 5   repeat failover + planned switch, print the medians

What it does, on this machine only (``lab/netlab.py``: network namespaces with unique names, a real
tgtd per node, real ``ip``/``arping``, a DRBD 8.4 simulator, the XenAPI fake, a real iSCSI client):

1. builds the lab and starts both controllers (``iscsi-ha run``; the lab configures ``interval: 1``
   so that things happen in seconds; the product's default is 5) and a real Prometheus;
2. waits until node1, the pool master, holds the storage: DRBD Primary, target serving, VIP bound;
3. shows both nodes' ``iscsi-cfg status``; writes a block through the VIP from the client;
4. moves the pool master to node2 the way HA-Lizard does (both ``pool.conf`` files and the XenAPI
   fake) and shows the storage follow, sampled on both nodes throughout, with the outage the client
   measured (``iscsi-inq`` under ``timeout 0.25`` every ~30 ms); reads the block back;
5. a planned switch back to node1 through manual mode (docs/design.md §6): manual-mode-enable on
   both, become-secondary on the holder, become-primary on node1, with its client-side outage; then
   ``manual-mode-disable`` on node1 is *refused* (the teaching moment: its native role follows the
   pool role, and node2 is still the pool master); the pool master is moved back to node1 (as
   ``xe pool-designate-new-master`` would), after which manual-mode-disable succeeds on both;
6. asks Prometheus ``sum(iscsi_ha_drbd_role{role="Primary"})`` (must be 1) and tells where it is.

Prometheus runs inside the lab (the ``sw`` namespace, where both exporters are reachable) and is
forwarded to this machine's loopback: see ``lab/prometheus.py`` for why.

The first half of this file is the measurement kit the integration tests share
(``tests/test_integration.py``): reading both nodes' state from the outside, a sampler that
proves no moment with the VIP / the target / DRBD Primary on both nodes, and the client probe that
measures an outage as the client sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import prometheus as lprom
from .netlab import VIP, Lab, LabError, Node

CLI = Path(sys.executable).parent / "iscsi-cfg"
RESOURCE = "iscsi1"
PROBE_TIMEOUT = 0.25  # per client probe; a SYN lost while the VIP moves is retried only after 1 s
PROBE_PERIOD = 0.03


class WaitTimeout(AssertionError):
    """A bounded wait ran out (an AssertionError, so pytest shows the message as the failure)."""


# --------------------------------------------------------------------------------------------
# Reading both nodes from the outside (not through the controllers)
# --------------------------------------------------------------------------------------------


def _tgtadm() -> str:
    return shutil.which("tgtadm") or "/usr/sbin/tgtadm"


@dataclass(frozen=True)
class NodeState:
    """What one node holds, seen with the system's own tools."""

    vip: int  # how many times the VIP is on the node's interface (0 or 1; 2 would be a bug)
    targets: Tuple[Tuple[int, Tuple[int, ...]], ...]  # (tid, LUNs other than 0) per target
    drbd: str  # the simulator's role of the resource on this node ("down" when not up)

    @property
    def serving(self) -> bool:
        return any(luns for _, luns in self.targets)

    @property
    def primary(self) -> bool:
        return self.drbd == "Primary"

    @property
    def holds(self) -> bool:
        return self.vip == 1 and self.serving and self.primary

    @property
    def empty(self) -> bool:
        return self.vip == 0 and not self.targets and not self.primary

    def describe(self) -> str:
        tgt = ", ".join(f"tid {t} LUNs {list(luns)}" for t, luns in self.targets) or "no target"
        return f"DRBD {self.drbd}, {tgt}, VIP x{self.vip}"


def vip_count(node: Node) -> int:
    res = subprocess.run(
        ["ip", "-n", node.netns, "-o", "addr", "show", "dev", node.interface],
        capture_output=True,
        text=True,
        timeout=5,
    )
    return sum(1 for line in res.stdout.splitlines() if f"inet {VIP} " in line)


def parse_tgt_targets(text: str) -> Tuple[Tuple[int, Tuple[int, ...]], ...]:
    """``tgtadm --mode target --op show`` -> ((tid, (LUN, ...)), ...) without the LUN 0
    controller. Lines it does not know are skipped."""
    out: List[Tuple[int, List[int]]] = []
    for line in text.splitlines():
        if line.startswith("Target ") and ":" in line:
            try:
                out.append((int(line[len("Target ") : line.index(":")]), []))
            except ValueError:
                continue
        elif line.strip().startswith("LUN: ") and out:
            try:
                lun = int(line.strip()[len("LUN: ") :])
            except ValueError:
                continue
            if lun != 0:
                out[-1][1].append(lun)
    return tuple((tid, tuple(luns)) for tid, luns in out)


def targets_on(node: Node) -> Tuple[Tuple[int, Tuple[int, ...]], ...]:
    # tgtd's control socket is machine-wide (/var/run/tgtd/socket.N): no namespace needed.
    res = subprocess.run(
        [_tgtadm(), "-C", str(node.tgt_port), "--lld", "iscsi", "--mode", "target", "--op", "show"],
        capture_output=True,
        text=True,
        timeout=5,
    )
    return parse_tgt_targets(res.stdout) if res.returncode == 0 else ()


def drbd_roles(lab: Lab, resource: str = RESOURCE) -> Dict[str, str]:
    """The simulator's shared state, read without its lock (it is replaced atomically)."""
    try:
        state = json.loads((Path(lab.drbd.dir) / f"res-{resource}.json").read_text())
    except (OSError, ValueError):
        return {n.name: "?" for n in lab.nodes}
    return {
        name: (side["role"] if side.get("up") else "down")
        for name, side in state.get("sides", {}).items()
    }


def drbd_connected(lab: Lab, resource: str = RESOURCE) -> bool:
    try:
        state = json.loads((Path(lab.drbd.dir) / f"res-{resource}.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(state.get("connected"))


def node_state(lab: Lab, node: Node) -> NodeState:
    return NodeState(vip_count(node), targets_on(node), drbd_roles(lab).get(node.name, "?"))


def layout(lab: Lab) -> Dict[str, NodeState]:
    return {n.name: node_state(lab, n) for n in lab.nodes}


def holds_alone(lab: Lab, holder: Node) -> bool:
    """``holder`` has DRBD Primary, the target serving and the VIP; the other node none."""
    states = layout(lab)
    return all(states[n.name].holds if n is holder else states[n.name].empty for n in lab.nodes)


def tgtd_pids(node: Node) -> List[int]:
    res = subprocess.run(
        ["ip", "netns", "pids", node.netns], capture_output=True, text=True, timeout=5
    )
    pids = []
    for pid in res.stdout.split():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "tgtd":
                pids.append(int(pid))
        except OSError:
            continue
    return pids


# --------------------------------------------------------------------------------------------
# The controllers' own view: control socket, CLI, metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliResult:
    rc: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return (self.out + self.err).strip()


def cfg(node: Node, *args: str, timeout: float = 60.0) -> CliResult:
    """``iscsi-cfg --config <node's config> ARGS`` (the control socket is a file: any namespace)."""
    t0 = time.monotonic()
    res = subprocess.run(
        [str(CLI), "--config", str(node.config_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(res.returncode, res.stdout, res.stderr, time.monotonic() - t0)


def control_status(node: Node, timeout: float = 5.0) -> Optional[Dict[str, Any]]:
    """The controller's status answer over its control socket (None when it does not answer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(node.control_socket))
        sock.sendall(b'{"cmd": "status"}\n')
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        doc = json.loads(buf.split(b"\n", 1)[0])
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def last_message(node: Node) -> str:
    doc = control_status(node) or {}
    last = doc.get("last") or {}
    return f"{last.get('outcome', '?')}: {last.get('message', '(no cycle yet)')}"


def node_metrics(node: Node, timeout: float = 5.0) -> Dict[str, float]:
    """The node's /metrics, fetched from inside its namespace, parsed."""
    text = lprom.http_get(f"http://{node.exporter_listen}/metrics", node.netns, timeout)
    return lprom.parse_metrics(text)


def diagnostics(lab: Lab, log_lines: int = 25) -> str:
    """Both nodes' state and status and the controller logs' tails, for a failure message."""
    out = []
    for node in lab.nodes:
        try:
            state = node_state(lab, node).describe()
        except Exception as exc:  # noqa: BLE001 - diagnostics must not fail
            state = f"(cannot read: {exc})"
        out.append(f"--- {node.name}: {state}")
        try:
            st = cfg(node, "status", timeout=15)
            out.append(st.text)
        except Exception as exc:  # noqa: BLE001
            out.append(f"(iscsi-cfg status failed: {exc})")
        log = node.log_dir / "controller.log"
        try:
            tail = log.read_text(errors="replace").splitlines()[-log_lines:]
        except OSError:
            tail = ["(no controller log)"]
        out.append(f"--- {node.name}: {log} (last {log_lines} lines)")
        out.extend(tail)
    return "\n".join(out)


def wait_for(
    what: str,
    cond: Callable[[], Any],
    timeout: float,
    lab: Optional[Lab] = None,
    period: float = 0.05,
) -> float:
    """Poll ``cond`` until it is truthy; returns the seconds it took. Raises WaitTimeout (with
    both nodes' status and logs when ``lab`` is given) after ``timeout`` seconds."""
    t0 = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            detail = "\n" + diagnostics(lab) if lab is not None else ""
            raise WaitTimeout(f"{what}: not within {timeout:g}s{detail}")
        time.sleep(period)


# --------------------------------------------------------------------------------------------
# Sampling both nodes throughout a move: never the VIP, the target or Primary on both
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    first: NodeState  # node A, read before B
    second: NodeState  # node B
    third: NodeState  # node A again, after B


class Sampler:
    """Samples both nodes in a bounded background loop.

    The two nodes cannot be read at one instant, so each sample reads A, then B, then A again.
    A property counts as "on both" only when A had it before and after B was read and B had it:
    whatever A did in between (a move gives it at most one change per property), A held it at the
    moment B was read. So a reported overlap is real; one shorter than a sample (~20-40 ms) can be
    missed, which is why the tests also check the orders of the steps in the controllers' logs.
    """

    PROPS = ("vip", "target", "primary")

    def __init__(self, lab: Lab, period: float = 0.0, max_seconds: float = 60.0) -> None:
        self.lab = lab
        self.a, self.b = lab.nodes
        self.period = period
        self.max_seconds = max_seconds
        self.samples: List[Sample] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "Sampler":
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> "Sampler":
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                t = time.monotonic()
                first = node_state(self.lab, self.a)
                second = node_state(self.lab, self.b)
                third = node_state(self.lab, self.a)
                self.samples.append(Sample(t, first, second, third))
                if self.period:
                    self._stop.wait(self.period)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc

    @staticmethod
    def _has(state: NodeState, prop: str) -> bool:
        if prop == "vip":
            return state.vip > 0
        if prop == "target":
            return bool(state.targets)
        return state.primary

    def overlaps(self) -> List[Tuple[float, str]]:
        """(time, property) of every sample that saw a property on both nodes."""
        out = []
        for s in self.samples:
            for prop in self.PROPS:
                if all(self._has(x, prop) for x in (s.first, s.second, s.third)):
                    out.append((s.t, prop))
        # Also a node holding a property twice (two VIPs, two targets) is a doubling.
        for s in self.samples:
            for st in (s.first, s.second):
                if st.vip > 1 or len(st.targets) > 1:
                    out.append((s.t, "doubled"))
        return out

    def transitions(self, since: float) -> List[Tuple[float, str, str, bool]]:
        """(seconds after ``since``, node, property, new value) for every change seen."""
        out: List[Tuple[float, str, str, bool]] = []
        prev: Dict[Tuple[str, str], bool] = {}
        for s in self.samples:
            for name, st in ((self.a.name, s.first), (self.b.name, s.second)):
                for prop in self.PROPS:
                    value = self._has(st, prop)
                    key = (name, prop)
                    if key in prev and prev[key] != value:
                        out.append((s.t - since, name, prop, value))
                    prev[key] = value
        return out

    def summary(self) -> str:
        n = len(self.samples)
        if n < 2:
            return f"{n} samples"
        span = self.samples[-1].t - self.samples[0].t
        return f"{n} samples over {span:.1f} s (one every {1000 * span / (n - 1):.0f} ms)"


# --------------------------------------------------------------------------------------------
# The client's view: probe the LUN through the VIP, measure the outage
# --------------------------------------------------------------------------------------------


@dataclass
class ProbeReport:
    probes: int
    failed: int
    outage: float  # seconds with no successful probe, across the failures (0 when none failed)
    typical_gap: float  # median time between two successful probes when nothing happens
    first_failure: Optional[float]  # seconds after the mark
    recovered: Optional[float]  # first success after the last failure, seconds after the mark
    rcs: Dict[int, int] = field(default_factory=dict)  # rc -> count among the failures

    def text(self) -> str:
        if not self.failed:
            return (
                f"no probe failed ({self.probes} probes, one every "
                f"{1000 * self.typical_gap:.0f} ms)"
            )
        codes = ", ".join(f"rc {rc} x{n}" for rc, n in sorted(self.rcs.items()))
        return (
            f"{1000 * self.outage:.0f} ms without a successful probe "
            f"({self.failed} of {self.probes} probes failed: {codes}; a probe every "
            f"{1000 * self.typical_gap:.0f} ms)"
        )


class ClientProbe:
    """``timeout 0.25 iscsi-inq iscsi://VIP/IQN/1`` from the client namespace, in a bounded loop.

    The outage is the longest time between two successful probes that has failed probes in it:
    the client had no working LUN for (at most) that long. Its resolution is a probe's period."""

    def __init__(
        self,
        lab: Lab,
        period: float = PROBE_PERIOD,
        timeout: float = PROBE_TIMEOUT,
        max_seconds: float = 60.0,
    ) -> None:
        self.lab = lab
        self.period = period
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.records: List[Tuple[float, float, int]] = []  # (start, end, rc)
        self.mark_at: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._argv = [
            "ip",
            "netns",
            "exec",
            lab.client,
            "timeout",
            str(timeout),
            "iscsi-inq",
            lab.lun_url(),
        ]

    def __enter__(self) -> "ClientProbe":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "ClientProbe":
        self._thread = threading.Thread(target=self._run, name="client-probe", daemon=True)
        self._thread.start()
        return self

    def mark(self) -> float:
        """Remember "now" as the moment the move started (times in the report count from it)."""
        self.mark_at = time.monotonic()
        return self.mark_at

    def stop(self) -> ProbeReport:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.report()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                rc = subprocess.run(
                    self._argv,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=self.timeout + 3,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = 124
            self.records.append((t0, time.monotonic(), rc))
            self._stop.wait(self.period)

    def ok_since(self, t: float) -> bool:
        """A probe that started after ``t`` succeeded."""
        return any(rc == 0 and start >= t for start, _, rc in list(self.records))

    def failed_since(self, t: float) -> bool:
        return any(rc != 0 and start >= t for start, _, rc in list(self.records))

    def report(self) -> ProbeReport:
        recs = list(self.records)
        mark = self.mark_at if self.mark_at is not None else (recs[0][0] if recs else 0.0)
        ok_ends = [end for _, end, rc in recs if rc == 0]
        gaps = [b - a for a, b in zip(ok_ends, ok_ends[1:])]
        typical = statistics.median(gaps) if gaps else 0.0
        failures = [(s, e, rc) for s, e, rc in recs if rc != 0]
        outage = 0.0
        recovered: Optional[float] = None
        rcs: Dict[int, int] = {}
        for _, _, rc in failures:
            rcs[rc] = rcs.get(rc, 0) + 1
        if failures:
            first_fail, last_fail = failures[0][0], failures[-1][1]
            before = [e for e in ok_ends if e <= first_fail]
            after = [e for e in ok_ends if e >= last_fail]
            start = before[-1] if before else recs[0][0]
            end = after[0] if after else recs[-1][1]
            outage = end - start
            recovered = (after[0] - mark) if after else None
        return ProbeReport(
            probes=len(recs),
            failed=len(failures),
            outage=outage,
            typical_gap=typical,
            first_failure=(failures[0][0] - mark) if failures else None,
            recovered=recovered,
            rcs=rcs,
        )


# --------------------------------------------------------------------------------------------
# Starting the cluster
# --------------------------------------------------------------------------------------------


def tgt_ports() -> Tuple[int, int]:
    """The tgtd control socket (/var/run/tgtd/socket.N) is machine-wide: keep runs apart."""
    base = random.randrange(1000, 32000, 2)  # tgtd accepts -C up to 32767
    return base, base + 1


def start_cluster(
    lab: Lab,
    nodes: Optional[Sequence[Node]] = None,
    config: Optional[Dict[str, Any]] = None,
    configs: Optional[Dict[str, Dict[str, Any]]] = None,
    xapi: bool = True,
) -> Dict[str, int]:
    """The XenAPI fake (serving the pool of ``pool.conf``'s master) and the controllers of
    ``nodes`` (default both), each with its config written: the lab's, with ``config`` and then
    ``configs[node name]`` merged in. Returns {node name: controller PID}."""
    if xapi and lab.xapi_pid is None:
        master = next((n.name for n in lab.nodes if n.pool_conf.read_text() == "master"), "node1")
        lab.start_xapi_fake(master=master)
    pids = {}
    for node in nodes if nodes is not None else lab.nodes:
        node.write_config(_merge(config or {}, (configs or {}).get(node.name, {})))
        pids[node.name] = lab.start_controller(node)
    return pids


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def quiet(node: Node) -> bool:
    """The node's last cycle was ok and had nothing to do (converged, as it sees itself)."""
    last = (control_status(node) or {}).get("last") or {}
    return last.get("outcome") == "ok" and last.get("plan") == []


def converged_on(lab: Lab, holder: Node) -> Callable[[], bool]:
    """A condition: ``holder`` alone holds the storage and the client reads the LUN."""

    def check() -> bool:
        return holds_alone(lab, holder) and lab.client_probe(timeout=1.0).ok

    return check


def move_pool_master(lab: Lab, master: Node) -> None:
    """What HA-Lizard does: both nodes' pool.conf, and the XenAPI fake's master."""
    lab.set_pool_master(master)


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


class DemoFailed(Exception):
    pass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class Demo:
    def __init__(self, once: bool, rounds: int, prometheus_port: int) -> None:
        self.once = once
        self.rounds = rounds
        self.prometheus_port = prometheus_port
        self.t0 = time.monotonic()
        self.checks: List[Check] = []
        self.lab: Optional[Lab] = None
        self.prom: Optional[lprom.Prometheus] = None
        self.figures: Dict[str, List[float]] = {"failover": [], "planned": [], "follow": []}

    # -- output

    def say(self, text: str = "") -> None:
        stamp = f"[{time.monotonic() - self.t0:6.1f}s] " if text else ""
        print(f"{stamp}{text}", flush=True)

    def show(self, text: str, indent: str = "           | ") -> None:
        for line in text.rstrip().splitlines():
            print(indent + line, flush=True)

    def check(self, name: str, ok: bool, detail: str = "", fatal: bool = False) -> bool:
        self.checks.append(Check(name, ok, detail))
        mark = "ok  " if ok else "FAIL"
        self.say(f"  [{mark}] {name}" + (f": {detail}" if detail else ""))
        if not ok and fatal:
            raise DemoFailed(f"{name}: {detail}")
        return ok

    # -- the scenario

    def run(self) -> int:
        problems = preflight()
        if problems:
            for p in problems:
                print(f"lab.demo: {p}", file=sys.stderr)
            return 2
        lab = Lab(tgt_ports=tgt_ports())
        self.lab = lab
        with lab:
            try:
                self.scenario(lab)
            except (DemoFailed, WaitTimeout, LabError, lprom.LabServiceError) as exc:
                self.checks.append(Check("scenario", False, str(exc).splitlines()[0]))
                self.say(f"stopped: {exc}")
            ok = all(c.ok for c in self.checks)
            self.summary()
            if not self.once:
                self.stay_up(lab, ok)
            self.say("cleaning up (stopping every process by PID, deleting the namespaces)")
        self.say("done")
        return 0 if ok else 1

    def scenario(self, lab: Lab) -> None:
        n1, n2 = lab.node1, lab.node2
        self.say(
            f"lab {lab.id}: namespaces {', '.join(lab.namespaces)} "
            f"(built in {1000 * lab.timings['start']:.0f} ms), run dir {lab.base}"
        )
        self.say(
            f"node1 {n1.addr}, node2 {n2.addr}, client 10.99.0.10, VIP {VIP}; pool master: node1"
        )
        t = time.monotonic()
        start_cluster(lab)
        self.say(
            "controllers started (`iscsi-ha run`, interval 1 s in the lab configs; the "
            "product's default is 5 s)"
        )
        self.prom = lprom.start_prometheus(lab, local_port=self.prometheus_port)
        wait_for("node1 holds the storage", converged_on(lab, n1), 30, lab)
        took = time.monotonic() - t
        self.figures["converge"] = [took]
        self.check(
            "initial convergence",
            True,
            f"node1 Primary, target serving, VIP bound; node2 standby ({took:.1f} s "
            "from start; node1's first cycle may spend ~2 s probing for a duplicate VIP "
            "while node2 is not connected yet)",
        )
        # One more cycle each, so that the status shows the converged state, not the actions.
        wait_for(
            "both controllers report a quiet cycle", lambda: all(map(quiet, lab.nodes)), 10, lab
        )
        self.say("status of both nodes (iscsi-cfg status):")
        for node in lab.nodes:
            st = cfg(node, "status")
            self.show(st.text)
            self.check(f"iscsi-cfg status on {node.name}", st.rc == 0, f"rc {st.rc}")

        block = os.urandom(512)
        lba = 7
        lab.client_write(block, lba=lba)
        self.check(
            "a block written through the VIP",
            True,
            f"LBA {lba}, {block[:6].hex()}... from the client namespace",
        )

        for round_no in range(1, self.rounds + 1):
            if self.rounds > 1:
                self.say(f"== round {round_no} of {self.rounds}")
            self.failover(lab, n1, n2)
            data = lab.client_read(lba=lba)
            self.check(
                "the block reads back after the failover",
                data == block,
                "same 512 bytes" if data == block else f"got {data[:6].hex()}...",
                fatal=True,
            )
            self.planned_switch(lab, old=n2, new=n1, teach=round_no == 1)
            data = lab.client_read(lba=lba)
            self.check(
                "the block reads back after the planned switch",
                data == block,
                "same 512 bytes" if data == block else f"got {data[:6].hex()}...",
                fatal=True,
            )
        self.prometheus(lab)

    def failover(self, lab: Lab, old: Node, new: Node) -> None:
        self.say(
            f"moving the pool master {old.name} -> {new.name} as HA-Lizard does "
            "(both pool.conf files and the XenAPI fake)"
        )
        with ClientProbe(lab) as probe, Sampler(lab) as sampler:
            wait_for("the client probe runs", lambda: probe.ok_since(0), 5)
            time.sleep(0.3)
            t = probe.mark()
            move_pool_master(lab, new)
            follow = wait_for(
                f"{new.name} holds the storage alone",
                lambda: holds_alone(lab, new),
                20,
                lab,
                period=0.01,
            )
            wait_for(
                "the client reads the LUN again",
                lambda: probe.ok_since(t + follow),
                10,
                lab,
                period=0.02,
            )
            time.sleep(0.3)
        report = probe.report()
        self.figures["failover"].append(report.outage)
        self.figures["follow"].append(follow)
        steps = "; ".join(
            f"+{1000 * dt:.0f} ms {node} {prop} {'on' if v else 'off'}"
            for dt, node, prop, v in sampler.transitions(t)
        )
        self.say(
            f"storage followed in {1000 * follow:.0f} ms (pool.conf written -> {new.name} "
            f"Primary, serving, VIP bound, {old.name} empty)"
        )
        self.say(f"  seen from outside ({sampler.summary()}): {steps}")
        overlaps = sampler.overlaps()
        self.check(
            "never on both nodes (VIP, target, DRBD Primary)",
            not overlaps and sampler.error is None,
            str(overlaps[:3] or sampler.error or sampler.summary()),
            fatal=True,
        )
        self.check("client outage during the failover", report.probes > 0, report.text())

    def planned_switch(self, lab: Lab, old: Node, new: Node, teach: bool) -> None:
        self.say(f"planned switch {old.name} -> {new.name} through manual mode (docs/design.md §6)")
        for node in (old, new):
            self.cli_step(node, "manual-mode-enable")
        with ClientProbe(lab) as probe, Sampler(lab) as sampler:
            wait_for("the client probe runs", lambda: probe.ok_since(0), 5)
            time.sleep(0.3)
            t = probe.mark()
            self.cli_step(old, "become-secondary")
            self.cli_step(new, "become-primary")
            switched = time.monotonic() - t
            wait_for(f"{new.name} holds the storage alone", lambda: holds_alone(lab, new), 10, lab)
            wait_for(
                "the client reads the LUN again",
                lambda: probe.ok_since(t + switched),
                10,
                lab,
                period=0.02,
            )
            time.sleep(0.3)
        report = probe.report()
        self.figures["planned"].append(report.outage)
        overlaps = sampler.overlaps()
        self.check(
            "never on both nodes during the planned switch",
            not overlaps and sampler.error is None,
            str(overlaps[:3] or sampler.error or sampler.summary()),
            fatal=True,
        )
        self.say(
            f"  two commands took {1000 * switched:.0f} ms end to end (each is one "
            "`iscsi-cfg` run: Python start-up, then one cycle under the controller's lock)"
        )
        self.check("client outage during the planned switch", report.probes > 0, report.text())

        # Leaving manual mode: the native role follows the pool role. new is the storage holder
        # but old is still the pool master, so new's native role is secondary: refused.
        if teach:
            res = cfg(new, "manual-mode-disable")
            self.say(
                f"{new.name}$ iscsi-cfg manual-mode-disable   (rc {res.rc}, expected 1: "
                f"{new.name} is not the pool master yet)"
            )
            self.show(res.text)
            self.check(
                f"manual-mode-disable on {new.name} refused before the pool master moves",
                res.rc == 1,
                f"rc {res.rc}",
            )
        self.say(
            f"moving the pool master to {new.name} too (as `xe pool-designate-new-master` "
            "would); in manual mode nothing moves"
        )
        move_pool_master(lab, new)
        time.sleep(1.2)  # a cycle on each node sees the new pool.conf
        self.check("manual mode kept the storage in place", holds_alone(lab, new), layout_text(lab))
        for node in (new, old):
            self.cli_step(node, "manual-mode-disable")
        wait_for(
            "both controllers out of manual mode and converged",
            lambda: (
                all(
                    not (control_status(n) or {}).get("manual", {}).get("enabled", True)
                    for n in lab.nodes
                )
                and holds_alone(lab, new)
            ),
            10,
            lab,
        )

    def cli_step(self, node: Node, command: str, expect: int = 0) -> CliResult:
        res = cfg(node, command)
        first = res.text.splitlines()[0] if res.text else ""
        self.say(
            f"{node.name}$ iscsi-cfg {command}   rc {res.rc}, {1000 * res.seconds:.0f} ms: {first}"
        )
        self.check(
            f"{command} on {node.name}",
            res.rc == expect,
            f"rc {res.rc}, expected {expect}",
            fatal=True,
        )
        return res

    def prometheus(self, lab: Lab) -> None:
        prom = self.prom
        assert prom is not None
        prom.wait_ready(lab)
        prom.wait_targets_up(2, timeout=20)
        expr = 'sum(iscsi_ha_drbd_role{role="Primary"})'
        # The latest scrape must postdate the last change (scrapes every 1 s).
        time.sleep(1.5)
        value: Optional[float] = None

        def one() -> bool:
            nonlocal value
            value = prom.query_value(expr)
            return value == 1.0

        try:
            wait_for(f"{expr} == 1", one, 10, period=0.25)
        except WaitTimeout:
            pass
        self.check(f"Prometheus: {expr}", value == 1.0, f"{value}")
        who = prom.query('iscsi_ha_drbd_role{role="Primary"} == 1')
        holders = sorted(s["metric"].get("node", "?") for s in who)
        self.say(
            f"Prometheus: Primary on {holders}; cluster label "
            f"{prom.extra['cluster']!r}; targets: 2 up"
        )

    # -- the end

    def summary(self) -> None:
        print(flush=True)
        figs = self.figures
        if figs.get("converge"):
            self.say(f"convergence from start: {figs['converge'][0]:.1f} s")
        for key, label in (
            ("follow", "storage follows a pool master change"),
            ("failover", "client outage, pool master change"),
            ("planned", "client outage, planned switch (manual mode)"),
        ):
            vals = figs.get(key) or []
            if vals:
                ms = [round(1000 * v) for v in vals]
                med = statistics.median(ms)
                self.say(
                    f"{label}: {med:.0f} ms"
                    + (f" (median of {len(ms)}: {ms})" if len(ms) > 1 else "")
                )
        failed = [c for c in self.checks if not c.ok]
        passed = len(self.checks) - len(failed)
        if self.prom is not None and self.lab is not None:
            self.say(
                f"Prometheus: {self.prom.local_url}/  (runs in namespace {self.lab.sw} at "
                f"{self.prom.lab_url}; forwarded to this machine's loopback)"
            )
        if failed:
            self.say(f"{len(failed)} of {len(self.checks)} checks FAILED:")
            for c in failed:
                self.say(f"  - {c.name}: {c.detail}")
        else:
            self.say(f"all {passed} checks passed")

    def stay_up(self, lab: Lab, ok: bool) -> None:
        n1 = lab.node1
        print(flush=True)
        print(
            "The lab stays up" + ("" if ok else " for inspection") + ". Try, as root:", flush=True
        )
        print(f"  {CLI} --config {n1.config_path} status", flush=True)
        print(f"  {CLI} --config {n1.config_path} log", flush=True)
        if self.prom is not None:
            q = 'sum(iscsi_ha_drbd_role{role="Primary"})'
            print(
                f"  curl -s '{self.prom.local_url}/api/v1/query' --data-urlencode 'query={q}'",
                flush=True,
            )
            print(f"  Prometheus UI: {self.prom.local_url}/graph", flush=True)
        print(f"  ip netns exec {lab.client} iscsi-inq {lab.lun_url()}", flush=True)
        print(
            f"  controller logs: {n1.log_dir}/controller.log, {lab.node2.log_dir}/controller.log",
            flush=True,
        )
        print("Ctrl-C stops everything and cleans up.", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            print(flush=True)


def layout_text(lab: Lab) -> str:
    return "; ".join(f"{name}: {st.describe()}" for name, st in layout(lab).items())


def preflight() -> List[str]:
    """What the lab needs on this machine; each missing piece named with its Debian package."""
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (network namespaces, tgtd)")
    for tool, pkg in (
        ("ip", "iproute2"),
        ("tgtd", "tgt"),
        ("tgtadm", "tgt"),
        ("arping", "iputils-arping"),
        ("iscsi-inq", "libiscsi-bin"),
        ("timeout", "coreutils"),
    ):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            problems.append(f"`{tool}` is missing (Debian package {pkg})")
    if not os.access(lprom.PROMETHEUS, os.X_OK):
        problems.append(f"{lprom.PROMETHEUS} is missing (Debian package prometheus)")
    for exe in ("iscsi-ha", "iscsi-cfg"):
        if not (Path(sys.executable).parent / exe).exists():
            problems.append(
                f"{exe} is not installed next to {sys.executable} "
                "(run `make setup`, or pip install -e . in this virtualenv)"
            )
    try:
        import yaml  # noqa: F401
    except ImportError:
        problems.append("PyYAML is missing from this Python (run `make setup`)")
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lab.demo",
        description="Two iscsi-ha controllers in a namespace lab: convergence, a pool master "
        "failover and a planned switch, measured from the client.",
    )
    p.add_argument(
        "--once", action="store_true", help="run end to end and exit: 0 only if every check passed"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the failover and the planned switch N times (median figures)",
    )
    p.add_argument(
        "--prometheus-port",
        type=int,
        default=None,
        help="loopback port for Prometheus (default 9090, or any free port with "
        "--once; a taken port falls back to a free one)",
    )
    p.add_argument(
        "--payload",
        metavar="DIR",
        default=None,
        help="run both controllers from an unpacked RPM payload (DIR/opt/iscsi-ha, "
        "mounted at /opt/iscsi-ha for them only): the shipped bits, not this "
        "virtualenv; same as ISCSI_HA_PAYLOAD=DIR",
    )
    args = p.parse_args(argv)
    if args.payload:
        from lab.payload import ENV_VAR, payload_root

        os.environ[ENV_VAR] = os.path.abspath(args.payload)
        payload_root()  # fails now, naming the directory, if it holds no payload
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    port = args.prometheus_port
    if port is None:
        port = 0 if args.once else lprom.PROMETHEUS_PORT
    demo = Demo(args.once, args.rounds, port)
    if args.once:
        # A hard bound on the whole run: CI must never hang here. The lab tears down on SIGALRM's
        # exception like on any other.
        budget = 100 + 40 * args.rounds

        def expired(*_: object) -> None:
            raise DemoFailed(f"the demo overran its {budget} s budget")

        signal.signal(signal.SIGALRM, expired)
        signal.alarm(budget)
    try:
        return demo.run()
    except DemoFailed as exc:
        print(f"lab.demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
