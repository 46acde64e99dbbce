"""The real controller under hostile clients of its metrics endpoint (#16).

    .venv/bin/python bench/bench_hostile_http.py [--runs 3] [--seconds 15] [--idle 1000]

One fresh `iscsi-ha run` per run: interval 1 s, basic auth (bcrypt cost 10) on the metrics
endpoint, **file-descriptor limit 256** (the limit under which 257 idle connections used to make
every cycle fail), DRBD 8.4 replayed from a real capture (tests/fixtures/drbd84, the slave's
steady state: Secondary, Connected, UpToDate), tgtd replaced by ``false``, VIP on ``lo`` never
bound. Phases of ``--seconds`` each:

* ``baseline``: nothing but the scraper;
The attacker is another host (its connections come from 127.0.0.2), the scraper 127.0.0.1.

* ``idle``: ``--idle`` TCP connections to the endpoint that send nothing, each re-opened as soon as
  the server closes it (so the attacker keeps ``--idle`` attempts in flight all the time);
* ``wrong-password``: 8 threads sending requests with wrong basic-auth passwords back to back;
* ``both`` at once.

Throughout, a scraper with the right password scrapes every 0.25 s on a fresh connection (the
credentials were checked once before the phases, as Prometheus' would be). Per phase: cycles run
vs. the interval (from the control socket's counters), the longest gap between two cycle ends,
scrapes answered and their latency, the controller's CPU, its open file descriptors (max), and
what the attackers got (closed connections, 401 vs 429). Every process started is stopped by its
PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_scrape import cpu_model, percentile  # noqa: E402
from drbd_captures import DRBD84, PROC_DRBD, load_capture  # noqa: E402
from test_once import FAKE_DRBDADM  # noqa: E402

PASSWORD = "right-password"
ATTACKER = "127.0.0.2"  # the attacking host; the scraper is 127.0.0.1
FD_LIMIT = 256


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth(password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"prom:{password}".encode()).decode()}


class Controller:
    def __init__(self, workdir: Path) -> None:
        import bcrypt

        self.dir = workdir
        capture = load_capture(DRBD84 / "state-02-synced-n1primary-node2.txt")
        table = {c: list(a) for c, a in capture.items() if c.startswith("drbdadm")}
        table["drbdadm sh-minor r0"] = [0, "0\n", ""]
        (workdir / "table.json").write_text(json.dumps(table))
        (workdir / "proc_drbd").write_text(capture[PROC_DRBD][1])
        (workdir / "pool.conf").write_text("slave:10.99.0.1")
        bindir = workdir / "bin"
        bindir.mkdir()
        (bindir / "drbdadm").write_text(FAKE_DRBDADM.format(python=sys.executable))
        (bindir / "drbdadm").chmod(0o755)
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
        (workdir / "web.yml").write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
        self.port = free_port()
        self.sock = str(workdir / "control.sock")
        (workdir / "iscsi-ha.yaml").write_text(f"""\
resources: [r0]
interval: 1
command_timeout: 5
drbd: {{version: "8.4", proc_drbd: {workdir / "proc_drbd"}, kernel_log: [cat, /dev/null]}}
pool: {{conf: {workdir / "pool.conf"}}}
xenapi: {{enabled: false}}
target: {{control_port: 4713, tgtd: "false", tgtadm: "false"}}
vip: {{address: 10.99.79.3/24, interface: lo, probe_interval: 3600}}
exporter: {{listen: "127.0.0.1:{self.port}", web_config_file: {workdir / "web.yml"}}}
logging: {{syslog: false, level: warning}}
paths:
  state_dir: {workdir / "state"}
  status_file: {workdir / "state" / "status"}
  control_socket: {self.sock}
""")
        env = dict(
            os.environ,
            PATH=f"{bindir}:{os.environ['PATH']}",
            FAKE_DRBDADM_TABLE=str(workdir / "table.json"),
        )
        exe = os.path.join(os.path.dirname(sys.executable), "iscsi-ha")
        self.log = open(workdir / "daemon.log", "w")
        self.proc = subprocess.Popen(
            [exe, "run", "--config", str(workdir / "iscsi-ha.yaml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT)),
        )

    def status(self) -> dict:
        from iscsi_ha.controller.cli import ask

        return ask(self.sock, {"cmd": "status"}, timeout=5)

    def cycles(self) -> int:
        return sum(self.status()["counters"]["cycles"].values())

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def get(port: int, headers: dict, timeout: float = 5.0, source: str = "127.0.0.1") -> int:
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(source, 0)
    )
    try:
        conn.request("GET", "/metrics", headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class IdleFlood:
    """Keeps ``n`` silent connections open, re-opening each one the server closes."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.stop_event = threading.Event()
        self.reopened = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _open(self, sel: selectors.BaseSelector) -> None:
        s = socket.socket()
        s.bind((ATTACKER, 0))  # another host on the storage network
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", self.port))
        sel.register(s, selectors.EVENT_READ)

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for _ in range(self.n):
            self._open(sel)
        while not self.stop_event.is_set():
            for key, _ in sel.select(timeout=0.1):
                s = key.fileobj
                try:
                    data = s.recv(4096)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                if not data:  # closed by the server: open another one
                    sel.unregister(s)
                    s.close()  # type: ignore[union-attr]
                    self.reopened += 1
                    if not self.stop_event.is_set():
                        self._open(sel)
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()


