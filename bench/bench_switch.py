"""Moving an iSCSI target + floating IP between two hosts: iscsi-ha side by side with its rivals.

    sudo .venv/bin/python bench/bench_switch.py [--rounds 7] [--only bare,iscsi-ha-failover]

One command, one run, one namespace lab (``lab/netlab.py``: real tgtd per node, the VIP moved with
``ip``, gratuitous ARP with iputils' arping, the client is libiscsi's ``iscsi-inq``), and **the
same DRBD simulator** (``lab/drbdsim``) for every method: each method demotes the old node and
promotes the new one with the simulator's ``drbdadm``, where that method would do it. Methods:

==========================  =================================================================
bare                        a shell script: warm tgtd, ``tgtadm`` target delete, VIP del, DRBD
                            secondary/primary, target new + LUN + bind, VIP add, arping in the
                            background. No checks: the floor of what any tool can do here.
keepalived-vrrp3            keepalived 2.2 (VRRPv3, ``advert_int 0.1``, unicast): the old node's
                            target is deleted and DRBD demoted (what a stop hook would do), then
                            its keepalived gets SIGTERM; the new node's ``notify_master`` script
                            promotes DRBD and configures the target. Always node1 -> node2;
                            node1 is restored between runs, outside the timed window.
original                    the original iSCSI-HA's mechanics: VIP del, target delete, tgtd
                            stopped (``--mode system --op delete``), DRBD, a cold tgtd started
                            and configured by ``tgt-admin -e`` from a targets.conf between State
                            offline/ready, VIP add, **foreground** ``arping -U -c 2 -w 2``.
pacemaker-agents            Pacemaker's resource agents run directly (``resource-agents``):
                            iSCSILogicalUnit, iSCSITarget (``allowed_initiators=ALL``, without it
                            logins fail), IPaddr2 stopped on the old node, DRBD, then started in
                            reverse on the new one. Pacemaker's own scheduling is not included.
iscsi-ha-failover           both ``iscsi-ha run`` controllers; the pool master moves (both
                            pool.conf files rewritten atomically, the XenAPI fake follows).
iscsi-ha-planned            both controllers in manual mode (set outside the timed window);
                            ``iscsi-cfg become-secondary`` on the old, ``become-primary`` on the
                            new: the two-command planned switch by hand.
iscsi-ha-switchover         ``iscsi-cfg switchover`` (one command, issued on the old and the new
                            holder in turn): the controllers coordinate over the peer channel.
==========================  =================================================================

**The probe** (the same for every method, as in the anchors' measurements): a loop inside the
client namespace runs ``timeout 0.05 iscsi-inq iscsi://VIP/IQN/1``, each start 10 ms after the
previous start (at once if the last took longer). **Outage**: the longest gap between the ends of
two consecutive successful probes across the move. **VIP absent**: from ``ip -ts monitor
address`` in both node namespaces, the VIP deleted on the old node until added on the new one
(for iscsi-ha-failover also **pool.conf -> VIP**: the pool.conf rewrite until the VIP appears on
the new master, the issue's "pool.conf change -> serving"). **Server time**: first command of the
move until its last returns (for keepalived: SIGTERM until the new node's notify script is done;
for iscsi-ha-failover: until the new master's VIP is bound).

Printed per method: median (min-max) of each, the ratio of the outage median to the best anchor's
(the fastest of the first four), and the simulator's cost per ``drbdadm`` call. Runs alternate
node1 -> node2 and back (keepalived excepted). A round that fails says why and is counted, not
hidden. Needs root, tgt, libiscsi-bin, iputils-arping, keepalived and resource-agents
(``scripts/setup-env.sh``). Every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab.demo import cfg, converged_on, start_cluster, tgt_ports, wait_for  # noqa: E402
from lab.netlab import IQN, VIP, Lab, Node  # noqa: E402
from lab.peerlab import peer_configs  # noqa: E402

RES = "iscsi1"
VIP_ADDR = VIP.split("/")[0]
PROBE_PERIOD = 0.01
PROBE_TIMEOUT = 0.05
SETTLE = 0.4  # successful probing before and after each move
OCF_ROOT = Path("/usr/lib/ocf")
METHODS = (
    "bare",
    "keepalived-vrrp3",
    "original",
    "pacemaker-agents",
    "iscsi-ha-failover",
    "iscsi-ha-planned",
    "iscsi-ha-switchover",
)
ANCHORS = METHODS[:4]

PROBE_SCRIPT = r"""
import subprocess, sys, time
url, out, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
argv = ["timeout", "%g", "iscsi-inq", url]
deadline = time.monotonic() + limit
with open(out, "w", buffering=1) as f:
    nxt = time.monotonic()
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now < nxt:
            time.sleep(nxt - now)
        t0 = time.monotonic()
        rc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        f.write("%%.6f %%.6f %%d\n" %% (t0, time.monotonic(), rc))
        nxt = t0 + %g
