"""Capture real DRBD 8.4 split brains, both-sided and one-sided, and their recovery.

    flock <lock> python -m lab.vm.capture_splitbrain OUTDIR

Boots the two VMs of the lab, brings ``r0`` up and in sync (node1 Primary), then repeats, at most
``ATTEMPTS`` times and until both kinds were seen: the replication link cut, node2 made Primary
too, different amounts written on each side (node1 16 blocks of 4 KiB, node2 64), the link back.
Real DRBD 8.4 then detects the split brain on both sides, or (about one time in three) on one
side only while the other stays ``WFConnection``. Each outcome is recorded, in the 8.4 capture
format of ``tests/fixtures/drbd84`` (``$ command`` / ``(rc=N)`` / output / blank), one file per
node: ``/proc/drbd``, ``role``/``cstate``/``dstate``, ``get-gi``, and the kernel log.

Then it is resolved by DRBD's documented steps with node1 (fewer changes) as the victim, recording
each command's answer and ``/proc/drbd`` during the resync, and the state after (``get-gi`` of
both sides: the same generation). On a one-sided split brain whose WFConnection side is the
victim, ``connect --discard-my-data`` is first tried without ``disconnect`` and its refusal kept.

Only the capture: the files are copied into the repository by hand after reading them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Sequence

from .harness import VmLab, drbd_resource

RES = "r0"
ATTEMPTS = 7


def frame(vm, argv: Sequence[str]) -> str:
    res = vm.run(list(argv), timeout=60)
    return f"$ {' '.join(argv)}\n(rc={res.rc})\n{res.out}{res.err}\n"


STATE = [
    ["cat", "/proc/drbd"],
    ["drbdadm", "role", RES],
    ["drbdadm", "cstate", RES],
    ["drbdadm", "dstate", RES],
    ["drbdadm", "get-gi", RES],
]


def snapshot(vm, extra: Sequence[Sequence[str]] = ()) -> str:
    return "".join(frame(vm, c) for c in [*extra, *STATE])


def cstate(vm) -> str:
    return vm.run(["drbdadm", "cstate", RES]).out.strip()


def wait(vm, argv: List[str], want: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if vm.run(argv).out.strip() == want:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{vm.name}: {' '.join(argv)} never said {want!r}")


def write(vm, seek: int, count: int) -> None:
    vm.run(
        [
            "dd",
            "if=/dev/urandom",
            "of=/dev/drbd0",
            "bs=4k",
            f"seek={seek}",
            f"count={count}",
            "oflag=direct",
        ],
        check=True,
    )


def split(lab: VmLab) -> str:
    """Make one split brain; 'both', 'node1' or 'node2' (who detected it)."""
    n1, n2 = lab.vms
    n1.run(["drbdadm", "primary", RES], check=True)  # the usual Primary (again)
    for vm in lab.vms:
        vm.set_replication_link(False)
    for vm in lab.vms:
        wait(vm, ["drbdadm", "cstate", RES], "WFConnection", 60)
    n2.run(["drbdadm", "primary", RES], check=True)
    write(n1, 100, 16)
    write(n2, 400, 64)
    for vm in lab.vms:
        vm.set_replication_link(True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "StandAlone" not in (cstate(n1), cstate(n2)):
        time.sleep(0.3)
    time.sleep(6)  # let the other side detect it too, or stay WFConnection
    states = {vm.name: cstate(vm) for vm in lab.vms}
    if all(s == "StandAlone" for s in states.values()):
        return "both"
    alone = [n for n, s in states.items() if s == "StandAlone"]
    if len(alone) != 1:
        raise RuntimeError(f"no split brain: {states}")
    return alone[0]


def resolve(lab: VmLab, out: Path, tag: str) -> None:
    """node1 is the victim, node2 the survivor; every command's answer is kept."""
    n1, n2 = lab.vms
    log = ""
    if cstate(n1) != "StandAlone":
        log += "# victim WFConnection: connect --discard-my-data without disconnect first\n"
        log += frame(n1, ["drbdadm", "connect", "--discard-my-data", RES])
    log += "# victim\n"
    log += frame(n1, ["drbdadm", "disconnect", RES])
    log += frame(n1, ["drbdadm", "secondary", RES])
    log += frame(n1, ["drbdadm", "connect", "--discard-my-data", RES])
    log += "# survivor\n"
    if cstate(n2) == "StandAlone":
        log += frame(n2, ["drbdadm", "connect", RES])
    else:
        log += f"# survivor is {cstate(n2)}: nothing to run\n"
    samples = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        proc = n1.run(["cat", "/proc/drbd"])
        samples += f"# t={time.monotonic():.2f}\n{proc.out}\n"
        if "cs:Connected" in proc.out and "ds:UpToDate/UpToDate" in proc.out:
            break
        time.sleep(0.2)
    (out / f"sb-{tag}-resolve-steps.txt").write_text(log)
    (out / f"sb-{tag}-resync-samples-node1.txt").write_text(samples)
    for vm in lab.vms:
        wait(vm, ["drbdadm", "dstate", RES], "UpToDate/UpToDate", 120)
    for vm in lab.vms:
        (out / f"sb-{tag}-resolved-{vm.name}.txt").write_text(snapshot(vm))
        (out / f"sb-{tag}-dmesg-after-{vm.name}.txt").write_text(vm.run(["dmesg"]).out)
    n2.run(["drbdadm", "secondary", RES], check=True)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lab = VmLab(out / "run")
    try:
        lab.prepare({RES: drbd_resource(RES, 0, 7789, lab.vms)})
        lab.boot()
        n1, n2 = lab.vms
        for vm in lab.vms:
            vm.run(["drbdadm", "--", "--force", "create-md", RES], timeout=60, check=True)
        for vm in lab.vms:
            vm.run(["drbdadm", "up", RES], check=True)
        wait(n1, ["drbdadm", "cstate", RES], "Connected")
        n1.run(["drbdadm", "primary", "--force", RES], check=True)
        for vm in lab.vms:
            wait(vm, ["drbdadm", "dstate", RES], "UpToDate/UpToDate", 300)
        seen = set()
        for attempt in range(1, ATTEMPTS + 1):
            for vm in lab.vms:
                vm.run(["dmesg", "-C"])
            kind = split(lab)
            tag = "both" if kind == "both" else f"one-{kind}"
            print(f"attempt {attempt}: {tag}", flush=True)
            first = ("both" if kind == "both" else "one") not in seen
            if first:
                seen.add("both" if kind == "both" else "one")
                for vm in lab.vms:
                    (out / f"sb-{tag}-{vm.name}.txt").write_text(snapshot(vm))
                    (out / f"sb-{tag}-dmesg-{vm.name}.txt").write_text(vm.run(["dmesg"]).out)
                resolve(lab, out, tag)
            else:
                (out / "repeat").mkdir(exist_ok=True)
                resolve(lab, out / "repeat", f"{attempt}-{tag}")
            if seen == {"both", "one"}:
                break
        print(f"seen: {sorted(seen)}", flush=True)
    finally:
        lab.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
