"""Target configure/remove times for both backends, and what the safe write setting costs.

    python bench/bench_target.py tgt [--runs 7] [--mib 32]
    flock <vmlab lock> python bench/bench_target.py lio [--runs 7] [--mib 8]

* ``tgt``, on this machine: a tgtd of our own on an unused control port inside a network
  namespace made for the run, a 256 MiB file as the LUN in ``--dir`` (default /var/tmp: a real
  disk, so O_SYNC costs what it costs there; on tmpfs it would cost nothing).
  ``Target.serve()`` on the warm empty daemon and ``stop_serving()``, ``--runs`` times each;
  then write throughput from a libiscsi client in the same namespace (``lab/iscsi_block.py
  stream``: one session, 256 KiB WRITEs) with the LUN as iscsi-ha serves it
  (``--bsoflags sync``, O_SYNC) and without (tgt's default: the page cache acknowledges).
* ``lio``, in the VM lab (Linux 6.1 under QEMU/TCG; LIO exists nowhere else here): one VM booted,
  ``LioTarget.serve()`` / ``stop_serving()`` on its virtio disk timed inside the VM, ``--runs``
  times; then write throughput from the lab's client namespace to the VM's LAN address. iblock
  has no "without" setting: it refuses ``emulate_write_cache=1`` (EINVAL, measured) and writes
  straight to the block device, so only the safe figure exists.

Prints median and range per figure, and the machine. Every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BLOCK_TOOL = REPO / "lab" / "iscsi_block.py"
IQN = "iqn.2024-01.org.iscsi-ha:bench"


def fmt(values, unit: str, scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):.1f} {unit} (range {min(v):.1f}-{max(v):.1f}, {len(v)} runs)"


def machine() -> str:
    return (
        f"{platform.node()}: {os.cpu_count()} cores, {platform.release()}, "
        f"load {os.getloadavg()[0]:.1f}"
    )


def bench_tgt(args) -> None:
    from iscsi_ha.controller.systems.runner import ProcessRunner
    from iscsi_ha.controller.systems.tgt import Target

    ns = f"ihbench{os.getpid()}"
    port = 20000 + random.randrange(12000)
    lun = Path(args.dir) / f"iscsi-ha-bench-{os.getpid()}.img"
    with open(lun, "wb") as f:
        f.truncate(256 << 20)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    tgtd = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        tgtd = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tgtd", "-f", "-C", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t = Target(
            ProcessRunner(default_timeout=10), control_port=port, iqn=IQN, luns=((1, str(lun)),)
        )
        for _ in range(100):
            if t.observe().daemon_running:
                break
            time.sleep(0.05)
        serve, remove = [], []
        for _ in range(args.runs):
            t0 = time.monotonic()
            assert t.serve().ok
            serve.append(time.monotonic() - t0)
            t0 = time.monotonic()
            assert t.stop_serving().ok
            remove.append(time.monotonic() - t0)
        print(
            f"tgt configure (serve: target, LUN + identity, binding, DefaultTime2Wait): "
            f"{fmt(serve, 'ms', 1000)}"
        )
        print(f"tgt remove (delete --force): {fmt(remove, 'ms', 1000)}")
        adm = ["tgtadm", "-C", str(port), "--lld", "iscsi"]
        for label, flags in (
            ("O_SYNC (iscsi-ha's setting)", ["--bsoflags", "sync"]),
            ("page cache (tgt's default: write cache on)", []),
        ):
            rates = []
            for _ in range(args.runs):
                subprocess.run(
                    adm + ["--mode", "target", "--op", "new", "--tid", "1", "--targetname", IQN],
                    check=True,
                )
                subprocess.run(
                    adm
                    + [
                        "--mode",
                        "logicalunit",
                        "--op",
                        "new",
                        "--tid",
                        "1",
                        "--lun",
                        "1",
                        "--backing-store",
                        str(lun),
                    ]
                    + flags,
                    check=True,
                )
                subprocess.run(
                    adm
                    + [
                        "--mode",
                        "target",
                        "--op",
                        "bind",
                        "--tid",
                        "1",
                        "--initiator-address",
                        "ALL",
                    ],
                    check=True,
                )
                out = subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        "timeout",
                        "120",
                        sys.executable,
                        str(BLOCK_TOOL),
                        "stream",
                        f"iscsi://127.0.0.1/{IQN}/1",
                        "0",
                        f"{args.mib}:256",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=150,
                )
                res = json.loads(out.stdout.strip().splitlines()[-1])
                assert res.get("ok"), res
                rates.append(res["bytes"] / res["seconds"] / (1 << 20))
                assert t.stop_serving().ok
            print(f"tgt write throughput, {label}: {fmt(rates, 'MiB/s')}")
    finally:
        if tgtd is not None:
            subprocess.run(
                ["tgtadm", "-C", str(port), "--mode", "system", "--op", "delete"],
                capture_output=True,
            )
            try:
                tgtd.wait(timeout=3)
            except subprocess.TimeoutExpired:
                tgtd.kill()
                tgtd.wait(timeout=5)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        lun.unlink()


LIO_TIMING = r"""
import json, sys, time
from iscsi_ha.controller.systems.lio import LioTarget
from iscsi_ha.controller.systems.runner import ProcessRunner
t = LioTarget(ProcessRunner(), iqn=sys.argv[1], luns=((1, "/dev/vda"),))
assert t.start_daemon().ok
serve, remove = [], []
for _ in range(int(sys.argv[2])):
    t0 = time.monotonic(); r = t.serve(); serve.append(time.monotonic() - t0); assert r.ok, r
    t0 = time.monotonic(); r = t.stop_serving(); remove.append(time.monotonic() - t0)
    assert r.ok, r
