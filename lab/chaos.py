"""Seeded, reproducible chaos in the namespace lab: faults at random moments, checkers throughout.

    python -m lab.chaos --seed 1 --schedules 50          (make chaos-ci)
    python -m lab.chaos --seed 1 --schedules 500         (make chaos)
    python -m lab.chaos --seed 1 --only 17               one schedule again, by its number

One lab (``lab/netlab.py``: two nodes with the real controller, a real tgtd each, real ``ip`` /
``arping``, the DRBD simulator, the XenAPI fake, a real iSCSI client) runs every schedule. Schedule
``i`` of seed ``s`` is drawn from ``random.Random(f"{s}:{i}")`` alone, so it is the same on every
machine and can be run again on its own. A schedule is 1-4 faults at random moments in its first
six seconds:

* ``kill`` -- a controller SIGKILLed, restarted 0.5-3 s later;
* ``kill-mid-move`` -- the pool master moved, and the new master's controller SIGKILLed 0-1.5 s
  later, i.e. while it may be half-way through its promotion plan, restarted 0.5-2 s later;
* ``cut`` -- the replication link of a node cut and restored 1-4 s later (no master move is drawn
  while a link is cut: that is a split brain by construction, which is reported and left to the
  operator -- tests/test_integration.py covers it);
* ``move`` -- the pool master moved (pool.conf on both nodes and the XenAPI fake, as HA-Lizard);
* ``both-master`` -- both pool.conf files say ``master`` for 1-3 s, then one of them is the master;
* ``flap`` -- the pool master moved back and forth 2-5 times, 0.3-1 s apart;
* ``hang-cmd`` / ``fail-cmd`` -- every ``drbdadm`` the node's controller runs hangs (until the
  controller's ``command_timeout``, 5 s in the lab, kills it) or fails, for 1-5 s: the controller's
  ``drbd.drbdadm`` is a wrapper that looks at a flag file;
* ``kill-tgtd`` -- a node's tgtd SIGKILLed (the VIP is then without a target by the fault's own
  doing: that invariant waits until the node's controller has finished two cycles since, killed
  and restarted meanwhile or not, not counting cycles that held the restart for tgtd's back-off --
  see ``TGTD_GRACE``);
* ``vip-stranger`` -- a third host on the segment binds the VIP and announces it, for 1-4 s;
* ``state-full`` / ``state-ro`` -- the node's state directory (a small tmpfs: ledger, manual-mode
  file, status file) is filled to ENOSPC / remounted read-only, for 1-5 s;
* ``clock-jump`` -- the node's controller's wall clock steps 30 s to 1 h forward or back (an NTP
  step; libfaketime through ``lab/chaos_clock.py``, the machine's clock is untouched), and stays
  stepped until the schedule is healed;
* ``mgmt-cut`` -- the management network between the nodes goes for 1-5 s (each routes the
  other's address to a blackhole: the peer channel and the other host's xapi are unreachable)
  while the replication link and the client's path to the VIP stay up.

The lab runs the peer channel (``iscsi-cfg peer-cert`` certificates), so ``mgmt-cut`` cuts
something the controllers use.

Throughout, the **invariant checker** samples both nodes every ``PERIOD`` (10 ms; without a
process per reading: rtnetlink, tgtd's management socket and the simulator's state,
``lab/chaos_probe.py``; the period achieved is printed) and counts a violation when it sees DRBD
Primary on both nodes (both roles from one reading of the simulator's state), the VIP or a
serving target on both nodes (read A, B, A: A held it when B was read), a target serving from a
Secondary or the VIP bound without a serving target (each read twice in a row on the same node,
so a move between two reads does not count). A sample whose readings took longer than
``MAX_SPAN`` (a descheduled sampler on a loaded machine) is not judged for the last four -- a move
there and back could fit in it -- and is counted as slow. A stranger's copy of the VIP
is the fault, not a violation: only the two nodes are compared. The **data checker** writes
numbered, checksummed 512-byte blocks through the VIP from the client, one after another,
records each acknowledged one, and at the end of the schedule reads every acknowledged block back
through the VIP. Each node has its own backing file and the simulator copies data only when DRBD
would have it on both (``lab/drbdsim``), so a node promoted on stale data reads old blocks: that
counts as lost acknowledged writes.

After the last fault the lab is healed (links up, controllers running, one master) and the
schedule must converge within ``--converge`` seconds: the master holds the storage alone and the
client reads the LUN. A schedule fails on a violation, a lost or changed acknowledged block, or
no convergence; the runner then prints the seed and schedule number, shrinks the schedule (drops
faults one at a time while it still fails) and prints the shortest one, and keeps both nodes'
logs under ``--out``.

What this lab cannot show: DRBD's own replication (the simulator copies whole files at the moments
protocol C guarantees the peer has the data); real DRBD runs are the VM lab's job
(``tests/test_vm_chaos.py``).

``--faults "AT KIND NODE [HOLD]; ..."`` runs one given schedule (a regression schedule, or one a
failure printed), e.g. ``--faults "0.5 clock-jump node1 -3600; 2 kill-tgtd node1"``; given
several times, it runs each in turn in the same lab (the regression schedules share one lab).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import chaos_clock, chaos_record
from .chaos_probe import FastProbe
from .demo import (
    NodeState,
    converged_on,
    drbd_roles,
    start_cluster,
    tgt_ports,
    tgtd_pids,
    wait_for,
)
from .netlab import Lab, Node

FAULT_KINDS = (
    "kill",
    "kill-mid-move",
    "cut",
    "move",
    "both-master",
    "flap",
    "kill-tgtd",
    "hang-cmd",
    "fail-cmd",
    "vip-stranger",
    "state-full",
    "state-ro",
    "clock-jump",
    "mgmt-cut",
)
MOVES = ("kill-mid-move", "move", "both-master", "flap")
PERIOD = 0.010  # the invariant checker's sampling period
MAX_SPAN = 0.1  # a sample whose three readings took longer is not judged (see _check)
STATE_TMPFS_KB = 512  # the state directory's size: small, so that filling it is quick
PEER_PORT = 7788
CLOCK_WATCH = 6.0  # a schedule with a clock jump heals no sooner than this after the jump
# The wrapper on the controller's command path: drbdadm goes through it; a flag file next to it
# makes every call hang (killed by command_timeout) or fail, for as long as the fault lasts.
WRAPPER = """#!/bin/sh
dir=$(dirname "$0")
if [ -e "$dir/chaos-hang" ]; then sleep 60; fi
if [ -e "$dir/chaos-fail" ]; then echo "chaos: injected failure" >&2; exit 20; fi
exec "$dir/drbdadm" "$@"
"""
WINDOW = 6.0  # faults start within the first seconds of a schedule
BLOCK = 512
FILLER = "chaos-filler"  # the file that fills a node's state directory
MAX_BLOCKS = 2000  # the data checker's LBAs per schedule (the lab's disk is 16 MiB)
# After tgtd is killed the VIP is without a target until a cycle of the node's controller restarts
# it: the grace lasts until the controller has finished two cycles after the kill (the first may
# have begun before it), as its status file's mtime shows, plus this margin; however long that
# takes on a loaded machine, or with the controller killed and still starting.
TGTD_GRACE = 0.5
GRACE_LIMIT = 120.0  # bounded: a status file that cannot be written ends the grace here
# ... and a cycle that held tgtd's restart for its back-off (``target.restart_backoff``, doubling
# while tgtd keeps dying, reset after 60 s) is not counted: the controller restarts it only after.
BACKOFF_HELD = "tgtd is not running; next start attempt in"


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the schedule starts
    kind: str
    node: str  # "node1" | "node2"
    hold: float = 0.0  # how long the fault lasts (restart, restore, settle delays)
    count: int = 0  # flap: how many moves

    def text(self) -> str:
        if self.kind == "clock-jump":
            return f"t+{self.at:.2f}s {self.kind} {self.node} ({self.hold:+.0f} s)"
        extra = f", {self.count} moves" if self.count else ""
        return f"t+{self.at:.2f}s {self.kind} {self.node} (hold {self.hold:.2f}s{extra})"

    def spec(self) -> str:
        """The ``--faults`` form of this fault."""
        extra = f" {self.count}" if self.count else ""
        return f"{self.at:g} {self.kind} {self.node} {self.hold:g}{extra}"


def parse_faults(text: str) -> Tuple[Fault, ...]:
    """``"AT KIND NODE [HOLD [COUNT]]; ..."`` -> faults (what ``Fault.spec()`` prints)."""
    faults = []
    for part in text.split(";"):
        words = part.split()
        if not words:
            continue
        if len(words) < 3 or words[1] not in FAULT_KINDS or words[2] not in ("node1", "node2"):
            raise ValueError(
                f"--faults: {part.strip()!r} is not 'AT KIND NODE [HOLD [COUNT]]' "
                f"(kinds: {', '.join(FAULT_KINDS)})"
            )
        hold = float(words[3]) if len(words) > 3 else 1.0
        count = int(words[4]) if len(words) > 4 else (2 if words[1] == "flap" else 0)
        faults.append(Fault(float(words[0]), words[1], words[2], hold, count))
    return tuple(sorted(faults, key=lambda f: f.at))


def draw_schedule(seed: int, index: int) -> Tuple[Fault, ...]:
    """Schedule ``index`` of ``seed``: depends on nothing else."""
    rng = random.Random(f"{seed}:{index}")
    faults: List[Fault] = []
    cut_until = -1.0
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(FAULT_KINDS)
        at = round(rng.uniform(0.0, WINDOW), 2)
        node = rng.choice(("node1", "node2"))
        moves_master = kind in MOVES
        if kind == "cut":
            hold = round(rng.uniform(1.0, 4.0), 2)
            if any(f.kind in MOVES for f in faults):
                continue  # see the module docstring: no move while a link is cut
            cut_until = max(cut_until, at + hold + 1.0)
            faults.append(Fault(at, kind, node, hold))
        elif moves_master and cut_until > 0:
            continue
        elif kind == "kill":
            faults.append(Fault(at, kind, node, round(rng.uniform(0.5, 3.0), 2)))
        elif kind == "kill-mid-move":
            faults.append(Fault(at, kind, node, round(rng.uniform(0.0, 1.5), 2)))
        elif kind == "both-master":
            faults.append(Fault(at, kind, node, round(rng.uniform(1.0, 3.0), 2)))
        elif kind == "flap":
            faults.append(Fault(at, kind, node, round(rng.uniform(0.3, 1.0), 2), rng.randint(2, 5)))
        elif kind in ("hang-cmd", "fail-cmd", "state-full", "state-ro", "mgmt-cut"):
            faults.append(Fault(at, kind, node, round(rng.uniform(1.0, 5.0), 2)))
        elif kind == "vip-stranger":
            faults.append(Fault(at, kind, node, round(rng.uniform(1.0, 4.0), 2)))
        elif kind == "clock-jump":
            faults.append(Fault(at, kind, node, float(rng.choice((-1, 1)) * rng.randint(30, 3600))))
        else:  # move, kill-tgtd
            faults.append(Fault(at, kind, node))
    if not faults:
        faults.append(Fault(round(rng.uniform(0.0, WINDOW), 2), "kill", "node1", 1.0))
    return tuple(sorted(faults, key=lambda f: f.at))


# --------------------------------------------------------------------------------------------
# The checkers
# --------------------------------------------------------------------------------------------


class InvariantChecker:
    """Samples both nodes in a bounded loop; ``violations`` says what was seen, and when.

    In the namespace lab it reads through ``FastProbe`` every ``PERIOD``; the VM lab
    (``lab/chaos_vm.py``) gives its own ``nodes``/``read``/``roles`` and a longer ``max_span``."""

    def __init__(
        self,
        lab: Any,
        nodes: Optional[Sequence[Any]] = None,
        read: Optional[Callable[[Any], NodeState]] = None,
        roles: Optional[Callable[[], Dict[str, str]]] = None,
        period: float = PERIOD,
        max_span: float = MAX_SPAN,
    ) -> None:
        self.lab = lab
        self.nodes = tuple(nodes) if nodes is not None else None
        self.read, self.roles = read, roles
        self.period, self.max_span = period, max_span
        self.violations: List[str] = []
        self.samples = 0
        self.costs: List[float] = []  # seconds per sample (its three node readings)
        self.longest_gap = 0.0  # the longest time between two samples' starts
        self.slow_samples = 0  # samples whose readings took longer than MAX_SPAN
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="invariants", daemon=True)
        self._t0 = 0.0
        self.error: Optional[BaseException] = None
        # node name -> monotonic time until which "VIP without a target" is the injected fault
        # itself (tgtd killed), not the controller's doing: it needs a cycle to see it.
        self.grace: Dict[str, float] = {}

    def stopped(self) -> bool:
        return self._stop.is_set()

    def start(self) -> "InvariantChecker":
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop; returns the mean sampling period in seconds."""
        self._stop.set()
        self._thread.join(timeout=15)
        span = time.monotonic() - self._t0
        return span / max(1, self.samples)

    def _run(self) -> None:
        a, b = self.nodes or self.lab.nodes
        flip = False
        deadline = time.monotonic() + 600  # bounded whatever happens
        probe: Optional[FastProbe] = None
        try:
            read, roles_of = self.read, self.roles
            realtime(self.period)
            if read is None:
                probe = FastProbe(self.lab)
                read, roles_of = probe.state, (lambda: drbd_roles(self.lab))
            due = last = time.monotonic()
            while not self._stop.is_set() and time.monotonic() < deadline:
                first, second = (b, a) if flip else (a, b)
                flip = not flip
                start = time.monotonic()
                self.longest_gap = max(self.longest_gap, start - last)
                last = start
                roles = roles_of() if roles_of is not None else None
                s1 = read(first)
                s2 = read(second)
                s3 = read(first)
                span = time.monotonic() - start
                if len(self.costs) < 200_000:
                    self.costs.append(span)
                self.samples += 1
                self._check(first, second, s1, s2, s3, roles, span)
                due += self.period
                wait = due - time.monotonic()
                if wait > 0:
                    self._stop.wait(wait)
                else:  # late (a loaded machine): no burst to catch up, and never a busy loop
                    due = time.monotonic()
                    self._stop.wait(0.001)
        except BaseException as exc:  # noqa: BLE001 - reported by the runner
            self.error = exc
        finally:
            if probe is not None:
                probe.close()

    def _check(
        self,
        first: Node,
        second: Node,
        s1: NodeState,
        s2: NodeState,
        s3: NodeState,
        roles: Optional[Dict[str, str]] = None,
        span: float = 0.0,
    ) -> None:
        t = time.monotonic() - self._t0
        for state in (s1, s2, s3):
            if state.vip > 1:
                self.violations.append(f"t+{t:.2f}s the VIP twice on one node")
        # Both roles come from ONE reading of DRBD's state: exact, whatever the timing.
        if roles and len(roles) == 2 and all(r == "Primary" for r in roles.values()):
            self.violations.append(f"t+{t:.2f}s DRBD Primary on both nodes (one reading)")
        if span > self.max_span:
            # Read A, B, A assumes A did not change in between; over this long a move there and
            # back could fit (a flap's moves are 0.3 s apart). Not judged; counted.
            self.slow_samples += 1
            return
        for prop, has in (("VIP", lambda s: s.vip > 0), ("serving target", lambda s: s.serving)):
            if has(s1) and has(s2) and has(s3):
                self.violations.append(
                    f"t+{t:.2f}s {prop} on both nodes "
                    f"({first.name}: {s1.describe()}; "
                    f"{second.name}: {s2.describe()})"
                )
        # Per node, read twice in a row (s1 and s3 are the same node): a move in between
        # changes at least one of the two readings, so both showing it means it was so.
        if (
            s1.serving
            and not s1.primary
            and s3.serving
            and not s3.primary
            and s1.drbd == s3.drbd
            and s1.drbd not in ("?",)
        ):
            self.violations.append(f"t+{t:.2f}s {first.name} serves the target from DRBD {s1.drbd}")
        if (
            s1.vip
            and not s1.serving
            and s3.vip
            and not s3.serving
            and time.monotonic() > self.grace.get(first.name, 0.0)
        ):
            self.violations.append(f"t+{t:.2f}s {first.name} has the VIP without a serving target")


