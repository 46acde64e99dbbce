"""XenServer's initiator in the VM lab: open-iscsi (iscsid + the kernel's iscsi_tcp) on a pool host,
a direct-I/O workload on the LUN, and the longest I/O stall across a move of the storage.

The pool's hosts are themselves the SR's initiators, so the initiator runs on a lab VM (the
standby, node2, at the start). The VM's root is the host's, read-only over 9p: open-iscsi comes
from the host (``scripts/setup-env.sh``); ``/etc/iscsi`` (node records, initiator name) is a tmpfs
copy inside the VM; ``/run`` is already one. ``iscsid -f`` runs as a lab process whose output
(``/run/lab/iscsid.log``) says how each reconnect went: open-iscsi logs "connection1:0 is
operational after recovery (N attempts)" (``usr/initiator.c``, ``setup_full_feature_phase``), and
N > 1 means a reconnect failed and cost ``ISCSI_CONN_ERR_REOPEN_DELAY`` (3 s) more.

Timing facts this rests on (open-iscsi ``usr/initiator.c``, ``__session_conn_reopen``): after a
connection error the first reconnect waits the session's negotiated DefaultTime2Wait (then that
value is zeroed for the session), a connect that fails at once waits 3 s, and DefaultTime2Wait is
negotiated at login as the maximum of what the node record asks (default 2) and what the target
offers (tgt: 2). **Stock** = XenServer's settings: open-iscsi's defaults with SM's
``node.session.timeo.replacement_timeout = 144`` for a single path (xapi-project/sm
``iscsilib.set_replacement_tmo``), NOP-Out every 5 s with a 5 s timeout. **Tuned** = the target
offers DefaultTime2Wait 0 (iscsi-ha's ``target.default_time2wait: 0``) and the
node record asks for 0 (``iscsiadm -m node -o update -n node.session.iscsi.DefaultTime2Wait``).

The workload (``WORKLOAD``, run in the VM): O_DIRECT|O_SYNC 4 KiB writes, each read back and
compared, cycling over 256 blocks, each block carrying its sequence number and a SHA-256 of it;
it records the longest time between two completed operations and every error or mismatch.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List

from .controllers import IQN, VIP, Controllers, wait_for
from .harness import Vm

VIP_ADDR = VIP.split("/")[0]
STOCK = {  # XenServer: open-iscsi defaults, SM's single-path replacement timeout
    "node.session.timeo.replacement_timeout": "144",
    "node.conn[0].timeo.noop_out_interval": "5",
    "node.conn[0].timeo.noop_out_timeout": "5",
    "node.session.iscsi.DefaultTime2Wait": "2",
}
TUNED = dict(STOCK, **{"node.session.iscsi.DefaultTime2Wait": "0"})

WORKLOAD = r"""
import hashlib, json, mmap, os, sys, time
dev, out, stop, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
BS, N = 4096, 256
buf = mmap.mmap(-1, BS)
fd = os.open(dev, os.O_RDWR | os.O_DIRECT | os.O_SYNC)
seq, last, longest, at, errors, bad = 0, time.monotonic(), 0.0, 0.0, [], 0
start = last
while time.monotonic() - start < limit and not os.path.exists(stop):
    seq += 1
    block = seq % N
    head = seq.to_bytes(8, "little")
    payload = head + hashlib.sha256(head).digest()
    buf.seek(0); buf.write(payload + bytes(BS - len(payload)))
    try:
        os.pwritev(fd, [buf], block * BS)
        back = mmap.mmap(-1, BS)
        os.preadv(fd, [back], block * BS)
        if bytes(back[:len(payload)]) != payload:
            bad += 1
    except OSError as exc:
        errors.append([round(time.monotonic() - start, 3), str(exc)])
        time.sleep(0.05)
        continue
    now = time.monotonic()
    if now - last > longest:
        longest, at = now - last, last - start
    last = now
    if seq % 50 == 0:
        with open(out + ".tmp", "w") as f:
            json.dump({"ops": seq, "longest": longest, "at": at, "errors": errors,
                       "mismatches": bad, "running": True}, f)
        os.replace(out + ".tmp", out)
with open(out + ".tmp", "w") as f:
    json.dump({"ops": seq, "longest": longest, "at": at, "errors": errors, "mismatches": bad,
               "running": False}, f)
