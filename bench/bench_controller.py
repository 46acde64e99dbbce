"""The real controller process (`iscsi-ha run`) with 1, 16, 64 and 256 DRBD resources.

    /tmp/venv/bin/python bench/bench_controller.py [--resources 1,16,64,256] [--scrapes 300]

bench_scrape.py measures an exporter serving synthetic snapshots; this one measures the daemon
that ships: config, APScheduler loop, adapters, exporter and control socket, one fresh process per
size, interval 1 s. What it runs against:

* DRBD 8.4, replayed: a /proc/drbd with N minors made from the per-minor lines of a real capture
  (tests/fixtures/drbd84/state-02-synced-n1primary-node2.txt: Secondary/Primary, Connected,
  UpToDate/UpToDate), renumbered with DRBD's own ``%2d:`` layout, resources r0..rN-1; the stand-in
  ``drbdadm`` of tests/test_once.py answers ``sh-minor rK`` with K and role/cstate/dstate with the
  same capture renamed. (sh-minor is asked once per resource and remembered, so only the first
  cycle pays N Python start-ups; the warm-up absorbs it.)
* tgt, real: a tgtd of our own on an unused control port, inside a network namespace created for
  the run (so its 0.0.0.0:3260 listener is not on the host), empty; the controller's real tgtadm
  talks to it over the machine-wide control socket. ``target.tgtd`` is ``false`` as a backstop.
* pool.conf ``slave:10.99.0.1``, every resource Secondary, VIP (never bound) on ``lo``: the steady
  state of the pool's slave host, where decide() plans nothing. The master's steady state differs
  by one ``tgtadm show`` listing N LUNs and a bound VIP; binding one would change this host, so it
  is not measured here.

Per size, after a warm-up of ``--warmup`` cycles: VmRSS of the controller (median and max of
samples every 0.1 s over the run), cycle duration (distinct values of
iscsi_ha_last_cycle_duration_seconds seen during the run, and the histogram's mean), external
commands per cycle (iscsi_ha_commands_total deltas over iscsi_ha_cycles_total deltas) and /metrics
latency: ``--scrapes`` scrapes with bench_scrape's Prometheus headers (OpenMetrics, gzip) on one
keep-alive connection, one every ``--pace`` s so they span ~10 cycles. Each run also checks that
the controller saw N Secondary resources and planned nothing, or the row is marked. Every wait is
bounded; every process started is stopped by its PID; the namespace is deleted in a finally.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_scrape import cpu_model, percentile, scrape_body  # noqa: E402
from drbd_captures import DRBD84, PROC_DRBD, load_capture  # noqa: E402
from test_once import FAKE_DRBDADM  # noqa: E402

CAPTURE = DRBD84 / "state-02-synced-n1primary-node2.txt"  # this host Secondary, peer Primary
TGTD_SOCKETS = Path("/var/run/tgtd")
_LAST_TS = re.compile(rb"^iscsi_ha_last_cycle_timestamp_seconds (\S+)", re.M)
_LAST_DUR = re.compile(rb"^iscsi_ha_last_cycle_duration_seconds (\S+)", re.M)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


# ------------------------------------------------------------------------ small helpers


def wait_until(predicate, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def stop_pid(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM, a bounded wait, then SIGKILL: by this process's own PID only."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def vm_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unused_control_port() -> int:
    # tgtd's control sockets are machine-wide; stale ones from other runs are left alone.
    for _ in range(1000):
        port = random.randint(20000, 32767)
        if not any((TGTD_SOCKETS / f"socket.{port}{s}").exists() for s in ("", ".lock")):
            return port
    raise RuntimeError("no unused tgtd control port found")


def parse_text(body: str) -> dict[str, float]:
    """``{"name{labels}": value}`` from a Prometheus/OpenMetrics text body (comments skipped)."""
    out = {}
    for line in body.splitlines():
        m = _SAMPLE.match(line)
        if m:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def family(samples: dict[str, float], name: str) -> dict[str, float]:
    return {k: v for k, v in samples.items() if k == name or k.startswith(name + "{")}


def scrape_text(conn: http.client.HTTPConnection) -> tuple[float, bytes]:
    """A scrape's seconds and its decompressed text (bench_scrape's scrape, body kept)."""
    elapsed, body, gzipped = scrape_body(conn)
    return elapsed, gzip.decompress(body) if gzipped else body


# ------------------------------------------------------------------------ the world


def proc_drbd(n: int) -> str:
    """N minors in DRBD 8.4's /proc/drbd layout, from the captured minor 0."""
    text = load_capture(CAPTURE)[PROC_DRBD][1]
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if re.match(r"^\s*0: cs:", line))
    header, minor = lines[:first], lines[first:]
    out = list(header)
    for k in range(n):
        out.append(re.sub(r"^\s*0:", f"{k:2d}:", minor[0]))  # drbd 8.4 prints "%2d: cs:..."
        out.extend(minor[1:])
    return "\n".join(out) + "\n"