def realtime(period: float) -> bool:
    """The sampling thread (only it: pid 0 is the calling thread) at real-time priority 1 when
    allowed, so that on a loaded machine it wakes on time; it reads for a fraction of a
    millisecond every ``period`` and always sleeps in between, so it takes ~2% of a core."""
    if not period or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return True
    except OSError:  # not root, or no real-time budget in this cgroup: ordinary priority
        return False


def block_for(seed: str, lba: int) -> bytes:
    """512 bytes that say which schedule and block they are, with a SHA-256 of that."""
    head = f"iscsi-ha chaos {seed} lba {lba}".encode()
    digest = hashlib.sha256(head).digest()
    body = head + b"\0" * (BLOCK - len(head) - len(digest) - 4) + struct.pack(">I", lba)
    return body + digest


class DataChecker:
    """Writes numbered blocks through the VIP, one after the other, and records the acked."""

    def __init__(self, lab: Any, tag: str, first_lba: int = 0, write_timeout: float = 2.0) -> None:
        self.lab = lab  # anything with client_write/client_read (the VM lab's: lab/chaos_vm.py)
        self.write_timeout = write_timeout
        self.tag = tag
        self.next_lba = first_lba
        self.acked: List[int] = []
        self.failed_writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> "DataChecker":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.acked) + self.failed_writes < MAX_BLOCKS:
            lba = self.next_lba
            self.next_lba += 1
            try:
                self.lab.client_write(block_for(self.tag, lba), lba=lba, timeout=self.write_timeout)
            except Exception:  # noqa: BLE001 - not acknowledged: nothing is promised for it
                self.failed_writes += 1
                self._stop.wait(0.1)
                continue
            self.acked.append(lba)

    def verify(self) -> List[str]:
        """Read every acknowledged block back through the VIP; what differs or cannot be read."""
        lost: List[str] = []
        if not self.acked:
            return lost
        lo, hi = min(self.acked), max(self.acked)
        data = b""
        for _ in range(5):
            try:
                data = self.lab.client_read(lba=lo, blocks=hi - lo + 1, timeout=10.0)
                break
            except Exception:  # noqa: BLE001 - retried, then reported
                time.sleep(1.0)
        if not data:
            return [f"cannot read back blocks {lo}-{hi}"]
        for lba in self.acked:
            got = data[(lba - lo) * BLOCK : (lba - lo + 1) * BLOCK]
            if got != block_for(self.tag, lba):
                lost.append(f"acknowledged block {lba} reads back different")
        return lost