""" % (PROBE_TIMEOUT, PROBE_PERIOD)


class RoundFailed(Exception):
    pass


# ------------------------------------------------------------------------------------- helpers


def tgtadm(node: Node, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(
        ["tgtadm", "-C", str(node.tgt_port), *args], capture_output=True, text=True, timeout=10
    )
    if check and res.returncode != 0:
        raise RoundFailed(f"tgtadm -C {node.tgt_port} {' '.join(args)}: {res.stderr.strip()}")
    return res


def delete_target(node: Node) -> None:
    """Target 1 gone from ``node``'s tgtd, sessions and all (nothing to delete is fine)."""
    delete = ("--mode", "target", "--op", "delete", "--force", "--tid", "1")
    tgtadm(node, "--lld", "iscsi", *delete, check=False)


def drbd(node: Node, *args: str) -> None:
    res = node.drbdadm(*args)
    if res.returncode != 0:
        raise RoundFailed(f"{node.name}: drbdadm {' '.join(args)}: {res.stderr.strip()}")


def vip_on(node: Node) -> bool:
    out = subprocess.run(
        ["ip", "-n", node.netns, "-o", "addr", "show", "dev", node.interface],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    return f" {VIP} " in out


def serving(node: Node) -> bool:
    return (
        "Target 1:"
        in tgtadm(node, "--lld", "iscsi", "--mode", "target", "--op", "show", check=False).stdout
    )


class Probe:
    """The client's probe loop (a process in the client namespace) and what it recorded."""

    def __init__(self, lab: Lab, out: Path, limit: float = 30.0) -> None:
        self.lab, self.out = lab, out
        script = out.with_suffix(".py")
        script.write_text(PROBE_SCRIPT)
        self.pid = lab.start_process(
            "client", [sys.executable, "-S", str(script), lab.lun_url(), str(out), str(limit)]
        )

    def records(self) -> List[Tuple[float, float, int]]:
        try:
            lines = self.out.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [
            (float(a), float(b), int(c))
            for a, b, c in (line.split() for line in lines if line.count(" ") == 2)
        ]

    def ok_after(self, t: float, span: float = 0.0) -> bool:
        """Successful probes, none failed, over ``span`` seconds ending now, all after ``t``."""
        recs = [r for r in self.records() if r[0] >= t]
        if not recs or recs[-1][2] != 0:
            return False
        good = [r for r in recs if r[2] == 0]
        if span <= 0:
            return True
        tail = [r for r in recs if r[1] >= recs[-1][1] - span]
        return all(r[2] == 0 for r in tail) and recs[-1][1] - good[0][1] >= span

    def stop(self) -> None:
        self.lab.stop_process(self.pid)


def outage(records: Sequence[Tuple[float, float, int]], t0: float) -> float:
    """The longest gap between the ends of two consecutive successful probes across the move."""
    ends = [end for start, end, rc in records if rc == 0]
    before = [e for e in ends if e <= t0]
    after = [e for e in ends if e > t0]
    if not before or not after:
        raise RoundFailed("the probe has no success before or after the move")
    span = [before[-1]] + after
    return max(b - a for a, b in zip(span, span[1:]))


class AddrMonitor:
    """``ip -ts monitor address`` in one node namespace: when the VIP came and went (wall clock)."""

    STAMP = re.compile(
        r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\]\s*(Deleted )?.*\binet "
        + re.escape(VIP)
        + r"\b"
    )

    def __init__(self, lab: Lab, node: Node, out: Path) -> None:
        self.lab, self.out = lab, out
        self.pid = lab.start_process(
            None, ["ip", "-ts", "-n", node.netns, "monitor", "address"], log=out
        )

    def events(self) -> List[Tuple[float, bool]]:
        """(epoch seconds, added?) for each VIP change."""
        got = []
        for line in self.out.read_text(errors="replace").splitlines():
            m = self.STAMP.match(line)
            if m:
                stamp = datetime.datetime.fromisoformat(m.group(1)).timestamp()
                got.append((stamp, m.group(2) is None))
        return got

    def stop(self) -> None:
        self.lab.stop_process(self.pid)


