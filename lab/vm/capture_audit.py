"""Capture what real DRBD 8.4 reports about its configuration, for the data-safety audit.

    flock <lock> python -m lab.vm.capture_audit OUTDIR [--no-lio]

Boots the two VMs of the lab and brings ``r0`` up three times, with three configurations, and
records for each, on both nodes, ``drbdsetup show r0`` (what the kernel runs), ``drbdsetup show
--show-defaults r0`` and ``drbdadm dump r0`` (what the files say), in the capture format of
``tests/fixtures/drbd84`` (``$ command`` / ``(rc=N)`` / output):

* ``audit-01-lab-default``: the lab's resource (protocol C from ``common``, no fencing, the
  default split-brain policies);
* ``audit-02-unsafe``: protocol A, split-brain policies that discard data automatically
  (``discard-least-changes``, ``discard-secondary``, ``violently-as0p``), no fencing;
* ``audit-03-safe``: protocol C, ``fencing resource-only`` with iscsi-ha's fence-peer handler,
  the split-brain policies at ``disconnect``.

Then, with the real controllers running in both VMs on the LIO target (dom0's default backend),
node1 serving: ``probe-lio-metrics-NODE.txt``, the storage-probe and audit lines of each host's
``/metrics`` - the probe of our own initiator against the kernel's LIO target through the VIP, and
the audit of a real DRBD 8.4 host.

Only the capture: the files are copied into the repository by hand after reading them.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import List

from .harness import VmLab, drbd_resource

RES = "r0"
# One net and one disk section per resource (drbdadm refuses a second one): these replace the
# lab's own (harness.drbd_resource) and keep its fast timers.
LAB_NET = "ping-int 1; ping-timeout 5; connect-int 1;"
LAB_DISK = "c-plan-ahead 0; resync-rate 100M;"
UNSAFE = (
    f"\tnet {{ {LAB_NET} protocol A; after-sb-0pri discard-least-changes; "
    "after-sb-1pri discard-secondary; after-sb-2pri violently-as0p; }\n"
    f"\tdisk {{ {LAB_DISK} }}\n"
)
SAFE = (
    f"\tnet {{ {LAB_NET} protocol C; after-sb-0pri disconnect; after-sb-1pri disconnect; "
    "after-sb-2pri disconnect; }\n"
    f"\tdisk {{ {LAB_DISK} fencing resource-only; }}\n"
    '\thandlers { fence-peer "/usr/bin/iscsi-ha fence-peer"; }\n'
)


def resource_text(lab: VmLab, sections: str) -> str:
    """The lab's resource with its net/disk sections replaced by ``sections`` (if any)."""
    text = drbd_resource(RES, 0, 7789, lab.vms)
    if not sections:
        return text
    lines = [ln for ln in text.splitlines(True) if not ln.startswith(("\tnet {", "\tdisk {"))]
    return lines[0] + sections + "".join(lines[1:])


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


def main(out: Path, lio: bool = True) -> None:
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
                # /etc/drbd.d is the VM's own copy (made at boot): write the resource there.
                vm.run(
                    ["sh", "-c", f"cat > /etc/drbd.d/{RES}.res"],
                    input=resource_text(lab, extra),
                    check=True,
                )
                vm.run(["drbdadm", "up", RES], check=True)
            wait(n1, ["drbdadm", "cstate", RES], "Connected")
            for vm in lab.vms:
                text = "".join(
                    frame(vm, argv)
                    for argv in (
                        ["drbdsetup", "show", RES],
                        ["drbdsetup", "show", "--show-defaults", RES],
                        ["drbdadm", "dump", RES],
                        ["drbdadm", "--version"],
                    )
                )
                (out / f"audit-{tag}-{vm.name}.txt").write_text(text)
            for vm in lab.vms:
                vm.run(["drbdadm", "down", RES], check=True)
        if lio:
            probe_on_lio(lab, out)
    finally:
        lab.teardown()


DIAG = """
import sys, time
from iscsi_ha.controller.systems import iscsi_probe
for timeout in (2.0, 30.0, 30.0):
    r = iscsi_probe.run_probe(sys.argv[1], sys.argv[2], [1], timeout=timeout)
    print(f"timeout {timeout:g}s: {r.seconds:.3f}s ok={r.ok}: {r.sentence()}", flush=True)
"""


def probe_on_lio(lab: VmLab, out: Path) -> None:
    import yaml

    from . import controllers as ctl
    from .harness import VIP

    for vm in lab.vms:
        vm.run(
            ["sh", "-c", f"cat > /etc/drbd.d/{RES}.res"], input=ctl.resources(lab)[RES], check=True
        )
        vm.run(["drbdadm", "up", RES], check=True)
    c = ctl.Controllers(lab, backend="lio")
    c.write_configs()
    for vm in lab.vms:  # TCG is slow: a login to LIO can take seconds here
        path = vm.xdir / "iscsi-ha.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["probe"] = {"interval": 10, "timeout": 10}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    c.set_pool_master("node1")
    for vm in lab.vms:
        c.start(vm)
    notes = []
    try:
        c.settle("node1", limit=300)
        # Our initiator by hand inside node2, against LIO on node1, with generous deadlines.
        res = lab.vm("node2").run([lab.python, "-c", DIAG, VIP.split("/")[0], ctl.IQN], timeout=120)
        notes.append(f"$ probe by hand in node2 (rc={res.rc})\n{res.out}{res.err}")
        want = 'iscsi_ha_storage_probe_success{lun="1",observer="node2"}'
        try:
            ctl.wait_for(
                "node2's probe reads LUN 1 through the VIP",
                lambda: c.metrics(lab.vm("node2")).get(want) == 1.0,
                120,
            )
        except Exception as exc:  # recorded, not fatal: the metrics say what happened
            notes.append(f"wait: {exc}")
        for vm in lab.vms:
            lines = [
                f"{k} {v}"
                for k, v in sorted(c.metrics(vm).items())
                if re.match(
                    r"iscsi_ha_(storage_probe|audit|drbd_replication|drbd_split_brain_"
                    r"policy|drbd_fencing|lvm_|multipath_)",
                    k,
                )
            ]
            (out / f"probe-lio-metrics-{vm.name}.txt").write_text("\n".join(lines) + "\n")
    finally:
        (out / "probe-lio-notes.txt").write_text("\n".join(notes) + "\n")
        for vm in lab.vms:
            (out / f"controller-{vm.name}.log").write_text(c.controller_log(vm))
            c.stop(vm)


if __name__ == "__main__":
    main(Path(sys.argv[1]), lio="--no-lio" not in sys.argv[2:])
