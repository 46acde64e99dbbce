"""Capture real DRBD 8.4 state-change streams and role-change timings in the VM lab.

    python -m lab.vm.capture_events OUT_DIR   # as root, while no other VM lab runs

What it records (everything a human can re-check, nothing invented):

* ``events-<node>.txt``: what ``drbdsetup events all`` (the 8.4 stream the controller follows)
  printed on each node through bring-up, initial sync, promotion, a switchover, a cut and healed
  replication link and ``down``; ``events2-<node>.txt``: what ``drbdsetup events2 all`` printed
  over the same steps (drbd-utils 9 may or may not speak it to an 8.4 kernel: the file says).
* ``steps.txt``: each step with its wall-clock time inside the VMs, so an event can be matched to
  the command that caused it.
* ``timings.txt``: ``drbdadm secondary``/``primary`` timed inside the VM (no agent round trip),
  several switchovers, plus ``python3 -S -c pass`` and ``drbdadm sh-minor`` in the VM and on the
  host, to show the TCG slowdown that the VM figures carry.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from .harness import VmLab
from .scenario import RES, VmBackend

TIMER = (
    "import subprocess,sys,time; t=time.monotonic(); "
    "r=subprocess.run(sys.argv[1:],capture_output=True,text=True); "
    "print(r.returncode, round(time.monotonic()-t,4), r.stderr.strip()[-80:])"
)
SWITCHES = 6


def _timed(vm, argv: List[str]) -> float:
    res = vm.run(["python3", "-S", "-c", TIMER, *argv], timeout=60, check=True)
    rc, secs = res.out.split()[:2]
    if rc != "0":
        raise RuntimeError(f"{vm.name}: {argv} rc {rc}: {res.out}")
    return float(secs)


def _wait(vm, cmd: str, want: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if vm.run(["drbdadm", cmd, RES]).out.strip() == want:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{vm.name}: drbdadm {cmd} {RES} never became {want}")


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    run = out / "run"
    lab = VmLab(run)
    steps: List[str] = []
    timings: Dict[str, List[float]] = {"secondary": [], "primary": []}
    try:
        lab.prepare(VmBackend.resources(lab))
        lab.boot()
        n1, n2 = lab.vms
        for vm in lab.vms:
            vm.run(["drbdadm", "--", "--force", "create-md", RES], timeout=60, check=True)
        pids = {}
        for vm in lab.vms:
            pids[(vm.name, "events")] = vm.spawn(
                ["drbdsetup", "events", "all"], log="/run/lab/events.txt"
            )
            pids[(vm.name, "events2")] = vm.spawn(
                ["drbdsetup", "events2", "all"], log="/run/lab/events2.txt"
            )
        time.sleep(1.0)

        def step(text: str) -> None:
            stamp = n1.run(["date", "+%s.%N"]).out.strip()
            steps.append(f"{stamp} {text}")

        step("up on both")
        for vm in lab.vms:
            vm.run(["drbdadm", "up", RES], check=True)
        _wait(n1, "cstate", "Connected")
        step("new-current-uuid --clear-bitmap on node1 (skip the initial sync)")
        n1.run(["drbdadm", "--", "--clear-bitmap", "new-current-uuid", RES], check=True)
        _wait(n2, "dstate", "UpToDate/UpToDate")
        step("primary on node1")
        n1.run(["drbdadm", "primary", RES], check=True)
        time.sleep(1.0)
        old, new = n1, n2
        for i in range(SWITCHES):
            step(f"switchover {i + 1}: secondary on {old.name}, primary on {new.name}")
            timings["secondary"].append(_timed(old, ["drbdadm", "secondary", RES]))
            timings["primary"].append(_timed(new, ["drbdadm", "primary", RES]))
            time.sleep(1.0)
            old, new = new, old
        step("replication link cut")
        for vm in lab.vms:
            vm.set_replication_link(False)
        _wait(n1, "cstate", "WFConnection", limit=30)
        _wait(n2, "cstate", "WFConnection", limit=30)
        step("replication link restored")
        for vm in lab.vms:
            vm.set_replication_link(True)
        _wait(n1, "cstate", "Connected", limit=30)
        time.sleep(1.0)
        step(f"secondary on {old.name}, down on both")
        old.run(["drbdadm", "secondary", RES], check=True)
        for vm in lab.vms:
            vm.run(["drbdadm", "down", RES], check=True)
        time.sleep(1.0)
        step("end")
        slow = {}
        for vm in (n1,):
            slow["vm python3 -S -c pass"] = [
                _timed(vm, ["python3", "-S", "-c", "pass"]) for _ in range(5)
            ]
            slow["vm drbdadm sh-minor"] = [
                _timed(vm, ["drbdadm", "sh-minor", RES]) for _ in range(5)
            ]
        for (name, _kind), pid in pids.items():
            lab.vm(name).kill(pid)
        for vm in lab.vms:
            for kind in ("events", "events2"):
                src = vm.xdir / f"{kind}.txt"
                (out / f"{kind}-{vm.name}.txt").write_text(src.read_text() if src.exists() else "")
    finally:
        lab.teardown()
    host = []
    for _ in range(5):
        t = time.monotonic()
        subprocess.run(["python3", "-S", "-c", "pass"], check=True)
        host.append(time.monotonic() - t)
    slow["host python3 -S -c pass"] = host
    (out / "steps.txt").write_text("\n".join(steps) + "\n")
    lines = []
    for name, values in list(timings.items()) + list(slow.items()):
        lines.append(
            f"{name}: median {statistics.median(values) * 1000:.1f} ms "
            f"(min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f}, "
            f"n={len(values)}) " + " ".join(f"{v * 1000:.1f}" for v in values)
        )
    (out / "timings.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