def vip_absent(old: AddrMonitor, new: AddrMonitor, since: float) -> Tuple[float, float, float]:
    """(deleted on old, added on new, absent seconds); epoch times after ``since``."""
    dels = [t for t, added in old.events() if not added and t >= since]
    adds = [t for t, added in new.events() if added and t >= since]
    if not dels or not adds:
        raise RoundFailed(f"VIP moves not seen by ip monitor (deleted {dels}, added {adds})")
    return dels[0], adds[0], max(0.0, adds[0] - dels[0])


def median_range(values: Sequence[float], scale: float = 1000.0) -> str:
    if not values:
        return "-"
    v = [x * scale for x in values]
    return f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"


# --------------------------------------------------------------------------------------- bench


class Bench:
    def __init__(self, lab: Lab, rounds: int, work: Path) -> None:
        self.lab = lab
        self.rounds = rounds
        self.work = work
        self.n1, self.n2 = lab.nodes
        self.tgtd: Dict[str, int] = {}
        self.bin: Dict[str, Path] = {}
        self.ka_pids: Dict[str, int] = {}
        self.background: List[int] = []
        self.switchovers = 0
        self.phases: List[Dict[str, float]] = []  # iscsi-cfg switchover's own report, per round
        for node in lab.nodes:
            b = work / f"bin-{node.name}"
            b.mkdir(parents=True, exist_ok=True)
            real = shutil.which("tgtadm") or "/usr/sbin/tgtadm"  # by path: the wrapper is on PATH
            (b / "tgtadm").write_text(f'#!/bin/sh\nexec {real} -C {node.tgt_port} "$@"\n')
            (b / "tgtadm").chmod(0o755)
            self.bin[node.name] = b
        (work / "targets.conf").write_text(
            textwrap.dedent(f"""\
            <target {IQN}>
                backing-store {lab.disk_path(RES)}
                initiator-address ALL
            </target>
            """)
        )

    # ---- the storage, by hand (outside every timed window)

    def start_tgtd(self, node: Node) -> None:
        if node.name in self.tgtd and serving_daemon(node):
            return
        pid = self.lab.start_process(
            node, ["tgtd", "-f", "-C", str(node.tgt_port)], log=self.work / f"tgtd-{node.name}.log"
        )
        self.tgtd[node.name] = pid
        wait_for(f"tgtd on {node.name}", lambda: serving_daemon(node), 5)

    def stop_tgtd(self, node: Node) -> None:
        delete_target(node)
        tgtadm(node, "--mode", "system", "--op", "delete", check=False)
        pid = self.tgtd.pop(node.name, None)
        if pid:  # exits ~0.1 s after the system delete; the lab's or the original script's
            self.lab.stop_process(pid, timeout=2)
            stop_pid(pid, wait=2.0)

    def serve(self, node: Node) -> None:
        tgtadm(
            node,
            "--lld",
            "iscsi",
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            "1",
            "--targetname",
            IQN,
        )
        tgtadm(
            node,
            "--lld",
            "iscsi",
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            "1",
            "--backing-store",
            str(self.lab.disk_path(RES)),
            "--bsoflags",
            "sync",
        )
        tgtadm(
            node,
            "--lld",
            "iscsi",
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            "1",
            "--initiator-address",
            "ALL",
        )

    def clear(self, node: Node) -> None:
        """Neither the VIP nor the target on ``node`` (its tgtd keeps running)."""
        subprocess.run(
            ["ip", "-n", node.netns, "addr", "del", VIP, "dev", node.interface],
            capture_output=True,
            timeout=5,
        )
        delete_target(node)

    def place(self, holder: Node) -> None:
        """Storage on ``holder`` alone, both tgtds warm: DRBD, target, VIP."""
        other = self.n2 if holder is self.n1 else self.n1
        for node in self.lab.nodes:
            self.start_tgtd(node)
        self.clear(other)
        other.drbdadm("secondary", RES)  # demote the other before promoting
        drbd(holder, "primary", RES)
        if not serving(holder):
            self.serve(holder)
        if not vip_on(holder):
            subprocess.run(
                ["ip", "-n", holder.netns, "addr", "add", VIP, "dev", holder.interface],
                check=True,
                timeout=5,
            )
            self.lab.run(
                holder, ["arping", "-U", "-I", holder.interface, "-c", "1", VIP_ADDR], timeout=5
            )

    # ---- one timed round

    def measure(
        self, name: str, i: int, old: Node, new: Node, move: Callable[[Node, Node], float]
    ) -> Dict[str, float]:
        tag = f"{name}-{i}"
        mons = {
            n.name: AddrMonitor(self.lab, n, self.work / f"{tag}-ipmon-{n.name}.txt")
            for n in self.lab.nodes
        }
        probe = Probe(self.lab, self.work / f"{tag}-probe.txt")
        try:
            wait_for("the probe succeeds steadily", lambda: probe.ok_after(0, SETTLE), 10)
            wall0, t0 = time.time(), time.monotonic()
            server = move(old, new)
            wait_for("the probe succeeds again", lambda: probe.ok_after(t0, SETTLE), 20)
            out = outage(probe.records(), t0)
            deleted, added, absent = vip_absent(mons[old.name], mons[new.name], wall0 - 0.05)
        finally:
            probe.stop()
            for mon in mons.values():
                mon.stop()
            self.reap_background()
        row = {"outage": out, "vip_absent": absent, "server": server}
        if name == "iscsi-ha-failover":
            row["poolconf_to_vip"] = added - wall0
        return row

    def reap_background(self) -> None:
        """Processes a method's script left running (its background arping): they end by
        themselves within ~2 s; whatever is left then is killed."""
        for pid in self.background:
            stop_pid(pid, wait=3.0)
        self.background.clear()

    # ---- the methods

    def run_script(self, script: str, name: str) -> float:
        path = self.work / f"{name}.sh"
        path.write_text(script)
        t = time.monotonic()
        res = subprocess.run(
            ["sh", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PATH=f"{self.n1.bin_dir}:{os.environ['PATH']}"),
        )
        elapsed = time.monotonic() - t
        pids = self.work / f"{name}.pids"
        if pids.exists():  # what the script left in the background, by PID
            self.background += [int(x) for x in pids.read_text().split()]
            pids.unlink()
        if res.returncode != 0:
            raise RoundFailed(f"{name}: rc {res.returncode}: {res.stderr.strip()[-400:]}")
        return elapsed

    def bare(self, old: Node, new: Node) -> float:
        pids = self.work / "bare.pids"
        return self.run_script(
            f"""set -e
{force_delete(old)}
ip -n {old.netns} addr del {VIP} dev {old.interface}
'{old.bin_dir}/drbdadm' secondary {RES}
'{new.bin_dir}/drbdadm' primary {RES}
tgtadm -C {new.tgt_port} --lld iscsi --mode target --op new --tid 1 --targetname {IQN}
tgtadm -C {new.tgt_port} --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 \
  --backing-store {self.lab.disk_path(RES)} --bsoflags sync
tgtadm -C {new.tgt_port} --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
ip -n {new.netns} addr add {VIP} dev {new.interface}
ip netns exec {new.netns} arping -U -I {new.interface} -c 2 {VIP_ADDR} >/dev/null 2>&1 &
echo $! >> '{pids}'
""",
            "bare",
        )

    def original(self, old: Node, new: Node) -> float:
        pids = self.work / "original.pids"
        new_log = self.work / f"tgtd-{new.name}.log"
        t = self.run_script(
            f"""set -e
ip -n {old.netns} addr del {VIP} dev {old.interface}
{force_delete(old)}
tgtadm -C {old.tgt_port} --mode system --op delete
'{old.bin_dir}/drbdadm' secondary {RES}
'{new.bin_dir}/drbdadm' primary {RES}
ip netns exec {new.netns} setsid tgtd -f -C {new.tgt_port} >>'{new_log}' 2>&1 &
echo $! >> '{pids}'
i=0
until tgtadm -C {new.tgt_port} --mode sys --op show >/dev/null 2>&1; do
  i=$((i+1)); [ $i -lt 1000 ] || exit 9; sleep 0.005
done
tgtadm -C {new.tgt_port} --mode sys --op update --name State -v offline
tgt-admin -C {new.tgt_port} -e -c '{self.work / "targets.conf"}'
tgtadm -C {new.tgt_port} --mode sys --op update --name State -v ready
ip -n {new.netns} addr add {VIP} dev {new.interface}
ip netns exec {new.netns} arping -U -I {new.interface} -c 2 -w 2 {VIP_ADDR} >/dev/null 2>&1 || true
""",
            "original",
        )
        # The cold tgtd now serves: adopt it as the new node's daemon; the old one exited.
        started = [p for p in self.background if _comm(p) == "tgtd"]
        self.background = [p for p in self.background if p not in started]
        old_pid = self.tgtd.pop(old.name, None)
        if old_pid:  # it exited after --mode system --op delete; reap it
            self.lab.stop_process(old_pid, timeout=2)
            stop_pid(old_pid, wait=2.0)
        if started:
            self.tgtd[new.name] = started[0]
        return t

    def ocf(self, old: Node, new: Node) -> float:
        agents = OCF_ROOT / "resource.d" / "heartbeat"
        disk = self.lab.disk_path(RES)
        lines = ["set -e"]

        def agent(node: Node, name: str, op: str, params: str) -> str:
            tmp = self.work / f"rsctmp-{node.name}"
            tmp.mkdir(exist_ok=True)
            return (
                f"ip netns exec {node.netns} env OCF_ROOT={OCF_ROOT} HA_RSCTMP={tmp} "
                f"PATH={self.bin[node.name]}:$PATH {params} "
                f"timeout 30 {agents / name} {op} >>'{self.work / 'ocf.log'}' 2>&1"
            )

        lu = (
            f"OCF_RESKEY_implementation=tgt OCF_RESKEY_target_iqn={IQN} OCF_RESKEY_lun=1 "
            f"OCF_RESKEY_path={disk}"
        )
        tg = (
            f"OCF_RESKEY_implementation=tgt OCF_RESKEY_iqn={IQN} OCF_RESKEY_tid=1 "
            "OCF_RESKEY_allowed_initiators=ALL"
        )
        ip = f"OCF_RESKEY_ip={VIP_ADDR} OCF_RESKEY_cidr_netmask=24 OCF_RESKEY_nic={old.interface}"
        lines += [
            agent(old, "iSCSILogicalUnit", "stop", lu),
            agent(old, "iSCSITarget", "stop", tg),
            agent(old, "IPaddr2", "stop", ip),
            f"'{old.bin_dir}/drbdadm' secondary {RES}",
            f"'{new.bin_dir}/drbdadm' primary {RES}",
            agent(new, "IPaddr2", "start", ip),
            agent(new, "iSCSITarget", "start", tg),
            agent(new, "iSCSILogicalUnit", "start", lu),
        ]
        return self.run_script("\n".join(lines) + "\n", "ocf")

    # keepalived: always node1 -> node2, both restarted fresh around each round

    def keepalived_conf(self, node: Node, master: bool) -> Path:
        other = self.n2 if node is self.n1 else self.n1
        notify = self.work / f"ka-notify-{node.name}.sh"
        notify.write_text(f"""#!/bin/sh
set -e
'{node.bin_dir}/drbdadm' primary {RES}
tgtadm -C {node.tgt_port} --lld iscsi --mode target --op new --tid 1 --targetname {IQN}
tgtadm -C {node.tgt_port} --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 \
  --backing-store {self.lab.disk_path(RES)} --bsoflags sync
tgtadm -C {node.tgt_port} --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
date +%s.%N > '{self.work / f"ka-done-{node.name}.tmp"}'
mv '{self.work / f"ka-done-{node.name}.tmp"}' '{self.work / f"ka-done-{node.name}"}'
""")
        notify.chmod(0o755)
        conf = self.work / f"keepalived-{node.name}.conf"
        conf.write_text(
            textwrap.dedent(f"""\
            global_defs {{
                vrrp_version 3
                script_user root
                enable_script_security
            }}
            vrrp_instance VI_BENCH {{
                state {"MASTER" if master else "BACKUP"}
                interface {node.interface}
                virtual_router_id 51
                priority {150 if master else 100}
                advert_int 0.1
                unicast_src_ip {node.addr}
                unicast_peer {{ {other.addr} }}
                virtual_ipaddress {{ {VIP} dev {node.interface} }}
                notify_master "{notify}"
            }}
            """)
        )
        return conf

    def start_keepalived(self, node: Node, master: bool) -> None:
        conf = self.keepalived_conf(node, master)
        run = self.work / f"ka-run-{node.name}"
        run.mkdir(exist_ok=True)
        pid = self.lab.start_process(
            node,
            [
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-P",
                "-f",
                str(conf),
                "-p",
                str(run / "ka.pid"),
                "-r",
                str(run / "vrrp.pid"),
                "-c",
                str(run / "chk.pid"),
            ],
            log=self.work / f"keepalived-{node.name}.log",
        )
        self.ka_pids[node.name] = pid

    def stop_keepalived(self) -> None:
        for name, pid in list(self.ka_pids.items()):
            self.lab.stop_process(pid, timeout=3)
            del self.ka_pids[name]

    def keepalived_prepare(self) -> None:
        """Outside the window: node1 holds DRBD and the target, its keepalived the VIP."""
        self.stop_keepalived()
        for node in self.lab.nodes:
            self.start_tgtd(node)
            self.clear(node)
        self.n2.drbdadm("secondary", RES)
        for f in self.work.glob("ka-done-*"):
            f.unlink()
        self.start_keepalived(self.n1, master=True)
        wait_for(
            "node1's keepalived holds the VIP and serves",
            lambda: vip_on(self.n1) and (self.work / "ka-done-node1").exists(),
            10,
        )
        self.start_keepalived(self.n2, master=False)
        time.sleep(0.5)  # node2 hears node1's adverts and stays BACKUP
        if vip_on(self.n2):
            raise RoundFailed("node2's keepalived took the VIP while node1 was master")

    def keepalived(self, old: Node, new: Node) -> float:
        t = time.monotonic()
        subprocess.run(["sh", "-c", force_delete(old)], check=True, timeout=10)
        drbd(old, "secondary", RES)
        os.kill(self.ka_pids[old.name], signal.SIGTERM)
        done = self.work / f"ka-done-{new.name}"
        wait_for("node2's notify_master ran", done.exists, 10, period=0.002)
        return float(done.read_text()) - (time.time() - (time.monotonic() - t))

    # iscsi-ha

    def iscsi_ha_failover(self, old: Node, new: Node) -> float:
        t = time.monotonic()
        self.lab.set_pool_master(new)
        wait_for("the new master binds the VIP", lambda: vip_on(new), 20, period=0.002)
        return time.monotonic() - t

    def iscsi_ha_switchover(self, old: Node, new: Node) -> float:
        self.switchovers += 1
        issuer = old if self.switchovers % 2 else new
        t = time.monotonic()
        res = cfg(issuer, "switchover", "--json")
        elapsed = time.monotonic() - t
        try:
            report = json.loads(res.out)
        except ValueError:
            report = {}
        if res.rc or not report.get("ok"):
            raise RoundFailed(f"iscsi-cfg switchover on {issuer.name}: {res.text[-400:]}")
        self.phases.append(dict(report.get("phases") or {}))
        return elapsed

    def iscsi_ha_planned(self, old: Node, new: Node) -> float:
        t = time.monotonic()
        sec = cfg(old, "become-secondary")
        pri = cfg(new, "become-primary")
        if sec.rc or pri.rc:
            raise RoundFailed(f"iscsi-cfg: {sec.text} / {pri.text}")
        return time.monotonic() - t

    # ---- the run

    def run(self, only: Sequence[str], say: Callable[[str], None]) -> Dict[str, dict]:
        results: Dict[str, dict] = {}
        anchors = [m for m in ANCHORS if m in only]
        for node in self.lab.nodes:
            node.drbdadm("up", RES)
        wait_for("DRBD connected", lambda: "Connected" in self.n1.drbdadm("cstate", RES).stdout, 20)
        for name in anchors:
            results[name] = self.rounds_of(name, say)
            self.stop_keepalived()
        if any(m.startswith("iscsi-ha") for m in only):
            self.place(self.n1)
            for node in self.lab.nodes:  # the controllers start their own tgtd
                self.stop_tgtd(node)
            self.lab.set_pool_master(self.n1)
            start_cluster(self.lab, configs=peer_configs(self.lab))
            wait_for("node1 holds the storage", converged_on(self.lab, self.n1), 60)
            if "iscsi-ha-failover" in only:
                results["iscsi-ha-failover"] = self.rounds_of("iscsi-ha-failover", say)
            if "iscsi-ha-planned" in only:
                holder = self.n1 if vip_on(self.n1) else self.n2
                self.lab.set_pool_master(holder)
                wait_for("quiet", converged_on(self.lab, holder), 30)
                for node in self.lab.nodes:
                    res = cfg(node, "manual-mode-enable")
                    if res.rc:
                        raise RoundFailed(f"manual-mode-enable on {node.name}: {res.text}")
                results["iscsi-ha-planned"] = self.rounds_of("iscsi-ha-planned", say)
            if "iscsi-ha-switchover" in only:
                results["iscsi-ha-switchover"] = self.rounds_of("iscsi-ha-switchover", say)
                results["iscsi-ha-switchover"]["phases"] = self.phases
        return results

    def rounds_of(self, name: str, say: Callable[[str], None]) -> dict:
        move = {
            "bare": self.bare,
            "original": self.original,
            "pacemaker-agents": self.ocf,
            "keepalived-vrrp3": self.keepalived,
            "iscsi-ha-failover": self.iscsi_ha_failover,
            "iscsi-ha-planned": self.iscsi_ha_planned,
            "iscsi-ha-switchover": self.iscsi_ha_switchover,
        }[name]
        rows: List[Dict[str, float]] = []
        errors: List[str] = []
        for i in range(self.rounds):
            if name == "keepalived-vrrp3":
                old, new = self.n1, self.n2
            else:
                holder = self.n1 if vip_on(self.n1) else self.n2
                old, new = holder, (self.n2 if holder is self.n1 else self.n1)
            try:
                if name == "keepalived-vrrp3":
                    self.keepalived_prepare()
                elif not name.startswith("iscsi-ha"):
                    self.place(old)
                else:
                    wait_for(
                        "the controllers are quiet", lambda o=old: converged_on(self.lab, o)(), 30
                    )
                row = self.measure(name, i, old, new, move)
                rows.append(row)
                say(
                    f"  {name} round {i + 1} {old.name}->{new.name}: "
                    + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in row.items())
                )
            except Exception as exc:  # a failed round is reported, not hidden
                errors.append(f"round {i + 1}: {exc}")
                say(f"  {name} round {i + 1} FAILED: {exc}")
                self.reap_background()
        return {"rows": rows, "errors": errors}