os.replace(out + ".tmp", out)
"""


class Initiator:
    """open-iscsi on one lab VM, logged in to the VIP, and a workload on the LUN."""

    def __init__(self, vm: Vm, controllers: Controllers) -> None:
        self.vm = vm
        self.c = controllers
        self.iscsid_pid = 0
        self.workload_pid = 0
        self.device = ""
        self.runs = 0

    def start(self) -> None:
        vm = self.vm
        vm.sh(
            "mkdir -p /run/iscsi-etc /run/lock/iscsi && cp -a /etc/iscsi/. /run/iscsi-etc/ "
            "&& mount --bind /run/iscsi-etc /etc/iscsi "
            "&& echo InitiatorName=iqn.2024-01.org.iscsi-ha:lab-"
            + vm.name
            + " > /etc/iscsi/initiatorname.iscsi"
        )
        self.iscsid_pid = vm.spawn(["iscsid", "-f", "-d", "1"], log="/run/lab/iscsid.log")
        wait_for("iscsid answers", lambda: vm.run(["iscsiadm", "-m", "session"]).rc in (0, 21), 30)

    def iscsid_log(self) -> str:
        try:
            return (self.vm.xdir / "iscsid.log").read_text(errors="replace")
        except OSError:
            return ""

    def recoveries(self) -> List[int]:
        """The attempt counts of every "operational after recovery (N attempts)" line."""
        import re

        return [
            int(n)
            for n in re.findall(r"operational after recovery \((\d+) attempts\)", self.iscsid_log())
        ]

    def login(self, settings: Dict[str, str]) -> str:
        vm = self.vm
        vm.run(["iscsiadm", "-m", "node", "-T", IQN, "-u"], timeout=30)
        vm.run(["iscsiadm", "-m", "node", "-T", IQN, "-o", "delete"], timeout=30)
        res = vm.run(["iscsiadm", "-m", "discovery", "-t", "st", "-p", VIP_ADDR], timeout=60)
        if res.rc != 0:
            raise RuntimeError(f"discovery failed: {res.err or res.out}")
        for key, value in settings.items():
            vm.run(
                [
                    "iscsiadm",
                    "-m",
                    "node",
                    "-T",
                    IQN,
                    "-p",
                    VIP_ADDR,
                    "-o",
                    "update",
                    "-n",
                    key,
                    "-v",
                    value,
                ],
                timeout=30,
                check=True,
            )
        vm.run(["iscsiadm", "-m", "node", "-T", IQN, "-p", VIP_ADDR, "-l"], timeout=60, check=True)
        self.device = wait_for("the LUN's block device", self._find_device, 60)
        return self.device

    def _find_device(self) -> str:
        res = self.vm.sh(
            "ls /dev/disk/by-path/ 2>/dev/null; for d in /sys/block/sd*; do "
            "[ -e $d ] && echo $(basename $d) $(cat $d/device/vendor); done",
            check=False,
        )
        for line in res.out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("sd"):
                return "/dev/" + parts[0]
        return ""

    def connections(self) -> str:
        """``ss -tni dst VIP`` on the initiator's VM: its iSCSI connection(s), with TCP info."""
        return self.vm.run(["ss", "-tniH", "dst", VIP_ADDR], timeout=20).out.strip()

    def start_workload(self, seconds: float) -> None:
        self.runs += 1
        self.out = f"/run/lab/workload-{self.runs}.json"
        self.stop_file = f"/run/lab/workload-{self.runs}.stop"
        script = self.vm.xdir / "workload.py"
        script.write_text(WORKLOAD)
        self.workload_pid = self.vm.spawn(
            [
                self.c.lab.python,
                "-S",
                "/run/lab/workload.py",
                self.device,
                self.out,
                self.stop_file,
                str(seconds),
            ],
            log="/run/lab/workload.log",
        )
        wait_for("the workload runs", lambda: self.workload().get("ops", 0) >= 50, 60)

    def workload(self) -> Dict[str, Any]:
        path = self.vm.xdir / self.out.split("/")[-1]
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def finish_workload(self, settle: float = 3.0) -> Dict[str, Any]:
        time.sleep(settle)
        (self.vm.xdir / self.stop_file.split("/")[-1]).write_text("")
        wait_for("the workload's summary", lambda: self.workload().get("running") is False, 60)
        return self.workload()


def target_time2wait(vm: Vm) -> str:
    """What the target offers at login (``tgtadm --op show --tid 1``'s parameter list). The
    session negotiates the maximum of this and the node record's value; the kernel does not
    export the result for software iSCSI, so this and the node record are what can be read."""
    res = vm.run(
        [
            "tgtadm",
            "-C",
            str(vm.index),
            "--lld",
            "iscsi",
            "--mode",
            "target",
            "--op",
            "show",
            "--tid",
            "1",
        ],
        timeout=20,
    )
    for line in res.out.splitlines():
        if line.strip().startswith("DefaultTime2Wait="):
            return line.split("=", 1)[1].strip()
    return "?"


def set_target_time2wait(vm: Vm, value: int) -> None:
    """What the tgt adapter does with ``target.default_time2wait`` when it creates a target."""
    vm.run(
        [
            "tgtadm",
            "-C",
            str(vm.index),
            "--lld",
            "iscsi",
            "--mode",
            "target",
            "--op",
            "update",
            "--tid",
            "1",
            "--name",
            "DefaultTime2Wait",
            "--value",
            str(value),
        ],
        timeout=20,
        check=True,
    )
