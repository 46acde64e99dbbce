"""Seeded chaos on real DRBD 8.4: the chaos runner's schedules and checkers in the QEMU VM lab.

``tests/test_vm_chaos.py`` runs ``SCHEDULES`` schedules on one booted pair (``lab/vm/``: two VMs
with the Debian kernel's DRBD 8.4, a controller in each, tgt, the VIP on the client LAN). The
faults are the ones real DRBD makes interesting, drawn from ``random.Random(f"vm:{seed}:{i}")``
(reproducible like ``lab/chaos.py``'s, 1-2 per schedule in its first ``WINDOW`` seconds):

* ``kill`` -- a controller SIGKILLed inside its VM, restarted 1-3 s later;
* ``kill-mid-move`` -- the pool master moved to a node and that node's controller SIGKILLed
  0-2 s later (mid-promotion), restarted 1 s after;
* ``cut`` -- the replication link's carrier off on both VMs (QMP ``set_link``) for 2-5 s; no
  master move is drawn in a schedule with a cut (that is a split brain by construction);
* ``move`` / ``flap`` -- the pool master moved once / back and forth 2-3 times, 1-2 s apart.

The checkers are ``lab/chaos.py``'s: the invariant checker reads each VM with one shell through
its agent (``READ_SCRIPT``: ``/proc/drbd``, the VIP in ``/proc/net/fib_trie``, tgtd holding the
LUN's device) -- still a few hundred ms a reading under software emulation, not 10 ms:
``MAX_SPAN`` is wider here (a sample that took longer is not judged, and counted), and no move
fits in it (one takes seconds in the VMs); DRBD Primary on both is read A, B, A like the VIP
(the two kernels cannot be read in one instant). The data checker writes checksummed blocks
through the VIP and reads every acknowledged one back after the schedule. Each VM has its own
disk and real replication, so a stale promotion or a lost write shows as a block that reads back
wrong.

After the faults the pair is healed (links up, controllers running, one master) and must
converge: the master alone Primary, serving and holding the VIP, the client reading the LUN, and
DRBD Connected and UpToDate on both (so the next schedule starts from a clean pair).
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .chaos import BLOCK, DataChecker, Fault, InvariantChecker, Outcome
from .demo import NodeState
from .vm import controllers as ctl
from .vm.harness import VIP, Vm, VmError, VmLab

VM_KINDS = ("kill", "kill-mid-move", "cut", "move", "flap")
MOVES = ("kill-mid-move", "move", "flap")
SCHEDULES = 10
WINDOW = 5.0
# Each reading runs a shell on the VM's one emulated CPU, which its controller needs too.
VM_PERIOD = 0.3
# A sample's three readings (A, B, A) are judged when they took less than this. A reading is one
# shell with no child; a move is a cycle of a dozen commands on each VM: a demotion alone took
# 12 s after the pool.conf change here (load ~19), readings 1-3 s. A larger bound can only add
# false alarms (a flap there and back inside one sample), never hide a real overlap.
VM_MAX_SPAN = 10.0
FIRST_LBA = 4096  # past what the other VM scenarios write (they use LBA 64 on)


def draw_vm_schedule(seed: int, index: int) -> Tuple[Fault, ...]:
    rng = random.Random(f"vm:{seed}:{index}")
    faults: List[Fault] = []
    for _ in range(rng.randint(1, 2)):
        kind = rng.choice(VM_KINDS)
        at = round(rng.uniform(0.0, WINDOW), 2)
        node = rng.choice(("node1", "node2"))
        cut = any(f.kind == "cut" for f in faults)
        moves = any(f.kind in MOVES for f in faults)
        if (kind == "cut" and moves) or (kind in MOVES and cut):
            continue
        if kind == "kill":
            faults.append(Fault(at, kind, node, round(rng.uniform(1.0, 3.0), 2)))
        elif kind == "kill-mid-move":
            faults.append(Fault(at, kind, node, round(rng.uniform(0.0, 2.0), 2)))
        elif kind == "cut":
            faults.append(Fault(at, kind, node, round(rng.uniform(2.0, 5.0), 2)))
        elif kind == "flap":
            faults.append(Fault(at, kind, node, round(rng.uniform(1.0, 2.0), 2), rng.randint(2, 3)))
        else:
            faults.append(Fault(at, kind, node))
    return tuple(sorted(faults, key=lambda f: f.at))


# One VM read by one shell and no other process (each exec costs ~0.1-1 s under software
# emulation on a loaded host): the DRBD role from /proc/drbd, the VIP as a local address in
# /proc/net/fib_trie, and "serving" as a tgtd holding the LUN's device open (`test -ef` on its
# file descriptors) -- tgtd opens the backing device when the LUN is added and closes it when
# the LUN goes, which is what tgtadm's show would list.
READ_SCRIPT = r"""
r=down
if [ -r /proc/drbd ]; then
  while read -r l; do case "$l" in *" ro:"*) r=${l#* ro:}; r=${r%%/*};; esac; done < /proc/drbd
fi
v=0; prev=
while read -r l; do
  case "$l" in
    *"|-- "*) prev=${l##*|-- };;
    *"/32 host LOCAL"*) [ "$prev" = "$VIPADDR" ] && v=1;;
  esac
