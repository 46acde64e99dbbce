"""Capture what real DRBD 8.4 records about data generations, for the never-serve-stale rule.

    flock <lock> python -m lab.vm.capture_gi OUTDIR

Boots the two VMs of the lab, brings ``r0`` up and in sync (node1 Primary), then records, in the
8.4 capture format of ``tests/fixtures/drbd84`` (``$ command`` / ``(rc=N)`` / output / blank), one
file per node and moment:

* ``gi-01-connected``: both connected and in sync (``get-gi``, ``show-gi``, ``/proc/drbd``);
* ``gi-02-link-cut``: the replication link cut, node2 (Secondary) outdated by ``drbdadm outdate``
  as the fence-peer handler's peer call does it; node1 (Primary) as it sees that;
* ``gi-03-crashed-primary-up-alone``: node1 (the Primary) power-cut, booted again and brought up
  with the link still cut: the sequential failure's moment, and its meta-data flags;
* ``gi-04-healed``: the link back, both reconnected and resynced.

Only the capture: the files are copied into the repository by hand after reading them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List

from .harness import VmLab, drbd_resource

RES = "r0"


def frame(vm, argv: List[str]) -> str:
    res = vm.run(argv, timeout=60)
    return f"$ {' '.join(argv)}\n(rc={res.rc})\n{res.out}{res.err}\n"


def snapshot(vm, extra: List[List[str]] = ()) -> str:
    cmds = [
        ["cat", "/proc/drbd"],
        ["drbdadm", "role", RES],
        ["drbdadm", "cstate", RES],
        ["drbdadm", "dstate", RES],
        ["drbdadm", "get-gi", RES],
        ["drbdadm", "show-gi", RES],
    ]
    return "".join(frame(vm, c) for c in [*extra, *cmds])


def wait(vm, argv: List[str], want: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if vm.run(argv).out.strip() == want:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{vm.name}: {' '.join(argv)} never said {want!r}")


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
        n1.run(
            ["dd", "if=/dev/urandom", "of=/dev/drbd0", "bs=4k", "count=16", "oflag=direct"],
            check=True,
        )
        for vm in lab.vms:
            (out / f"gi-01-connected-{vm.name}.txt").write_text(snapshot(vm))

        for vm in lab.vms:
            vm.set_replication_link(False)
        for vm in lab.vms:
            wait(vm, ["drbdadm", "cstate", RES], "WFConnection", 60)
        (out / "gi-02-link-cut-node2.txt").write_text(snapshot(n2, [["drbdadm", "outdate", RES]]))
        (out / "gi-02-link-cut-node1.txt").write_text(
            snapshot(n1, [["drbdadm", "outdate", RES]])
        )  # refused: it is Primary
        n1.run(
            ["dd", "if=/dev/urandom", "of=/dev/drbd0", "bs=4k", "count=16", "oflag=direct"],
            check=True,
        )

        n1.crash()
        n1.start()
        n1.wait_ready()
        n1.set_replication_link(False)
        (out / "gi-03-crashed-primary-up-alone-node1.txt").write_text(
            frame(n1, ["drbdadm", "show-gi", RES]) + snapshot(n1, [["drbdadm", "up", RES]])
        )
        (out / "gi-03-crashed-primary-up-alone-node2.txt").write_text(snapshot(n2))

        for vm in lab.vms:
            vm.set_replication_link(True)
        for vm in lab.vms:
            wait(vm, ["drbdadm", "dstate", RES], "UpToDate/UpToDate", 120)
        for vm in lab.vms:
            (out / f"gi-04-healed-{vm.name}.txt").write_text(snapshot(vm))
    finally:
        lab.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
