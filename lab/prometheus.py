"""A real Prometheus (and Alertmanager) for the namespace lab, and a way to reach them.

Where it runs, and why: the controllers' exporters listen on their node's own address
(``10.99.0.1:9856``, ``10.99.0.2:9856``) inside the node namespaces, which the root namespace
cannot route to (adding a veth into the root namespace would change this machine's own network).
So Prometheus runs inside the lab's ``sw`` namespace, on the bridge address ``10.99.0.254``, where
it reaches both exporters exactly as a monitoring host on the storage network would.

To make it reachable from this machine's loopback (a browser, ``curl``, the tests), a small TCP
forwarder runs in the root namespace: it listens on ``127.0.0.1:PORT`` and opens each upstream
connection from a thread that has joined ``sw`` (``setns(2)``: a socket stays in the namespace it
was created in). That is the only way in; nothing else is exposed outside the lab. The forwarder
is this file run as a script (``python lab/prometheus.py forward ...``), started and stopped by PID
by the lab like every other process.

Alertmanager (for the alerts work) runs the same way, on ``10.99.0.254:9093`` with its gossip
cluster disabled; ``start_prometheus(..., alertmanager=am)`` points Prometheus at it.

Everything here uses the standard library only, so the forwarder runs with ``python -S``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
CLONE_NEWNET = 0x40000000
SELF = Path(__file__).resolve()


class LabServiceError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Reaching into a namespace from this process
# --------------------------------------------------------------------------------------------


def _enter_netns(netns: str) -> None:
    """Move the calling thread (only) into ``netns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(netns: Optional[str], fn: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Run ``fn`` in a fresh thread inside ``netns`` (None: here) and return its result."""
    if netns is None:
        return fn()
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            _enter_netns(netns)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in box:
        raise box["error"]
    if "value" not in box:
        raise TimeoutError(f"nothing back from netns {netns} within {timeout:g}s")
    return box["value"]


def http_get(url: str, netns: Optional[str] = None, timeout: float = 5.0) -> str:
    """GET ``url`` from inside ``netns`` (e.g. a node's /metrics); raises OSError on failure."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode("utf-8", "replace")

    return in_netns(netns, get, timeout=timeout + 5)


def parse_metrics(text: str) -> Dict[str, float]:
    """Prometheus text exposition -> {'name{a="x",b="y"}': value}, labels sorted by name.

    Enough for assertions on the lab's own exporters (no escaped quotes in their labels)."""
    out: Dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, rest = line.rpartition(" ")
        if "{" in name_labels and name_labels.endswith("}"):
            name, _, labels = name_labels[:-1].partition("{")
            pairs = sorted(p for p in labels.split(",") if p)
            key = name + "{" + ",".join(pairs) + "}"
        else:
            key = name_labels
        try:
            out[key] = float(rest)
        except ValueError:
            continue
    return out


def metric(samples: Dict[str, float], name: str, **labels: str) -> Optional[float]:
    """One sample of ``parse_metrics()``'s result by name and labels (None when absent)."""
    if not labels:
        return samples.get(name)
    pairs = sorted(f'{k}="{v}"' for k, v in labels.items())
    return samples.get(name + "{" + ",".join(pairs) + "}")


# --------------------------------------------------------------------------------------------
# The forwarder: 127.0.0.1:PORT in the root namespace -> HOST:PORT inside a namespace
# --------------------------------------------------------------------------------------------


def forward(listen_port: int, netns: str, upstream: str, max_seconds: float) -> int:
    """Serve until SIGTERM (or ``max_seconds``): every accepted connection is piped to
    ``upstream`` opened inside ``netns``. Prints one JSON line once it listens."""
    host, _, port = upstream.rpartition(":")
    target = (host, int(port))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", listen_port))
    except OSError:
        if listen_port == 0:
            raise
        listener.bind(("127.0.0.1", 0))  # the preferred port is taken: any free one
    listener.listen(64)
    # From here on this (only) thread lives in the lab: new sockets are made there; the
    # listener made above stays on the root namespace's loopback.
    _enter_netns(netns)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(
        json.dumps(
            {
                "listen": f"127.0.0.1:{listener.getsockname()[1]}",
                "netns": netns,
                "upstream": upstream,
            }
        ),
        flush=True,
    )
    deadline = time.monotonic() + max_seconds
    listener.settimeout(0.2)
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            client, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            break
        threading.Thread(target=_pipe_connection, args=(client, target), daemon=True).start()
    listener.close()
    return 0


def _pipe_connection(client: socket.socket, target: tuple) -> None:
    try:
        upstream = socket.create_connection(target, timeout=5)
    except OSError:
        client.close()
        return
    sel = selectors.DefaultSelector()
    for sock in (client, upstream):
        sock.settimeout(30)  # reads happen only when ready; a stuck send gives up
        sel.register(sock, selectors.EVENT_READ)
    peer = {client: upstream, upstream: client}
    idle_deadline = time.monotonic() + 300  # bounded: an abandoned connection goes away
    try:
        while time.monotonic() < idle_deadline:
            events = sel.select(timeout=1.0)
            for key, _ in events:
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                peer[key.fileobj].sendall(data)  # type: ignore[index]
                idle_deadline = time.monotonic() + 300
    except OSError:
        return
    finally:
        sel.close()
        client.close()
        upstream.close()


# --------------------------------------------------------------------------------------------
# Services in the lab
# --------------------------------------------------------------------------------------------


@dataclass
class LabService:
    """A process in the lab's ``sw`` namespace, with its loopback forwarder."""

    name: str
    pid: int
    lab_url: str  # as seen from inside the lab (e.g. the nodes)
    local_url: str  # on this machine's loopback, through the forwarder
    forwarder_pid: int
    dir: Path
    log: Path
    extra: Dict[str, Any] = field(default_factory=dict)

    def get(self, path: str, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(self.local_url + path, timeout=timeout) as resp:
            return resp.read().decode("utf-8", "replace")

    def get_json(self, path: str, timeout: float = 5.0) -> Any:
        return json.loads(self.get(path, timeout))

    def wait_ready(self, lab: Any, timeout: float = 20.0) -> float:
        """Poll ``/-/ready`` until it answers 200; returns the seconds it took."""
        t0 = time.monotonic()
        last = ""
        while True:
            if lab.processes.get(self.pid) is None or lab.processes[self.pid].poll() is not None:
                raise LabServiceError(f"{self.name} exited: {self.log_tail()}")
            try:
                self.get("/-/ready", timeout=1.0)
                return time.monotonic() - t0
            except (OSError, ValueError) as exc:
                last = str(exc)
            if time.monotonic() - t0 > timeout:
                raise LabServiceError(
                    f"{self.name} not ready after {timeout:g}s ({last}): {self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, lab: Any) -> None:
        lab.stop_process(self.forwarder_pid, timeout=2)
        lab.stop_process(self.pid, timeout=5)


class Prometheus(LabService):
    def query(self, expr: str, timeout: float = 5.0) -> List[Dict[str, Any]]:
        """An instant query; returns ``data.result`` (a vector's samples)."""
        doc = self.get_json("/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout)
        if doc.get("status") != "success":
            raise LabServiceError(f"query {expr!r} failed: {doc}")
        return doc["data"]["result"]

    def query_value(self, expr: str) -> Optional[float]:
        """The single value of a query whose answer is one sample (None when empty)."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) != 1:
            raise LabServiceError(f"{expr!r} returned {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def targets(self) -> List[Dict[str, Any]]:
        return self.get_json("/api/v1/targets?state=active")["data"]["activeTargets"]

    def wait_targets_up(self, count: int, timeout: float = 20.0) -> float:
        """Until ``count`` targets were scraped and are up; returns the seconds it took."""
        t0 = time.monotonic()
        seen: List[Dict[str, Any]] = []
        while time.monotonic() - t0 < timeout:
            try:
                seen = self.targets()
            except (OSError, ValueError, KeyError):
                seen = []
            if len([t for t in seen if t.get("health") == "up"]) >= count:
                return time.monotonic() - t0
            time.sleep(0.1)
        brief = [(t.get("scrapeUrl"), t.get("health"), t.get("lastError")) for t in seen]
        raise LabServiceError(f"{count} targets not up after {timeout:g}s: {brief}")


def _start_forwarder(lab: Any, name: str, upstream: str, local_port: int) -> tuple:
    log = lab.base / "logs" / f"{name}-forward.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # --run-dir names the run directory on the command line, so a later run can sweep this
    # root-namespace process if this one is SIGKILLed (netlab.sweep_stale checks cmdline).
    argv = [
        sys.executable,
        "-S",
        str(SELF),
        "forward",
        "--port",
        str(local_port),
        "--netns",
        lab.sw,
        "--to",
        upstream,
        "--run-dir",
        str(lab.base),
    ]
    pid = lab.start_process(None, argv, log=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        for line in text.splitlines():
            if line.startswith("{") and '"listen"' in line:
                return pid, "http://" + json.loads(line)["listen"]
        if lab.processes[pid].poll() is not None:
            break
        time.sleep(0.02)
    lab.stop_process(pid)
    raise LabServiceError(f"the {name} forwarder did not start: {log.read_text()[-1500:]!r}")


def _yaml_list(items: Sequence[str], indent: str) -> str:
    return "".join(f"{indent}- {json.dumps(i)}\n" for i in items)


def prometheus_config(
    lab: Any,
    cluster: str,
    scrape_interval: str = "1s",
    rule_files: Sequence[str] = (),
    alertmanager: Optional[str] = None,
) -> str:
    """Scrape both controllers, each with ``cluster`` and ``node`` labels. JSON is YAML."""
    cfg: Dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
        },
        "scrape_configs": [
            {
                "job_name": "iscsi-ha",
                "static_configs": [
                    {"targets": [n.exporter_listen], "labels": {"cluster": cluster, "node": n.name}}
                    for n in lab.nodes
                ],
            }
        ],
    }
    if rule_files:
        cfg["rule_files"] = [str(Path(f).resolve()) for f in rule_files]
    if alertmanager:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return json.dumps(cfg, indent=2) + "\n"


def start_prometheus(
    lab: Any,
    cluster: Optional[str] = None,
    local_port: int = 0,
    scrape_interval: str = "1s",
    rule_files: Sequence[str] = (),
    alertmanager: Optional[LabService] = None,
    port: int = PROMETHEUS_PORT,
) -> Prometheus:
    """Start Prometheus in the lab's ``sw`` namespace on ``10.99.0.254:port`` with a temporary
    storage path under the lab's run directory (removed with it), and its loopback forwarder on
    ``127.0.0.1:local_port`` (0: any free port; a taken one falls back to a free one).
    Returns at once: call ``wait_ready()``."""
    from .netlab import SWITCH_ADDR  # late: this file also runs as a stdlib-only script

    if not os.access(PROMETHEUS, os.X_OK):
        raise LabServiceError(f"{PROMETHEUS} is missing (Debian package `prometheus`)")
    cluster = cluster or f"lab-{lab.id}"
    d = lab.base / "prometheus"
    (d / "data").mkdir(parents=True, exist_ok=True)
    config = d / "prometheus.yml"
    config.write_text(
        prometheus_config(
            lab,
            cluster,
            scrape_interval,
            rule_files,
            alertmanager.lab_url.split("//", 1)[1] if alertmanager else None,
        )
    )
    listen = f"{SWITCH_ADDR}:{port}"
    log = lab.base / "logs" / "prometheus.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={d / 'data'}",
        f"--web.listen-address={listen}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]
    pid = lab.start_process("sw", argv, log=log)
    fwd_pid, local_url = _start_forwarder(lab, "prometheus", listen, local_port)
    return Prometheus(
        "prometheus",
        pid,
        f"http://{listen}",
        local_url,
        fwd_pid,
        d,
        log,
        {"cluster": cluster, "config": str(config)},
    )


DEFAULT_ALERTMANAGER_CONFIG = """\
# The lab's Alertmanager: every alert goes to one receiver that notifies nobody; tests read the
# alerts back from the API (/api/v2/alerts) or point a webhook receiver at a server of their own.
route:
  receiver: lab
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: lab
"""


def start_alertmanager(
    lab: Any,
    config_text: str = DEFAULT_ALERTMANAGER_CONFIG,
    local_port: int = 0,
    port: int = ALERTMANAGER_PORT,
) -> LabService:
    """Start Alertmanager in ``sw`` on ``10.99.0.254:port`` (gossip cluster off, temporary
    storage), and its loopback forwarder. Returns at once: call ``wait_ready()``."""
    from .netlab import SWITCH_ADDR

    if not os.access(ALERTMANAGER, os.X_OK):
        raise LabServiceError(
            f"{ALERTMANAGER} is missing (Debian package `prometheus-alertmanager`)"
        )
    d = lab.base / "alertmanager"
    (d / "data").mkdir(parents=True, exist_ok=True)
    config = d / "alertmanager.yml"
    config.write_text(config_text)
    listen = f"{SWITCH_ADDR}:{port}"
    log = lab.base / "logs" / "alertmanager.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        ALERTMANAGER,
        f"--config.file={config}",
        f"--storage.path={d / 'data'}",
        f"--web.listen-address={listen}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    pid = lab.start_process("sw", argv, log=log)
    fwd_pid, local_url = _start_forwarder(lab, "alertmanager", listen, local_port)
    return LabService(
        "alertmanager", pid, f"http://{listen}", local_url, fwd_pid, d, log, {"config": str(config)}
    )


# --------------------------------------------------------------------------------------------
# Script: the forwarder
# --------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Loopback forwarder into a lab namespace.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("forward", help="127.0.0.1:PORT here -> HOST:PORT inside NETNS")
    f.add_argument("--port", type=int, default=0, help="local port (0: any free one)")
    f.add_argument("--netns", required=True)
    f.add_argument("--to", required=True, help="HOST:PORT as seen inside NETNS")
    f.add_argument("--max-seconds", type=float, default=86400.0)
    f.add_argument("--run-dir", help="the lab run this belongs to (for sweeping)")
    args = p.parse_args(argv)
    return forward(args.port, args.netns, args.to, args.max_seconds)


if __name__ == "__main__":
    sys.exit(main())
