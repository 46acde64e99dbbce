"""Capture what LVM and drbdadm say about a DRBD backing device on LVM, for the split-brain
snapshot option (``iscsi-cfg split-brain resolve --snapshot``).

    flock <lock> python -m lab.vm.capture_lvm OUTDIR

Boots the lab's VMs; on node1 puts LVM on the VM's disk (``vg0``, a 64 MiB ``r0`` volume), DRBD's
``r0`` on top (internal meta data), and records, in the 8.4 capture format of
``tests/fixtures/drbd84`` (``$ command`` / ``(rc=N)`` / output / blank): ``drbdadm sh-ll-dev``,
the ``lvs`` query the snapshot uses (on the logical volume, and on a device that is not one),
the snapshot's ``lvcreate`` (and one asking for more than the free space), ``lvs`` after.

The VM has no udev and a read-only /etc: ``lvm_setup`` gives LVM its own configuration on a
tmpfs (no udev synchronisation, LVM makes its device nodes itself, no metadata backups).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from .harness import VmLab, drbd_resource

RES = "r0"
LVS = [
    "lvs",
    "--noheadings",
    "--nosuffix",
    "--units",
    "b",
    "--separator",
    "|",
    "-o",
    "vg_name,lv_name,lv_size,vg_free,lv_attr",
]

LVM_CONF = """\
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
devices { obtain_device_list_from_udev = 0 }
backup { backup = 0 archive = 0 }
"""


def lvm_setup(vm) -> None:
    """LVM in a lab VM: its own configuration (the host's /etc is read-only there)."""
    (vm.xdir / "lvm.conf").write_text(LVM_CONF)
    vm.sh(
        "mountpoint -q /etc/lvm || mount -t tmpfs -o mode=0755 tmpfs /etc/lvm; "
        "cp /run/lab/lvm.conf /etc/lvm/lvm.conf; mkdir -p /run/lvm /run/lock/lvm"
    )


def lvm_disk(vm, lv_mib: int = 64) -> None:
    """vg0 on the VM's disk and the logical volume r0 of ``lv_mib`` MiB: DRBD's backing."""
    vm.sh(
        f"pvcreate -ff -y /dev/vda && vgcreate vg0 /dev/vda && "
        f"lvcreate -y -L {lv_mib}M -n {RES} vg0",
        timeout=60,
    )


def frame(vm, argv: Sequence[str]) -> str:
    res = vm.run(list(argv), timeout=60)
    return f"$ {' '.join(argv)}\n(rc={res.rc})\n{res.out}{res.err}\n"


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lab = VmLab(out / "run", disk_mib=128)
    try:
        text = drbd_resource(RES, 0, 7789, lab.vms).replace("disk /dev/vda;", "disk /dev/vg0/r0;")
        lab.prepare({RES: text})
        # The machine is shared: under load ~18 an agent took over 90 s (the default) to answer.
        for vm in lab.vms:
            vm.start()
        for vm in lab.vms:
            vm.wait_ready(timeout=300)
        n1 = lab.vms[0]
        lvm_setup(n1)
        lvm_disk(n1)
        n1.run(["drbdadm", "--", "--force", "create-md", RES], timeout=60, check=True)
        n1.run(["drbdadm", "up", RES], timeout=60, check=True)
        capture = frame(n1, ["drbdadm", "sh-ll-dev", RES])
        capture += frame(n1, [*LVS, "/dev/vg0/r0"])
        capture += frame(n1, [*LVS, "/dev/vda"])
        capture += frame(
            n1,
            [
                "lvcreate",
                "--snapshot",
                "--permission",
                "r",
                "--name",
                "r0-splitbrain-20261202T021500",
                "--size",
                "1000000000b",
                "vg0/r0",
            ],
        )
        capture += frame(
            n1,
            [
                "lvcreate",
                "--snapshot",
                "--permission",
                "r",
                "--name",
                "r0-splitbrain-20261202T021501",
                "--size",
                "16777216b",
                "vg0/r0",
            ],
        )
        capture += frame(n1, [*LVS, "/dev/vg0/r0"])
        capture += frame(n1, [*LVS])
        capture += frame(n1, ["ls", "-l", "/dev/vg0/"])
        (out / "lvm-node1.txt").write_text(capture)
    finally:
        lab.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