class PasswordFlood:
    def __init__(self, port: int, threads: int = 8) -> None:
        self.port = port
        self.stop_event = threading.Event()
        self.codes: dict = {}
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)
        ]

    def run(self, i: int) -> None:
        n = 0
        while not self.stop_event.is_set():
            try:
                code = get(self.port, auth(f"guess-{i}-{n}"), timeout=5, source=ATTACKER)
            except OSError:
                code = "error"
            with self.lock:
                self.codes[code] = self.codes.get(code, 0) + 1
            n += 1


def phase(ctl: Controller, name: str, seconds: float, idle: int) -> dict:
    flood_idle = IdleFlood(ctl.port, idle) if name in ("idle", "both") else None
    flood_pw = PasswordFlood(ctl.port) if name in ("wrong-password", "both") else None
    if flood_idle:
        flood_idle.thread.start()
    if flood_pw:
        for t in flood_pw.threads:
            t.start()
    time.sleep(1.0)  # let the attack settle in
    cycles0, cpu0, t0 = ctl.cycles(), ctl.cpu_seconds(), time.monotonic()
    latencies, failures, fds, ages = [], 0, [], []
    while time.monotonic() - t0 < seconds:
        s0 = time.perf_counter()
        try:
            ok = get(ctl.port, auth(PASSWORD)) == 200
        except OSError:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - s0)
        else:
            failures += 1
        fds.append(ctl.fds())
        ages.append(ctl.status().get("last_cycle_age") or 0.0)
        time.sleep(0.25)
    elapsed = time.monotonic() - t0
    cycles, cpu = ctl.cycles() - cycles0, ctl.cpu_seconds() - cpu0
    if flood_idle:
        flood_idle.stop_event.set()
        flood_idle.thread.join(10)
    if flood_pw:
        flood_pw.stop_event.set()
        for t in flood_pw.threads:
            t.join(10)
    return {
        "phase": name,
        "seconds": round(elapsed, 1),
        "cycles": cycles,
        "expected_cycles": int(elapsed),
        "max_cycle_age": round(max(ages), 2),
        "scrapes_ok": len(latencies),
        "scrapes_failed": failures,
        "scrape_p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "scrape_p99_ms": round(1000 * percentile(latencies, 0.99), 1) if latencies else None,
        "controller_cpu_pct": round(100 * cpu / elapsed, 1),
        "max_fds": max(fds),
        "idle_closed_by_server": flood_idle.reopened if flood_idle else None,
        "wrong_password_answers": dict(sorted((str(k), v) for k, v in flood_pw.codes.items()))
        if flood_pw
        else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--json", action="store_true", help="print every phase as JSON too")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.idle)), hard))
    print(
        f"# machine: {cpu_model()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; "
        f"controller fd limit {FD_LIMIT}, interval 1 s, bcrypt cost 10"
    )
    results: dict = {}
    for _ in range(args.runs):
        workdir = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
        ctl = Controller(workdir)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if ctl.cycles() >= 2:
                        break
                except Exception:
                    pass
                if time.monotonic() > deadline or ctl.proc.poll() is not None:
                    print((workdir / "daemon.log").read_text())
                    raise SystemExit("the controller did not start")
                time.sleep(0.2)
            assert get(ctl.port, auth(PASSWORD)) == 200  # checked once, then cached
            for name in ("baseline", "idle", "wrong-password", "both"):
                row = phase(ctl, name, args.seconds, args.idle)
                results.setdefault(name, []).append(row)
                if args.json:
                    print(json.dumps(row))
            if "Traceback" in (workdir / "daemon.log").read_text():
                print("WARNING: a traceback in the daemon log")
        finally:
            ctl.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{'phase':15} {'cycles/expected':>16} {'max cycle age s':>16} {'scrapes ok/failed':>18} "
        f"{'p50 ms':>14} {'p99 ms':>14} {'ctl CPU %':>12} {'max fds':>9}  attackers"
    )
    for name, rows in results.items():

        def span(key: str, rows: list = rows) -> str:
            vals = [r[key] for r in rows if r[key] is not None]
            if not vals:
                return "-"
            med = statistics.median(vals)
            return f"{med:g} ({min(vals):g}-{max(vals):g})" if len(vals) > 1 else f"{med:g}"

        cyc = f"{sum(r['cycles'] for r in rows)}/{sum(r['expected_cycles'] for r in rows)}"
        ok = f"{sum(r['scrapes_ok'] for r in rows)}/{sum(r['scrapes_failed'] for r in rows)}"
        attack = ""
        if rows[0]["idle_closed_by_server"] is not None:
            attack += f"idle closed {span('idle_closed_by_server')}; "
        if rows[0]["wrong_password_answers"] is not None:
            codes: dict = {}
            for r in rows:
                for k, v in r["wrong_password_answers"].items():
                    codes[k] = codes.get(k, 0) + v
            attack += "wrong pw " + ", ".join(f"{k}: {v}" for k, v in codes.items())
        print(
            f"{name:15} {cyc:>16} {span('max_cycle_age'):>16} {ok:>18} "
            f"{span('scrape_p50_ms'):>14} {span('scrape_p99_ms'):>14} "
            f"{span('controller_cpu_pct'):>12} {span('max_fds'):>9}  {attack}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