print(json.dumps({"serve": serve, "remove": remove}))
"""


def bench_lio(args) -> None:
    from lab.vm.harness import VmLab

    run = Path(f"/tmp/iscsi-ha-bench-lio-{os.getpid()}")
    lab = VmLab(run)
    try:
        lab.prepare({})
        vm = lab.vm("node1")
        lab.boot([vm])
        res = vm.run([lab.python, "-c", LIO_TIMING, IQN, str(args.runs)], timeout=600)
        assert res.rc == 0, res.err
        times = json.loads(res.out.strip().splitlines()[-1])
        print(
            f"LIO configure (serve: backstore + identity, target, TPG, LUN, portal, policy): "
            f"{fmt(times['serve'], 'ms', 1000)}  [QEMU/TCG]"
        )
        print(f"LIO remove: {fmt(times['remove'], 'ms', 1000)}  [QEMU/TCG]")
        serve = vm.run(
            [
                lab.python,
                "-c",
                "from iscsi_ha.controller.systems.lio import "
                "LioTarget as L; from iscsi_ha.controller.systems.runner import "
                f"ProcessRunner as R; print(L(R(), iqn='{IQN}', luns=((1, '/dev/vda'),))"
                ".serve())",
            ],
            timeout=120,
        )
        assert serve.rc == 0 and "ok=True" in serve.out, serve
        addr = vm.lan_addr.split("/")[0]
        rates = []
        for _ in range(args.runs):
            out = lab.client(
                [
                    "timeout",
                    "300",
                    sys.executable,
                    str(BLOCK_TOOL),
                    "stream",
                    f"iscsi://{addr}/{IQN}/1",
                    "0",
                    f"{args.mib}:256",
                ],
                timeout=320,
            )
            res2 = json.loads(out.stdout.strip().splitlines()[-1])
            assert res2.get("ok"), res2
            rates.append(res2["bytes"] / res2["seconds"] / (1 << 20))
        print(
            f"LIO write throughput, iblock (no write cache; the only setting iblock accepts): "
            f"{fmt(rates, 'MiB/s')}  [QEMU/TCG, virtio disk]"
        )
    finally:
        lab.teardown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("backend", choices=("tgt", "lio"))
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--mib", type=int, default=0, help="MiB written per throughput run")
    p.add_argument("--dir", default="/var/tmp", help="tgt: where the LUN's file goes")
    args = p.parse_args()
    args.mib = args.mib or (32 if args.backend == "tgt" else 8)
    print(machine())
    (bench_tgt if args.backend == "tgt" else bench_lio)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