# --------------------------------------------------------------------------------------------
# Running a schedule
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    index: int
    faults: Tuple[Fault, ...]
    violations: List[str] = field(default_factory=list)
    lost: List[str] = field(default_factory=list)
    converged: bool = True
    acked: int = 0
    failed_writes: int = 0
    period: float = 0.0
    sample_cost: float = 0.0  # median seconds one sample's three readings took
    longest_gap: float = 0.0
    samples: int = 0
    slow_samples: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations and not self.lost and self.converged


class Runner:
    def __init__(self, lab: Lab, seed: int, converge: float, write_timeout: float = 2.0) -> None:
        self.lab = lab
        self.write_timeout = write_timeout
        self.seed = seed
        self.converge = converge
        self.pids: Dict[str, int] = {}
        self.master = lab.node1
        self.next_lba = 0
        self.checker: Optional[InvariantChecker] = None
        self.read_only: set = set()
        self.grace_generation: Dict[str, int] = {}  # node -> the latest tgtd kill's number

    def node(self, name: str) -> Node:
        return self.lab.node(name)

    def other(self, node: Node) -> Node:
        return self.lab.node2 if node is self.lab.node1 else self.lab.node1

    def start(self) -> None:
        certs = {n.name: peer_cert(n) for n in self.lab.nodes}
        start_cluster(self.lab, nodes=[])  # the XenAPI fake only; the controllers follow
        for node in self.lab.nodes:
            other = self.other(node)
            wrapper = node.bin_dir / "drbdadm-chaos"
            wrapper.write_text(WRAPPER)
            wrapper.chmod(0o755)
            # Small, so that filling it is quick; before the controller starts, so that the
            # controller's mount namespace has it.
            self.lab.mount_tmpfs(node.state_dir, STATE_TMPFS_KB)
            self.clock_file(node).write_text("+0\n")
            node.write_config(
                {
                    "drbd": {"drbdadm": str(wrapper)},
                    "peer": {
                        "address": other.addr,
                        "port": PEER_PORT,
                        "listen": f"{node.addr}:{PEER_PORT}",
                        "cert_file": certs[node.name][0],
                        "key_file": certs[node.name][1],
                        "peer_cert_file": certs[other.name][0],
                    },
                }
            )
            self._restart(node)
        wait_for("node1 holds the storage", converged_on(self.lab, self.lab.node1), 60, self.lab)

    @staticmethod
    def clock_file(node: Node) -> Path:
        return node.dir / "clock-offset"

    def start_controller(self, node: Node) -> int:
        """The node's controller with its own wall clock (``lab/chaos_clock.py``)."""
        argv = node.controller_argv()
        if not argv[0].endswith("/iscsi-ha"):  # an RPM payload's wrapper: no clock of its own
            return self.lab.start_controller(node)
        clock = str(self.clock_file(node))
        return self.lab.start_process(
            node,
            [sys.executable, chaos_clock.__file__, clock, *argv],
            env=chaos_clock.environment(clock),
            log=node.log_dir / "controller.log",
        )

    # -- faults

    def _kill(self, node: Node) -> None:
        pid = self.pids.pop(node.name, None)
        if pid is not None:
            self.lab.kill_process(pid)

    def _restart(self, node: Node) -> None:
        if node.name not in self.pids:
            self.pids[node.name] = self.start_controller(node)

    def _grace_until_repaired(self, node: Node, fault: Callable[[], None] = lambda: None) -> None:
        """The fault's own VIP-without-target is not counted until the node's controller has
        had its chance: two completed cycles after the kill (``TGTD_GRACE``). ``fault`` is the
        kill: cycles are counted from when it has been done, not from when it was due (finding
        and killing tgtd took seconds on a loaded machine, and the cycles of that time, which
        still saw tgtd, ended the grace: schedule 265 of seed 1)."""
        checker = self.checker
        if checker is None:
            fault()
            return
        checker.grace[node.name] = float("inf")
        # Only the latest kill on a node ends its grace: an earlier kill's watcher finishing
        # after a second kill must not cut the second one's grace short (schedule 4 of seed 1).
        generation = self.grace_generation[node.name] = self.grace_generation.get(node.name, 0) + 1
        fault()

        def mtime() -> float:
            try:
                return node.status_file.stat().st_mtime
            except OSError:
                return 0.0

        def held_by_backoff() -> bool:
            try:
                return BACKOFF_HELD in node.status_file.read_text(errors="replace")
            except OSError:
                return False

        def watch() -> None:
            last, cycles = mtime(), 0
            deadline = time.monotonic() + GRACE_LIMIT
            while cycles < 2 and time.monotonic() < deadline and not checker.stopped():
                time.sleep(0.05)
                now = mtime()
                if now != last:
                    last = now
                    # A cycle that held the restart for tgtd's back-off has not had its chance.
                    cycles = cycles if held_by_backoff() else cycles + 1
            if self.grace_generation.get(node.name) == generation:
                checker.grace[node.name] = time.monotonic() + TGTD_GRACE

        threading.Thread(target=watch, name=f"grace-{node.name}", daemon=True).start()

    def _fill(self, node: Node) -> None:
        """The state directory's file system full: a filler file written until ENOSPC."""
        try:
            with open(node.state_dir / FILLER, "ab") as f:
                for _ in range(4 * STATE_TMPFS_KB // 64):  # bounded: the tmpfs is that small
                    try:
                        f.write(b"\0" * 65536)
                        f.flush()
                    except OSError:
                        break
        except OSError:  # read-only right now (a state-ro fault on the same node): already full
            pass

    def _unfill(self, node: Node) -> None:
        try:
            (node.state_dir / FILLER).unlink(missing_ok=True)
        except OSError:  # read-only right now: the heal removes it after the remount
            pass

    def _read_only(self, node: Node, on: bool) -> None:
        if on:
            self.read_only.add(node.name)
        else:
            self.read_only.discard(node.name)
        # A read-only remount fails (EBUSY, mount's status 32) while a file there is open for
        # writing -- the controller's temporary file, the filler: try again for a moment; a
        # remount that never works is said, not a crash of the run (it stopped a shard once).
        failure: Optional[subprocess.CalledProcessError] = None
        for _ in range(20):
            try:
                self.lab.remount(node.state_dir, writable=not on)
                return
            except subprocess.CalledProcessError as exc:
                failure = exc
                time.sleep(0.05)
        print(f"  (remounting {node.state_dir} {'ro' if on else 'rw'} failed: {failure})")

    def _jump(self, node: Node, offset: float) -> None:
        self.clock_file(node).write_text(f"{offset:+.0f}\n")

    def _move(self, node: Node) -> None:
        self.master = node
        self.lab.set_pool_master(node)

    def _events(self, f: Fault) -> List[Tuple[float, str, Callable[[], None]]]:
        node = self.node(f.node)
        if f.kind == "kill":
            return [
                (f.at, "kill", lambda: self._kill(node)),
                (f.at + f.hold, "restart", lambda: self._restart(node)),
            ]
        if f.kind == "kill-mid-move":
            return [
                (f.at, "move", lambda: self._move(node)),
                (f.at + f.hold, "kill", lambda: self._kill(node)),
                (f.at + f.hold + 1.0, "restart", lambda: self._restart(node)),
            ]
        if f.kind == "cut":
            return [
                (f.at, "cut", lambda: self.lab.cut_link(node)),
                (f.at + f.hold, "restore", lambda: self.lab.restore_link(node)),
            ]
        if f.kind == "move":
            return [(f.at, "move", lambda: self._move(node))]
        if f.kind == "both-master":

            def both() -> None:
                for n in self.lab.nodes:
                    (n.pool_conf).write_text("master")

            return [(f.at, "both-master", both), (f.at + f.hold, "move", lambda: self._move(node))]
        if f.kind == "flap":
            out = []
            target = node
            for k in range(f.count):
                out.append((f.at + k * f.hold, "move", lambda t=target: self._move(t)))
                target = self.other(target)
            return out
        if f.kind in ("hang-cmd", "fail-cmd"):
            flag = node.bin_dir / ("chaos-hang" if f.kind == "hang-cmd" else "chaos-fail")
            return [
                (f.at, f.kind, flag.touch),
                (f.at + f.hold, "heal-cmd", lambda: flag.unlink(missing_ok=True)),
            ]
        if f.kind == "kill-tgtd":

            def kill() -> None:
                for pid in tgtd_pids(node):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

            def kill_tgtd() -> None:
                self._grace_until_repaired(node, kill)

            return [(f.at, "kill-tgtd", kill_tgtd)]
        if f.kind == "vip-stranger":
            return [
                (f.at, "stranger takes the VIP", self.lab.stranger_takes_vip),
                (f.at + f.hold, "stranger releases it", self.lab.stranger_releases_vip),
            ]
        if f.kind == "state-full":
            return [
                (f.at, "fill", lambda: self._fill(node)),
                (f.at + f.hold, "unfill", lambda: self._unfill(node)),
            ]
        if f.kind == "state-ro":
            return [
                (f.at, "read-only", lambda: self._read_only(node, True)),
                (f.at + f.hold, "read-write", lambda: self._read_only(node, False)),
            ]
        if f.kind == "clock-jump":
            # The step stays until the heal; the schedule lasts long enough after it for a
            # stalled loop to show (a tgtd kill's grace and more).
            return [
                (f.at, "clock-jump", lambda: self._jump(node, f.hold)),
                (f.at + CLOCK_WATCH, "clock still stepped", lambda: None),
            ]
        if f.kind == "mgmt-cut":
            return [
                (f.at, "mgmt-cut", self.lab.cut_management),
                (f.at + f.hold, "mgmt-restore", self.lab.restore_management),
            ]
        raise ValueError(f.kind)

    def heal(self) -> None:
        if self.lab.stranger_has_vip():
            self.lab.stranger_releases_vip()
        if self.lab.management_cut():
            self.lab.restore_management()
        for node in self.lab.nodes:
            for flag in ("chaos-hang", "chaos-fail"):
                (node.bin_dir / flag).unlink(missing_ok=True)
            if not self.lab.drbd_link_up(node):
                self.lab.restore_link(node)
            if node.name in self.read_only:
                self._read_only(node, False)
            self._unfill(node)
            if self.clock_file(node).read_text().strip() != "+0":
                self._jump(node, 0)
            self._restart(node)
        self._move(self.master)

    def run(self, index: int, faults: Sequence[Fault]) -> Outcome:
        out = Outcome(index, tuple(faults))
        t0 = time.monotonic()
        events = sorted((e for f in faults for e in self._events(f)), key=lambda e: e[0])
        checker = self.checker = InvariantChecker(self.lab).start()
        data = DataChecker(
            self.lab, f"{self.seed}:{index}", self.next_lba, write_timeout=self.write_timeout
        ).start()
        try:
            for at, _what, act in events:
                delay = t0 + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                act()
            self.heal()
            try:
                wait_for(
                    f"schedule {index}: {self.master.name} holds the storage",
                    patient(converged_on(self.lab, self.master)),
                    self.converge,
                    self.lab,
                )
            except AssertionError as exc:
                out.converged = False
                out.note = str(exc).splitlines()[0]
            time.sleep(1.0)  # the checkers watch the converged state too
        finally:
            data.stop()
            out.period = checker.stop()
        costs = sorted(checker.costs)
        out.sample_cost = costs[len(costs) // 2] if costs else 0.0
        out.longest_gap = checker.longest_gap
        out.samples, out.slow_samples = checker.samples, checker.slow_samples
        out.violations = list(checker.violations)
        if checker.error is not None:
            out.note += f" (sampler stopped: {checker.error!r})"
        out.acked, out.failed_writes = len(data.acked), data.failed_writes
        if out.converged:
            out.lost = data.verify()
        self.next_lba = (data.next_lba + 1) % (16 * 1024 * 1024 // BLOCK - MAX_BLOCKS)
        out.seconds = time.monotonic() - t0
        return out


def patient(cond: Callable[[], bool]) -> Callable[[], bool]:
    """``cond``, with a reading that timed out (``ip`` took > 5 s at load 53 and stopped a shard
    of the full run) counted as "not yet" instead of ending the run: the convergence bound
    still applies."""

    def check() -> bool:
        try:
            return bool(cond())
        except subprocess.TimeoutExpired:
            return False

    return check


def shrink(runner: Runner, out: Outcome, budget: int = 6) -> Outcome:
    """Drop faults one at a time while the schedule still fails; the shortest failing one."""
    best = out
    tries = 0
    changed = True
    while changed and tries < budget and len(best.faults) > 1:
        changed = False
        for i in range(len(best.faults)):
            if tries >= budget:
                break
            tries += 1
            candidate = best.faults[:i] + best.faults[i + 1 :]
            again = runner.run(best.index, candidate)
            if not again.ok:
                best, changed = again, True
                break
    return best


def peer_cert(node: Node) -> Tuple[str, str]:
    """The node's peer-channel certificate and key, made by ``iscsi-cfg peer-cert``."""
    where = node.dir / "peer"
    cli = Path(sys.executable).parent / "iscsi-cfg"
    subprocess.run(
        [str(cli), "peer-cert", "--dir", str(where), "--name", node.name],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(where / "host.crt"), str(where / "host.key")


def keep_logs(lab: Lab, out_dir: Path, index: int) -> Path:
    dest = out_dir / f"schedule-{index}"
    for node in lab.nodes:
        if node.log_dir.exists():
            shutil.copytree(node.log_dir, dest / node.name, dirs_exist_ok=True)
    return dest


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--schedules", type=int, default=50)
    ap.add_argument(
        "--first",
        type=int,
        default=0,
        help="the first schedule's number: --first 250 --schedules 250 runs 250-499, the same "
        "schedules as that part of --schedules 500 (a shard; run shards in parallel or one by one)",
    )
    ap.add_argument("--only", type=int, help="run this one schedule (its number) again")
    ap.add_argument(
        "--faults",
        action="append",
        help='run this schedule: "AT KIND NODE [HOLD [COUNT]]; ..." (repeat for several)',
    )
    ap.add_argument(
        "--converge", type=float, default=45.0, help="seconds a healed schedule has to converge"
    )
    ap.add_argument("--out", default="/tmp/iscsi-ha-chaos", help="logs of failed schedules")
    ap.add_argument("--json", help="write the summary here as JSON")
    ap.add_argument(
        "--write-timeout",
        type=float,
        default=2.0,
        help="seconds one client write may take before it counts as not "
        "acknowledged (raise it under nice or on a loaded machine)",
    )
    ap.add_argument(
        "--record",
        help="append one JSON line per finished schedule to this file (with the seed and the git "
        "commit under test): a run stopped half-way keeps what it did; see --resume",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="skip the schedules --record already holds for this seed and commit",
    )
    ap.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep both nodes' logs after every schedule, not only failed ones",
    )
    args = ap.parse_args(argv)
    given = [parse_faults(text) for text in args.faults] if args.faults else None
    if given is not None:
        only = args.only if args.only is not None and len(given) == 1 else None
        indices = [only] if only is not None else list(range(len(given)))
    else:
        indices = (
            [args.only]
            if args.only is not None
            else list(range(args.first, args.first + args.schedules))
        )
    commit = chaos_record.code_commit()
    record = Path(args.record) if args.record else None
    if record is not None and args.resume and given is None:
        done = chaos_record.done_indices(record, args.seed, commit)
        skipped = [i for i in indices if i in done]
        indices = [i for i in indices if i not in done]
        print(f"resuming: {len(skipped)} schedules already in {record}", flush=True)
    out_dir = Path(args.out)
    kinds: Dict[str, int] = {}
    failures: List[Outcome] = []
    violations = lost = acked = unconverged = 0
    periods: List[float] = []
    costs: List[float] = []
    gaps: List[float] = []
    samples = slow = 0
    t_start = time.monotonic()
    with Lab(tgt_ports=tgt_ports()) as lab:
        runner = Runner(lab, args.seed, args.converge, args.write_timeout)
        runner.start()
        for index in indices:
            if given is not None:
                faults = given[0] if len(given) == 1 else given[index]
            else:
                faults = draw_schedule(args.seed, index)
            for f in faults:
                kinds[f.kind] = kinds.get(f.kind, 0) + 1
            res = runner.run(index, faults)
            periods.append(res.period)
            costs.append(res.sample_cost)
            gaps.append(res.longest_gap)
            samples += res.samples
            slow += res.slow_samples
            violations += len(res.violations)
            lost += len(res.lost)
            acked += res.acked
            unconverged += 0 if res.converged else 1
            if record is not None and given is None:
                chaos_record.append(record, args.seed, commit, res)
            status = "ok" if res.ok else "FAILED"
            print(
                f"schedule {index:4d} {status}: {len(faults)} faults, {res.acked} writes acked "
                f"({res.failed_writes} not), sampled every {1000 * res.period:.1f} ms "
                f"(a sample {1000 * res.sample_cost:.1f} ms, longest gap "
                f"{1000 * res.longest_gap:.0f} ms), {res.seconds:.1f} s",
                flush=True,
            )
            if res.ok and args.keep_logs:
                print(f"  logs of both nodes: {keep_logs(lab, out_dir, index)}", flush=True)
            if not res.ok:
                where = keep_logs(lab, out_dir, index)
                print(
                    f"  seed {args.seed} schedule {index}: "
                    + "; ".join(res.violations[:5] + res.lost[:5] + [res.note]),
                    flush=True,
                )
                for f in faults:
                    print(f"    {f.text()}")
                small = shrink(runner, res)
                print(
                    f"  shortest failing schedule ({len(small.faults)} faults; rerun with "
                    f"--seed {args.seed} --only {index}):"
                )
                for f in small.faults:
                    print(f"    {f.text()}")
                print(f'  as --faults: "{"; ".join(f.spec() for f in small.faults)}"')
                print(f"  logs of both nodes: {where}", flush=True)
                failures.append(small)
                runner.heal()
    summary = {
        "seed": args.seed,
        "commit": commit,
        "schedules": len(indices),
        "faults_by_kind": kinds,
        "invariant_violations": violations,
        "acknowledged_writes": acked,
        "acknowledged_writes_lost": lost,
        "did_not_converge": unconverged,
        "failed_schedules": [f.index for f in failures],
        "sampling_period_ms_median": round(1000 * sorted(periods)[len(periods) // 2], 1)
        if periods
        else None,
        "sample_cost_ms_median": round(1000 * sorted(costs)[len(costs) // 2], 2) if costs else None,
        "longest_sampling_gap_ms": round(1000 * max(gaps), 1) if gaps else None,
        "samples": samples,
        "slow_samples_not_judged": slow,
        "minutes": round((time.monotonic() - t_start) / 60, 1),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
