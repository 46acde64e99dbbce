"""Scrape latency and memory of the exporter with 1, 16, 64 and 256 DRBD resources.

    /tmp/venv/bin/python bench/bench_scrape.py [--scrapes 500] [--resources 1,16,64,256]

Each size runs in a fresh Python process (so its RSS is that size's alone, and the measuring
client does not share its GIL) that publishes a realistic master snapshot (tests/snapshots.py)
and serves it with ``start_exporter`` on 127.0.0.1; this process scrapes it over HTTP with the
headers Prometheus sends (OpenMetrics, gzip) on one keep-alive connection, as Prometheus does.
Three figures per size:

* steady: back-to-back scrapes of an unchanged snapshot (between two cycles);
* with cycles: a scrape every ``--pace`` seconds (default 0.02) while a "cycle" thread
  builds and publishes a new snapshot every ``--cycle`` seconds (default 1.0, 5x the product's
  default rate), so the rendering after each cycle and the cycle's own work compete with the
  scrapes for the GIL, as they do in the controller process;
* first scrape after a cycle: the cost when the scrape itself has to render (the warm-up
  thread had no time to), the worst case.

Target (issue 3): p99 under 5 ms at 64 resources. All traffic stays on loopback; every loop is
bounded by a count.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def scrape_body(conn: http.client.HTTPConnection) -> tuple[float, bytes, bool]:
    """One scrape as Prometheus does it: (seconds, the body as sent, whether it is gzipped)."""
    t0 = time.perf_counter()
    conn.request("GET", "/metrics", headers=PROMETHEUS_HEADERS)
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.perf_counter() - t0
    if resp.status != 200:
        raise RuntimeError(f"scrape answered {resp.status}: {body[:200]!r}")
    return elapsed, body, resp.getheader("Content-Encoding") == "gzip"


def scrape(conn: http.client.HTTPConnection) -> tuple[float, int]:
    elapsed, body, _gzipped = scrape_body(conn)
    return elapsed, len(body)


def serve(resources: int, cycle: float) -> None:
    """The exporter's process: serve, and obey one-word commands on stdin (bounded by EOF)."""
    import snapshots
    from iscsi_ha.exporter.collector import LatestSnapshot, SnapshotCollector
    from iscsi_ha.exporter.server import start_exporter
    from prometheus_client import CollectorRegistry, generate_latest

    box = LatestSnapshot(snapshots.master(resources))
    registry = CollectorRegistry()
    SnapshotCollector(box, registry)
    text = generate_latest(registry)
    series = sum(1 for line in text.splitlines() if not line.startswith(b"#"))
    handle = start_exporter("127.0.0.1:0", registry, box)
    stop = threading.Event()

    def cycles() -> None:
        while not stop.wait(cycle):
            box.publish(snapshots.master(resources))

    def say(**kw) -> None:
        print(json.dumps(kw), flush=True)

    say(port=handle.port, series=series, text_kib=len(text) / 1024)
    worker = None
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "cycles-on":
                worker = threading.Thread(target=cycles, daemon=True)
                worker.start()
            elif cmd == "cycles-off":
                stop.set()
                if worker:
                    worker.join(10)
            elif cmd == "publish":
                box.publish(snapshots.master(resources))
            elif cmd == "rss":
                say(rss_mib=rss_mib())
                continue
            elif cmd == "quit":
                break
            say(ok=cmd)
    finally:
        stop.set()
        handle.stop()


def measure(resources: int, scrapes: int, pace: float, cycle: float) -> dict:
    """Drive one exporter process from this one, so the client does not share its GIL."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(resources), "--cycle", str(cycle)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def ask(cmd: str) -> dict:
        child.stdin.write(cmd + "\n")
        child.stdin.flush()
        return json.loads(child.stdout.readline())

    try:
        info = json.loads(child.stdout.readline())
        conn = http.client.HTTPConnection("127.0.0.1", info["port"], timeout=30)
        try:
            _, gz_bytes = scrape(conn)  # first render
            steady = [scrape(conn)[0] for _ in range(scrapes)]
            ask("cycles-on")
            busy = []
            for _ in range(scrapes):
                busy.append(scrape(conn)[0])
                time.sleep(pace)
            ask("cycles-off")
            cold = []
            for _ in range(5):
                ask("publish")
                cold.append(scrape(conn)[0])  # before the 0.1 s warm-up poll: renders itself
                time.sleep(0.3)
            rss = ask("rss")["rss_mib"]
        finally:
            conn.close()
        child.stdin.write("quit\n")
        child.stdin.close()
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    ms = 1000.0
    return {
        "resources": resources,
        "series": info["series"],
        "text_kib": info["text_kib"],
        "gzip_kib": gz_bytes / 1024,
        "steady_median": statistics.median(steady) * ms,
        "steady_p99": percentile(steady, 0.99) * ms,
        "busy_median": statistics.median(busy) * ms,
        "busy_p99": percentile(busy, 0.99) * ms,
        "cold_median": statistics.median(cold) * ms,
        "rss_mib": rss,
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=500)
    parser.add_argument("--resources", default="1,16,64,256")
    parser.add_argument("--pace", type=float, default=0.02, help="seconds between scrapes")
    parser.add_argument("--cycle", type=float, default=1.0, help="seconds between snapshots")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.cycle)
        return 0

    rows = [measure(int(n), args.scrapes, args.pace, args.cycle) for n in args.resources.split(",")]

    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"{args.scrapes} scrapes per figure over HTTP on 127.0.0.1, OpenMetrics + gzip; "
        f"with cycles: a scrape every {args.pace:g} s, a new snapshot every {args.cycle:g} s"
    )
    head = (
        "| resources | series | text KiB | gzip KiB | steady median ms | steady p99 ms "
        "| with cycles median ms | with cycles p99 ms | first after cycle ms | RSS MiB |"
    )
    print(head)
    print("|" + "|".join("---:" for _ in range(head.count("|") - 1)) + "|")
    for r in rows:
        print(
            f"| {r['resources']} | {r['series']} | {r['text_kib']:.0f} | {r['gzip_kib']:.1f} "
            f"| {r['steady_median']:.2f} | {r['steady_p99']:.2f} | {r['busy_median']:.2f} "
            f"| {r['busy_p99']:.2f} | {r['cold_median']:.1f} | {r['rss_mib']:.1f} |"
        )
    target = [r for r in rows if r["resources"] == 64]
    if target:
        r = target[0]
        verdict = "met" if max(r["steady_p99"], r["busy_p99"]) < 5.0 else "NOT met"
        print(
            f"target p99 < 5 ms at 64 resources: {verdict} "
            f"(steady {r['steady_p99']:.2f} ms, with cycles {r['busy_p99']:.2f} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