def force_delete(node: Node) -> str:
    """Shell: delete the target; tgtd refuses ``--force`` for a moment while I/O is in flight
    ("this logical unit is still active"), so retry every 10 ms for up to 2 s, as the product
    does."""
    return (
        f"i=0; until tgtadm -C {node.tgt_port} --lld iscsi --mode target --op delete "
        f"--force --tid 1 2>/dev/null; do i=$((i+1)); [ $i -lt 200 ] || exit 8; "
        f"sleep 0.01; done"
    )


def stop_pid(pid: int, wait: float) -> None:
    """A process we did not start as a child (a script's background job): wait up to ``wait``
    for it to end, then SIGKILL (tgtd ignores SIGTERM; arping ends by itself)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if _comm(pid) in ("", "zombie"):
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def serving_daemon(node: Node) -> bool:
    return (
        subprocess.run(
            ["tgtadm", "-C", str(node.tgt_port), "--mode", "sys", "--op", "show"],
            capture_output=True,
            timeout=5,
        ).returncode
        == 0
    )


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def sim_call_cost(lab: Lab, n: int = 15) -> Tuple[float, float]:
    """Median seconds of one simulator ``drbdadm role`` and of a bare ``python -S -c pass``."""
    sim, bare = [], []
    for _ in range(n):
        t = time.monotonic()
        lab.node1.drbdadm("role", RES)
        sim.append(time.monotonic() - t)
        t = time.monotonic()
        subprocess.run([sys.executable, "-S", "-c", "pass"], check=True)
        bare.append(time.monotonic() - t)
    return statistics.median(sim), statistics.median(bare)


def table(results: Dict[str, dict]) -> str:
    best = None
    for name in ANCHORS:
        rows = results.get(name, {}).get("rows")
        if rows:
            med = statistics.median(r["outage"] for r in rows)
            best = med if best is None else min(best, med)
    lines = [
        "| method | outage ms | VIP absent ms | server ms | ratio to best anchor | runs |",
        "|---|---|---|---|---|---|",
    ]
    for name in METHODS:
        if name not in results:
            continue
        rows, errors = results[name]["rows"], results[name]["errors"]
        outs = [r["outage"] for r in rows]
        ratio = f"{statistics.median(outs) / best:.2f}" if outs and best else "-"
        runs = f"{len(rows)}" + (f" (+{len(errors)} failed)" if errors else "")
        lines.append(
            f"| {name} | {median_range(outs)} | "
            f"{median_range([r['vip_absent'] for r in rows])} | "
            f"{median_range([r['server'] for r in rows])} | {ratio} | {runs} |"
        )
    phases = results.get("iscsi-ha-switchover", {}).get("phases")
    if phases:
        names = [
            p
            for p in ("release", "react", "promote", "serve", "vip", "total")
            if any(p in row for row in phases)
        ]
        lines.append("")
        lines.append(
            "iscsi-cfg switchover's own phases, ms: "
            + ", ".join(
                f"{p} {median_range([row[p] for row in phases if p in row])}" for p in names
            )
        )
    fo = results.get("iscsi-ha-failover", {}).get("rows")
    if fo:
        vals = [r["poolconf_to_vip"] for r in fo]
        lines.append("")
        lines.append(
            f"pool.conf change -> VIP bound on the new master: {median_range(vals)} ms "
            f"(every run: {', '.join(f'{v * 1000:.0f}' for v in vals)})"
        )
    return "\n".join(lines)


def preflight() -> List[str]:
    missing = [
        t
        for t in ("tgtd", "tgtadm", "tgt-admin", "iscsi-inq", "arping", "keepalived")
        if not shutil.which(t)
    ]
    if not (OCF_ROOT / "resource.d" / "heartbeat" / "IPaddr2").exists():
        missing.append("resource-agents")
    return missing


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what each method does.",
    )
    p.add_argument("--rounds", type=int, default=7, help="runs per method (default 7)")
    p.add_argument(
        "--only",
        default=",".join(METHODS),
        help="comma-separated methods (default all): " + ", ".join(METHODS),
    )
    p.add_argument("--json", help="also write the raw rows to this file")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the lab's directory (logs, probe records) after the run",
    )
    args = p.parse_args(argv)
    only = [m for m in args.only.split(",") if m]
    unknown = [m for m in only if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if os.geteuid() != 0:
        print("bench_switch: needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = preflight()
    if missing:
        print(f"bench_switch: missing {', '.join(missing)} (scripts/setup-env.sh)", file=sys.stderr)
        return 2
    say = lambda text: print(text, flush=True)  # noqa: E731
    t0 = time.monotonic()
    with Lab(tgt_ports=tgt_ports(), resync_seconds=0.5, keep_dir=args.keep) as lab:
        say(f"lab directory: {lab.base}")
        work = lab.base / "bench"
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(lab, args.rounds, work)
        try:
            results = bench.run(only, say)
            sim, bare = sim_call_cost(lab)
        finally:
            bench.stop_keepalived()
            bench.reap_background()
    print()
    print(
        f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"load {os.getloadavg()[0]:.1f}; python {platform.python_version()}; "
        f"{args.rounds} rounds per method; whole run {time.monotonic() - t0:.0f} s"
    )
    print(
        f"DRBD simulator: {sim * 1000:.0f} ms per drbdadm call "
        f"(python -S -c pass: {bare * 1000:.0f} ms on this machine now)"
    )
    print(table(results))
    for name, res in results.items():
        for err in res["errors"]:
            print(f"{name}: {err}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    failed = sum(len(r["errors"]) for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
