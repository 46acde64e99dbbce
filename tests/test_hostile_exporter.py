"""Hostile clients of the metrics endpoint and hostile web configs (#16).

Before: no connection cap, an idle connection kept 120 s, authentication after the headers -- with
the controller's fd limit at 256, 257 idle TCP connections made every cycle fail ("Too many open
files") and timed out scrapes; each wrong basic-auth password cost a bcrypt check (~17 a second
keep a core busy); a web-config YAML error quoted part of an inline private key.
"""

from __future__ import annotations

import base64
import http.client
import os
import resource
import socket
import threading
import time

import bcrypt
import pytest
import snapshots
from iscsi_ha.exporter import server as server_mod
from iscsi_ha.exporter.collector import LatestSnapshot, SnapshotCollector
from iscsi_ha.exporter.server import MAX_CONNECTIONS, start_exporter
from iscsi_ha.exporter.webconfig import WebConfigError, load_web_config
from prometheus_client import CollectorRegistry


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def exporter(tmp_path):
    handles = []

    def _start(web_config: str | None = None):
        box = LatestSnapshot(snapshots.master())
        registry = CollectorRegistry()
        SnapshotCollector(box, registry)
        path = None
        if web_config is not None:
            path = tmp_path / "web.yml"
            path.write_text(web_config)
        handle = start_exporter("127.0.0.1:0", registry, box, str(path) if path else None)
        handles.append(handle)
        return handle

    yield _start
    for h in handles:
        h.stop()


def get(
    port: int, path: str = "/metrics", headers=None, source: str = "127.0.0.1", timeout: float = 5.0
):
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(source, 0)
    )
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def test_idle_connections_cannot_starve_scrapes_or_file_descriptors(exporter):
    """600 idle connections from one host and 300 from four others: the server never holds more
    than its cap, and every scrape from yet another host is answered at once."""
    _raise_fd_limit(4096)
    handle = exporter()
    server = handle._server
    idle: list[socket.socket] = []
    try:
        for source in ["127.0.0.2"] * 600 + [
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.5",
            "127.0.0.6",
        ] * 75:
            s = socket.create_connection(
                ("127.0.0.1", handle.port), timeout=5, source_address=(source, 0)
            )
            idle.append(s)
        time.sleep(0.3)
        assert server.open_connections() <= MAX_CONNECTIONS
        assert server.evicted + server.refused >= 900 - MAX_CONNECTIONS
        for _ in range(10):
            t0 = time.monotonic()
            status, body = get(handle.port)
            assert status == 200 and b"iscsi_ha_up" in body
            assert time.monotonic() - t0 < 2.0
    finally:
        for s in idle:
            s.close()


def test_a_dribbling_client_is_cut_off_after_the_header_timeout(exporter, monkeypatch):
    monkeypatch.setattr(server_mod, "HEADER_TIMEOUT", 1.0)
    handle = exporter()
    s = socket.create_connection(("127.0.0.1", handle.port), timeout=10)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        t0 = time.monotonic()
        closed = False
        for _ in range(40):  # one header byte every 0.25 s: each recv sees progress
            try:
                s.sendall(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.25)
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
            finally:
                s.setblocking(True)
        assert closed and time.monotonic() - t0 < 3.5
    finally:
        s.close()
    assert get(handle.port)[0] == 200


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(exporter, monkeypatch):
    monkeypatch.setattr(server_mod, "IDLE_TIMEOUT", 1.0)
    handle = exporter()
    conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read()
    deadline = time.monotonic() + 5
    while handle._server.open_connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert handle._server.open_connections() == 0
    conn.close()


@pytest.fixture(scope="module")
def alice_hash() -> str:
    return bcrypt.hashpw(b"wonderland", bcrypt.gensalt(10)).decode()


def test_wrong_password_flood_is_rate_limited_and_scrapes_still_answered(exporter, alice_hash):
    handle = exporter(f"basic_auth_users:\n  alice: '{alice_hash}'\n")
    assert get(handle.port, headers=basic("alice", "wonderland"))[0] == 200  # now cached
    cpu0 = time.process_time()
    t0 = time.monotonic()
    codes: dict[int, int] = {}
    stop = threading.Event()

    def flood():
        n = 0
        while not stop.is_set() and n < 400:
            code = get(handle.port, headers=basic("alice", f"guess{n}"))[0]
            codes[code] = codes.get(code, 0) + 1
            n += 1

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    scrapes = []
    for _ in range(10):
        scrapes.append(get(handle.port, headers=basic("alice", "wonderland"))[0])
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    assert scrapes == [200] * 10
    assert codes.get(429, 0) > codes.get(401, 0), codes
    # bcrypt may use the burst (1 s) plus a tenth of a core for this one client.
    bcrypt_checks = codes.get(401, 0)
    cost = _bcrypt_seconds(alice_hash)
    assert bcrypt_checks * cost <= 1.0 + 0.1 * elapsed + 2 * cost, (codes, cost, elapsed)
    # The process's CPU time also counts the four flooding client threads in this process: on
    # an idle 2-core machine they alone can use more than a core, so only the server's own
    # bcrypt budget (above) is asserted; the figure is printed for the reader.
    print(f"process CPU {cpu:.2f} s over {elapsed:.2f} s (clients included)")
    # Another client's first login is not locked out by this one's flood.
    assert get(handle.port, headers=basic("alice", "wonderland"), source="127.0.0.2")[0] == 200


def _bcrypt_seconds(hashed: str) -> float:
    t0 = time.perf_counter()
    bcrypt.checkpw(b"x", hashed.encode())
    return time.perf_counter() - t0


# ------------------------------------------------------------------ hostile web configs


def test_web_config_yaml_error_never_shows_an_inline_key(tmp_path):
    key_line = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSECRETSECRETSECRET"
    path = tmp_path / "web.yml"
    path.write_text(
        "tls_server_config:\n  key: |\n    -----BEGIN PRIVATE KEY-----\n"
        f"    {key_line}\n   bad: [indent\n"
    )
    with pytest.raises(WebConfigError) as info:
        load_web_config(str(path))
    text = str(info.value)
    assert str(path) in text and "line" in text
    assert "SECRET" not in text and "PRIVATE" not in text, text


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("basic_auth_users: {a: '$2y$31$" + "a" * 53 + "'}\n", "bcrypt cost 31 is too slow"),
        ("rate_limit: {interval: 1e300, burst: 1}\n", "rate_limit.interval"),
        ("rate_limit: {interval: 1s, burst: " + "9" * 4300 + "}\n", "4300 digits"),
        ("rate_limit: {interval: 1s, burst: 99999999999}\n", "rate_limit.burst"),
        ("x: " + "[" * 500 + "]" * 500 + "\n", "nested more than"),
        ("# \x1b[31m\n", "U+001B"),
        ("a: \0\n", "NUL"),
    ],
)
def test_hostile_web_configs_are_clear_errors(tmp_path, content, fragment):
    path = tmp_path / "web.yml"
    path.write_text(content)
    with pytest.raises(WebConfigError) as info:
        load_web_config(str(path))
    assert str(path) in str(info.value) and fragment in str(info.value), str(info.value)


def test_web_config_fifo_and_device_are_refused_at_once(tmp_path):
    fifo = tmp_path / "web.fifo"
    os.mkfifo(fifo)
    out = []

    def load(p):
        try:
            load_web_config(p)
        except WebConfigError as exc:
            out.append(str(exc))

    for p in (str(fifo), "/dev/zero"):
        t = threading.Thread(target=load, args=(p,), daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), f"load_web_config blocked on {p}"
    assert "FIFO" in out[0] and "character device" in out[1]
