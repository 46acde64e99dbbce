"""What one reading of a node costs the chaos runner's invariant checker, old way and new way.

    .venv/bin/python bench/bench_chaos_probe.py [--runs 3] [--readings 300]

In a fresh namespace lab (root), node1 DRBD Primary with tgtd serving the LUN and the VIP bound
(what the checker reads most of the time), each run times ``--readings`` readings of node1:

* tools: ``lab.demo.node_state`` -- ``ip -n NS addr`` and ``tgtadm --op show`` as processes, the
  simulator's state file (what the checker did before);
* cheap: ``lab.chaos_probe.FastProbe.state`` -- rtnetlink on a socket inside the namespace,
  tgtd's management socket, the same state file;
* and the parts of the cheap one alone.

A sample of the checker is three readings (A, B, A). Prints the median and the range of the runs'
medians and p90s, the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def timed(fn, n):
    xs = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    xs.sort()
    return statistics.median(xs), xs[int(0.9 * (n - 1))]


def one_run(readings):
    from test_lab_topology import serve

    from lab.chaos_probe import FastProbe, tgt_show
    from lab.demo import drbd_roles, node_state, tgt_ports
    from lab.netlab import Lab

    with Lab(tgt_ports=tgt_ports()) as lab:
        for node in lab.nodes:
            node.drbdadm("up", "iscsi1")
        lab.node1.drbdadm("primary", "iscsi1")
        serve(lab, lab.node1, lab.disk_path("iscsi1", lab.node1))
        probe = FastProbe(lab)
        try:
            n1 = lab.node1
            assert probe.state(n1) == node_state(lab, n1) and probe.state(n1).holds
            return {
                "tools": timed(lambda: node_state(lab, n1), max(20, readings // 10)),
                "cheap": timed(lambda: probe.state(n1), readings),
                "cheap: VIP (rtnetlink)": timed(lambda: probe.vip_count(n1), readings),
                "cheap: target (tgtd socket)": timed(lambda: tgt_show(n1.tgt_port), readings),
                "DRBD (state file)": timed(lambda: drbd_roles(lab), readings),
            }
        finally:
            probe.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--readings", type=int, default=300)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    runs = [one_run(args.readings) for _ in range(args.runs)]
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"{args.runs} runs x {args.readings} readings of node1"
    )
    out = {}
    for key in runs[0]:
        meds = [1000 * r[key][0] for r in runs]
        p90s = [1000 * r[key][1] for r in runs]
        out[key] = {
            "median_ms": round(statistics.median(meds), 3),
            "median_range_ms": [round(min(meds), 3), round(max(meds), 3)],
            "p90_ms": round(statistics.median(p90s), 3),
        }
        print(
            f"{key:30s} median {statistics.median(meds):7.2f} ms "
            f"({min(meds):.2f}-{max(meds):.2f}), p90 {statistics.median(p90s):7.2f} ms"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