def drbdadm_table(n: int) -> dict:
    table = {}
    for k in range(n):
        capture = load_capture(CAPTURE, rename={"r0": f"r{k}"})
        table.update({c: list(a) for c, a in capture.items() if c.startswith("drbdadm")})
        table[f"drbdadm sh-minor r{k}"] = [0, f"{k}\n", ""]
    return table


def write_world(root: Path, n: int, http_port: int, ctl_port: int) -> Path:
    (root / "proc_drbd").write_text(proc_drbd(n))
    (root / "pool.conf").write_text("slave:10.99.0.1")
    (root / "table.json").write_text(json.dumps(drbdadm_table(n)))
    bindir = root / "bin"
    bindir.mkdir()
    (bindir / "drbdadm").write_text(FAKE_DRBDADM.format(python=sys.executable))
    (bindir / "drbdadm").chmod(0o755)
    resources = ", ".join(f"r{k}" for k in range(n))
    vip_net = 10 + os.getpid() % 200  # unique-ish per run; never bound on a slave anyway
    config = root / "iscsi-ha.yaml"
    config.write_text(f"""\
resources: [{resources}]
interval: 1
command_timeout: 5
drbd: {{version: "8.4", proc_drbd: {root / "proc_drbd"}, kernel_log: [cat, /dev/null]}}
pool: {{conf: {root / "pool.conf"}}}
xenapi: {{enabled: false}}
target: {{control_port: {ctl_port}, tgtadm: {shutil.which("tgtadm") or "tgtadm"}, tgtd: "false"}}
vip: {{address: 10.99.{vip_net}.3/24, interface: lo}}
exporter: {{enabled: true, listen: "127.0.0.1:{http_port}"}}
logging: {{syslog: false}}
paths:
  state_dir: {root / "state"}
  status_file: {root / "state" / "status"}
  control_socket: {root / "control.sock"}
""")
    return config


