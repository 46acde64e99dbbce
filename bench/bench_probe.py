"""How long the storage probe takes, and what it costs, against a real tgtd.

    .venv/bin/python bench/bench_probe.py [--runs 200] [--luns 1,4] [--repeats 5]

A throwaway namespace pair (``tests/netns.py``): ``node1`` runs tgtd (tgt 1.0.85) with N LUNs on
sparse files, ``client`` runs the probe (``controller/systems/iscsi_probe.run_probe``): connect,
login, INQUIRY + READ CAPACITY + READ(10) of block 0 per LUN, logout. For each LUN count, several
repeats of ``--runs`` back-to-back probes; per repeat the median and p99 of one probe's duration,
then the median and range over the repeats. Also the CPU time one probe costs the controller's
process (user + system, from ``os.times()``). Needs root (namespaces) and tgt.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from iscsi_ha.controller.systems.iscsi_probe import run_probe  # noqa: E402
from netns import NetnsLab  # noqa: E402

from lab.prometheus import in_netns  # noqa: E402

IQN = "iqn.2024-01.org.iscsi-ha:bench-probe"


def tgtadm(lab: NetnsLab, port: str, *args: str) -> None:
    res = lab.run("node1", ["tgtadm", "-C", port, "--lld", "iscsi", *args], check=False)
    if res.returncode != 0:
        raise SystemExit(f"tgtadm {' '.join(args)}: {res.stderr}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--luns", default="1,4")
    args = p.parse_args()
    counts = [int(n) for n in args.luns.split(",")]
    port = str(20000 + os.getpid() % 10000)
    with (
        tempfile.TemporaryDirectory() as tmp,
        NetnsLab({"node1": "10.96.0.1/24", "client": "10.96.0.10/24"}) as lab,
    ):
        proc = subprocess.Popen(
            lab.argv("node1", ["tgtd", "-f", "-C", port]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            tgtadm(lab, port, "--mode", "target", "--op", "new", "--tid", "1", "--targetname", IQN)
            for lun in range(1, max(counts) + 1):
                disk = Path(tmp) / f"lun{lun}.img"
                with open(disk, "wb") as f:
                    f.truncate(64 << 20)
                tgtadm(
                    lab,
                    port,
                    "--mode",
                    "logicalunit",
                    "--op",
                    "new",
                    "--tid",
                    "1",
                    "--lun",
                    str(lun),
                    "--backing-store",
                    str(disk),
                )
            tgtadm(
                lab,
                port,
                "--mode",
                "target",
                "--op",
                "bind",
                "--tid",
                "1",
                "--initiator-address",
                "ALL",
            )
            print(
                f"machine: {platform.node()} {os.cpu_count()} CPUs, load "
                f"{os.getloadavg()[0]:.1f}; python {platform.python_version()}"
            )
            for n in counts:
                luns = list(range(1, n + 1))

                def repeat(luns=luns):
                    times, failed = [], 0
                    c0 = os.times()
                    for _ in range(args.runs):
                        r = run_probe("10.96.0.1", IQN, luns, timeout=2.0)
                        failed += not r.ok
                        times.append(r.seconds * 1000)
                    c1 = os.times()
                    cpu = (c1.user - c0.user + c1.system - c0.system) / args.runs * 1000
                    times.sort()
                    return (
                        statistics.median(times),
                        times[int(0.99 * (len(times) - 1))],
                        cpu,
                        failed,
                    )

                rows = [
                    in_netns(lab.ns["client"], repeat, timeout=600) for _ in range(args.repeats)
                ]
                med = [r[0] for r in rows]
                p99 = [r[1] for r in rows]
                cpu = [r[2] for r in rows]
                print(
                    f"{n} LUN(s), {args.repeats} x {args.runs} probes: median "
                    f"{statistics.median(med):.2f} ms (range {min(med):.2f}-{max(med):.2f}), "
                    f"p99 {statistics.median(p99):.2f} ms ({min(p99):.2f}-{max(p99):.2f}), "
                    f"CPU {statistics.median(cpu):.2f} ms per probe, "
                    f"failures {sum(r[3] for r in rows)}"
                )
        finally:
            subprocess.run(
                [
                    "tgtadm",
                    "-C",
                    port,
                    "--lld",
                    "iscsi",
                    "--mode",
                    "target",
                    "--op",
                    "delete",
                    "--force",
                    "--tid",
                    "1",
                ],
                capture_output=True,
            )
            subprocess.run(
                ["tgtadm", "-C", port, "--lld", "iscsi", "--mode", "system", "--op", "delete"],
                capture_output=True,
            )
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3)
            for suffix in ("", ".lock"):
                Path(f"/var/run/tgtd/socket.{port}{suffix}").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
