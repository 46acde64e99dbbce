"""Capture what real DRBD 8.4 reports about its configuration, for the data-safety audit.

    flock <lock> python -m lab.vm.capture_audit OUTDIR

Boots the two VMs of the lab and brings ``r0`` up three times, with three configurations, and
records for each, on node1, ``drbdsetup show r0`` (what the kernel runs), ``drbdsetup show
--show-defaults r0`` and ``drbdadm dump r0`` (what the files say), in the capture format of
``tests/fixtures/drbd84`` (``$ command`` / ``(rc=N)`` / output):

* ``audit-01-lab-default``: the lab's resource (protocol C from ``common``, no fencing, the
  default split-brain policies);
* ``audit-02-unsafe``: protocol A, split-brain policies that discard data automatically
  (``discard-least-changes``, ``discard-secondary``, ``violently-as0p``), no fencing;
* ``audit-03-safe``: protocol C, ``fencing resource-only`` with iscsi-ha's fence-peer handler,
  the split-brain policies at ``disconnect``.

Only the capture: the files are copied into the repository by hand after reading them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List

from .harness import VmLab, drbd_resource

RES = "r0"
UNSAFE = ("\tnet { protocol A; after-sb-0pri discard-least-changes; "
          "after-sb-1pri discard-secondary; after-sb-2pri violently-as0p; }\n")
SAFE = ("\tdisk { fencing resource-only; }\n"
        "\thandlers { fence-peer \"/usr/bin/iscsi-ha fence-peer\"; }\n"
        "\tnet { protocol C; after-sb-0pri disconnect; after-sb-1pri disconnect; "
        "after-sb-2pri disconnect; }\n")


def frame(vm, argv: List[str]) -> str:
    res = vm.run(argv, timeout=60)
    return f"$ {' '.join(argv)}\n(rc={res.rc})\n{res.out}{res.err}\n"


def wait(vm, argv: List[str], want: str, limit: float = 60.0) -> None:
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
        for vm in lab.vms:  # lab.boot(), with room for a loaded machine (TCG is slow then)
            vm.start()
        for vm in lab.vms:
            vm.wait_ready(timeout=300)
        n1 = lab.vms[0]
        for vm in lab.vms:
            vm.run(["drbdadm", "--", "--force", "create-md", RES], timeout=60, check=True)
        for tag, extra in (("01-lab-default", ""), ("02-unsafe", UNSAFE), ("03-safe", SAFE)):
            for vm in lab.vms:
                (vm.xdir / "drbd.d" / f"{RES}.res").write_text(
                    drbd_resource(RES, 0, 7789, lab.vms, extra))
                vm.run(["drbdadm", "up", RES], check=True)
            wait(n1, ["drbdadm", "cstate", RES], "Connected")
            text = "".join(frame(n1, argv) for argv in (
                ["drbdsetup", "show", RES], ["drbdsetup", "show", "--show-defaults", RES],
                ["drbdadm", "dump", RES], ["drbdadm", "--version"]))
            (out / f"audit-{tag}-node1.txt").write_text(text)
            for vm in lab.vms:
                vm.run(["drbdadm", "down", RES], check=True)
    finally:
        lab.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