done < /proc/net/fib_trie
s=0
for p in /proc/[0-9]*; do
  c=; { read -r c < $p/comm; } 2>/dev/null || continue
  [ "$c" = tgtd ] || continue
  for f in $p/fd/*; do [ "$f" -ef "$DEV" ] && s=1; done
done
echo "chaos-reading $r $v $s"
"""


def read_vm(vm: Vm) -> NodeState:
    """One VM in one agent round trip: its DRBD role, the VIP, whether tgtd serves the LUN."""
    if not vm.alive():
        return NodeState(0, (), "down")
    try:
        out = vm.run(
            ["env", f"VIPADDR={VIP.split('/')[0]}", "DEV=/dev/drbd0", "/bin/sh", "-c", READ_SCRIPT],
            timeout=10,
        ).out
    except VmError:
        return NodeState(0, (), "?")
    words = out.split()
    if len(words) != 4 or words[0] != "chaos-reading":
        return NodeState(0, (), "?")
    _, role, vip, serving = words
    return NodeState(int(vip == "1"), ((1, (1,)),) if serving == "1" else (), role)


class VmClient:
    """The data checker's client (``client_write``/``client_read`` raising, as in the
    namespace lab) over ``lab/vm/controllers.py``'s libiscsi client through the VIP."""

    def __init__(self, c: ctl.Controllers) -> None:
        self.c = c

    def client_write(self, data: bytes, lba: int = 0, lun: int = 1, timeout: float = 5.0) -> None:
        out = self.c.client_write(data, lba=lba, timeout=timeout)
        if not out.get("ok"):
            raise VmError(f"write through the VIP failed: {out.get('error')}")

    def client_read(
        self, lba: int = 0, blocks: int = 1, lun: int = 1, timeout: float = 5.0
    ) -> bytes:
        data = self.c.client_read(blocks, lba=lba, timeout=max(timeout, 20.0))
        if data is None:
            raise VmError("read through the VIP failed")
        return data


class VmRunner:
    def __init__(self, lab: VmLab, c: ctl.Controllers, seed: int, converge: float = 150.0):
        self.lab, self.c, self.seed, self.converge = lab, c, seed, converge
        self.master = "node1"
        self.next_lba = FIRST_LBA
        self.links_up = True

    def vm(self, name: str) -> Vm:
        return self.lab.vm(name)

    def _kill(self, name: str) -> None:
        pid = self.c.pids.pop(name, None)
        if pid:
            try:
                self.vm(name).kill(pid, signal.SIGKILL)
            except VmError:
                pass

    def _restart(self, name: str) -> None:
        if name not in self.c.pids:
            self.c.start(self.vm(name))

    def _move(self, name: str) -> None:
        self.master = name
        self.c.set_pool_master(name)

    def _link(self, up: bool) -> None:
        for vm in self.lab.vms:
            vm.set_replication_link(up)
        self.links_up = up

    def _events(self, f: Fault) -> List[Tuple[float, Callable[[], None]]]:
        name = f.node
        other = "node2" if name == "node1" else "node1"
        if f.kind == "kill":
            return [(f.at, lambda: self._kill(name)), (f.at + f.hold, lambda: self._restart(name))]
        if f.kind == "kill-mid-move":
            return [
                (f.at, lambda: self._move(name)),
                (f.at + f.hold, lambda: self._kill(name)),
                (f.at + f.hold + 1.0, lambda: self._restart(name)),
            ]
        if f.kind == "cut":
            return [(f.at, lambda: self._link(False)), (f.at + f.hold, lambda: self._link(True))]
        if f.kind == "move":
            return [(f.at, lambda: self._move(name))]
        if f.kind == "flap":
            return [
                (f.at + k * f.hold, (lambda t=(name if k % 2 == 0 else other): self._move(t)))
                for k in range(f.count)
            ]
        raise ValueError(f.kind)

    def heal(self) -> None:
        if not self.links_up:
            self._link(True)
        for vm in self.lab.vms:
            self._restart(vm.name)
        self._move(self.master)

    def converged(self) -> bool:
        holder = self.vm(self.master)
        other = next(vm for vm in self.lab.vms if vm is not holder)
        h, o = read_vm(holder), read_vm(other)
        if not (h.holds and o.empty and self.c.client_inq() == 0):
            return False
        return all(
            self.c.drbd(vm, "cstate") == "Connected"
            and self.c.drbd(vm, "dstate") == "UpToDate/UpToDate"
            for vm in self.lab.vms
        )

    def run(self, index: int, faults: Sequence[Fault]) -> Outcome:
        out = Outcome(index, tuple(faults))
        t0 = time.monotonic()
        events = sorted((e for f in faults for e in self._events(f)), key=lambda e: e[0])
        checker = InvariantChecker(
            self.lab,
            nodes=self.lab.vms,
            read=read_vm,
            roles=None,
            period=VM_PERIOD,
            max_span=VM_MAX_SPAN,
        ).start()
        data = DataChecker(
            VmClient(self.c), f"vm:{self.seed}:{index}", self.next_lba, write_timeout=10.0
        ).start()
        try:
            for at, act in events:
                delay = t0 + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                act()
            self.heal()
            try:
                ctl.wait_for(
                    f"schedule {index}: {self.master} alone to hold the storage",
                    self.converged,
                    self.converge,
                    interval=0.5,
                )
            except VmError as exc:
                out.converged = False
                out.note = str(exc)
            time.sleep(1.0)  # a converged cycle under the checkers' eyes
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
        self.next_lba = data.next_lba + 1
        out.seconds = time.monotonic() - t0
        return out


def summary(outcomes: Sequence[Outcome]) -> Dict[str, Any]:
    kinds: Dict[str, int] = {}
    for o in outcomes:
        for f in o.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
    periods = sorted(o.period for o in outcomes)
    return {
        "schedules": len(outcomes),
        "faults_by_kind": kinds,
        "invariant_violations": sum(len(o.violations) for o in outcomes),
        "acknowledged_writes": sum(o.acked for o in outcomes),
        "acknowledged_writes_lost": sum(len(o.lost) for o in outcomes),
        "did_not_converge": sum(0 if o.converged else 1 for o in outcomes),
        "sampling_period_ms_median": round(1000 * periods[len(periods) // 2]) if periods else None,
        "samples": sum(o.samples for o in outcomes),
        "slow_samples_not_judged": sum(o.slow_samples for o in outcomes),
        "block_bytes": BLOCK,
    }


def describe(o: Outcome) -> str:
    head = (
        f"vm schedule {o.index} {'ok' if o.ok else 'FAILED'}: "
        f"{', '.join(f.text() for f in o.faults)}; {o.acked} writes acked "
        f"({o.failed_writes} not), sampled every {1000 * o.period:.0f} ms "
        f"({o.slow_samples} of {o.samples} samples too slow to judge), {o.seconds:.0f} s"
    )
    extra: List[Optional[str]] = list(o.violations[:5]) + list(o.lost[:5]) + [o.note or None]
    return head + "".join(f"\n  {x}" for x in extra if x)