class Tgtd:
    """An empty real tgtd on its own control port, in a namespace made for this run."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.netns = f"ihbench-{os.getpid()}-{port}"
        self.proc: subprocess.Popen | None = None

    def adm(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["tgtadm", "-C", str(self.port), *args], capture_output=True, text=True, timeout=10
        )

    def __enter__(self) -> "Tgtd":
        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=10)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "tgtd", "-f", "-C", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: self.adm("--lld", "iscsi", "--mode", "target", "--op", "show").returncode == 0,
            5,
            f"tgtd on control port {self.port}",
        )
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                # tgtd ignores SIGTERM; this is its own way out (it exits ~0.1 s later).
                self.adm("--mode", "system", "--op", "delete")
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            subprocess.run(["ip", "netns", "del", self.netns], timeout=10)
            # tgtd leaves its socket files behind; the port was unused before, so they are ours.
            if self.proc is not None and self.proc.poll() is not None:
                for suffix in ("", ".lock"):
                    (TGTD_SOCKETS / f"socket.{self.port}{suffix}").unlink(missing_ok=True)


# ------------------------------------------------------------------------ one size


def measure(n: int, args) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"ihbench-{n}-"))
    http_port, ctl_port = free_tcp_port(), unused_control_port()
    config = write_world(root, n, http_port, ctl_port)
    exe = os.path.join(os.path.dirname(sys.executable), "iscsi-ha")
    bindir = root / "bin"
    env = dict(
        os.environ,
        PATH=f"{bindir}:{os.environ['PATH']}",
        FAKE_DRBDADM_TABLE=str(root / "table.json"),
    )
    log_path = root / "daemon.log"
    try:
        with Tgtd(ctl_port), open(log_path, "w") as log:
            proc = subprocess.Popen(
                [exe, "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
            )
            try:
                return run_against(proc, n, http_port, args)
            except Exception as exc:
                tail = log_path.read_text()[-2000:]
                raise RuntimeError(f"{n} resources: {exc}\n--- daemon log tail:\n{tail}") from exc
            finally:
                stop_pid(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_against(proc: subprocess.Popen, n: int, port: int, args) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    sizes = []

    def metrics() -> dict[str, float]:
        body = scrape_text(conn)[1]
        sizes.append(len(body))
        return parse_text(body.decode())

    def cycles(s: dict[str, float]) -> float:
        return sum(family(s, "iscsi_ha_cycles_total").values())

    def ready():
        if proc.poll() is not None:
            raise RuntimeError(f"iscsi-ha exited with {proc.returncode}")
        try:
            return cycles(metrics()) >= args.warmup
        except (OSError, http.client.HTTPException):
            conn.close()  # not listening yet, or the connection broke: reconnect next time
            return False

    try:
        wait_until(ready, args.warmup * 2 + 60 + n * 0.2, f"{args.warmup} warm-up cycles", 0.2)
        before = metrics()
        rss, latencies, durations = [], [], {}
        t_start = time.monotonic()
        next_rss = 0.0
        for _ in range(args.scrapes):
            elapsed, body = scrape_text(conn)
            latencies.append(elapsed)
            # Two lines only: parsing the whole body here would take the CPU the daemon needs.
            ts, dur = _LAST_TS.search(body), _LAST_DUR.search(body)
            if ts and dur:
                durations[float(ts.group(1))] = float(dur.group(1))
            if time.monotonic() >= next_rss:
                rss.append(vm_rss_kib(proc.pid))
                next_rss = time.monotonic() + 0.1
            time.sleep(args.pace)
        # At least --cycles cycles in the window, bounded.
        deadline = time.monotonic() + args.cycles * 3 + 10
        while cycles(metrics()) - cycles(before) < args.cycles and time.monotonic() < deadline:
            rss.append(vm_rss_kib(proc.pid))
            time.sleep(0.1)
        after = metrics()
        window = time.monotonic() - t_start
    finally:
        conn.close()
    if proc.poll() is not None:
        raise RuntimeError(f"iscsi-ha exited with {proc.returncode} during the run")
    rss = [r for r in rss if r is not None]

    d_cycles = cycles(after) - cycles(before)
    cmds = {k: after[k] - before.get(k, 0.0) for k in family(after, "iscsi_ha_commands_total")}
    per_cmd = {
        re.search(r'command="([^"]*)"', k).group(1): v / d_cycles for k, v in cmds.items() if v
    }
    h_sum = (
        after["iscsi_ha_cycle_duration_seconds_sum"] - before["iscsi_ha_cycle_duration_seconds_sum"]
    )
    h_count = (
        after["iscsi_ha_cycle_duration_seconds_count"]
        - before["iscsi_ha_cycle_duration_seconds_count"]
    )
    by_result = {
        re.search(r'result="([^"]*)"', k).group(1): after[k] - before.get(k, 0.0)
        for k in family(after, "iscsi_ha_cycles_total")
    }
    seen = list(durations.values())

    # The world must be what we claim: N resources, all Secondary, nothing planned, readable.
    problems = []
    secondary = sum(
        v for k, v in family(after, "iscsi_ha_drbd_role").items() if 'role="Secondary"' in k
    )
    if secondary != n:
        problems.append(f"{secondary:g} of {n} resources Secondary")
    if after.get("iscsi_ha_planned_actions") != 0:
        problems.append(f"planned_actions={after.get('iscsi_ha_planned_actions')}")
    if after.get("iscsi_ha_target_daemon_up") != 1:
        problems.append("tgtd not seen running")
    errors = [k for k, v in family(after, "iscsi_ha_observation_error").items() if v]
    errors += [k for k, v in family(after, "iscsi_ha_drbd_resource_error").items() if v]
    if errors:
        problems.append("errors: " + ", ".join(errors[:3]))
    ms = 1000.0
    return {
        "resources": n,
        "series": len(after),
        "text_kib": sizes[-1] / 1024,
        "rss_median": statistics.median(rss) / 1024,
        "rss_max": max(rss) / 1024,
        "cycles": d_cycles,
        "window": window,
        "results": {k: v for k, v in by_result.items() if v},
        "cycle_median": statistics.median(seen) * ms if seen else float("nan"),
        "cycle_max": max(seen) * ms if seen else float("nan"),
        "cycle_mean": h_sum / h_count * ms if h_count else float("nan"),
        "cmds_per_cycle": sum(per_cmd.values()),
        "per_cmd": per_cmd,
        "scrape_median": statistics.median(latencies) * ms,
        "scrape_p99": percentile(latencies, 0.99) * ms,
        "scrape_max": max(latencies) * ms,
        "problems": problems,
    }


# ------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", default="1,16,64,256")
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--pace", type=float, default=0.03, help="seconds between scrapes")
    parser.add_argument("--warmup", type=int, default=5, help="cycles before measuring")
    parser.add_argument("--cycles", type=int, default=10, help="at least this many measured")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (ip netns, tgtd)", file=sys.stderr)
        return 2

    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    rows = [measure(int(n), args) for n in args.resources.split(",")]
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]

    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}; "
        f"load average before {' '.join(load_before)}, after {' '.join(load_after)}"
    )
    print(
        f"`iscsi-ha run`, interval 1 s, slave steady state (all Secondary, empty real tgtd, "
        f"VIP not bound), after {args.warmup} warm-up cycles; {args.scrapes} scrapes of "
        f"/metrics (OpenMetrics + gzip, keep-alive, one every {args.pace:g} s) on 127.0.0.1"
    )
    head = (
        "| resources | series | text KiB | RSS median MiB | RSS max MiB | cycles measured "
        "| cycle median ms | cycle max ms | cycle mean ms (histogram) | commands / cycle "
        "| scrape median ms | scrape p99 ms | scrape max ms |"
    )
    print(head)
    print("|" + "|".join("---:" for _ in range(head.count("|") - 1)) + "|")
    for r in rows:
        print(
            f"| {r['resources']} | {r['series']} | {r['text_kib']:.0f} "
            f"| {r['rss_median']:.1f} | {r['rss_max']:.1f} "
            f"| {r['cycles']:.0f} in {r['window']:.1f} s | {r['cycle_median']:.1f} "
            f"| {r['cycle_max']:.1f} | {r['cycle_mean']:.1f} | {r['cmds_per_cycle']:.2f} "
            f"| {r['scrape_median']:.2f} | {r['scrape_p99']:.2f} | {r['scrape_max']:.2f} |"
        )
    for r in rows:
        cmds = ", ".join(f"{c} {v:.2f}" for c, v in sorted(r["per_cmd"].items()))
        results = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["results"].items()))
        check = "; ".join(r["problems"]) or "checked: N Secondary, nothing planned, no errors"
        print(
            f"{r['resources']:>4} resources: commands per cycle: {cmds}; cycles: {results}; {check}"
        )
    return 1 if any(r["problems"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
