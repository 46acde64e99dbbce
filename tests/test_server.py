"""The HTTP endpoint over real sockets on loopback: TLS, mTLS, basic auth, health, no waiting.

Certificates are made per test session with the ``openssl`` CLI (a CA, a server certificate for
127.0.0.1, a client certificate from the same CA, and one from a rogue CA). Every server is
started on port 0 and stopped in a fixture.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import bcrypt
import pytest
import snapshots
from iscsi_ha.exporter.collector import LatestSnapshot, SnapshotCollector
from iscsi_ha.exporter.server import (
    DEFAULT_PORT,
    Exposition,
    health,
    parse_listen,
    start_exporter,
)
from iscsi_ha.exporter.webconfig import WebConfigError, load_web_config
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


# ---------------------------------------------------------------------------------------------
# Certificates


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        cwd=d,
    )


def _leaf(d: Path, name: str, ca: str, san: str, usage: str) -> None:
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=d,
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(d, "server", "ca", "IP:127.0.0.1,DNS:localhost", "serverAuth")
    _leaf(d, "client", "ca", "DNS:prometheus.test", "clientAuth")
    _leaf(d, "other-client", "ca", "DNS:grafana.test", "clientAuth")
    _leaf(d, "rogue-client", "rogue-ca", "DNS:prometheus.test", "clientAuth")
    return d


# ---------------------------------------------------------------------------------------------
# Servers and clients


class Exporter:
    def __init__(self, handle, box):
        self.handle = handle
        self.box = box

    def get(self, path="/metrics", headers=None, context=None, timeout=10.0):
        """(status, headers, body) of one request on a new connection."""
        if context is not None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.handle.port, context=context, timeout=timeout
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.handle.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()


@pytest.fixture
def start(tmp_path):
    started = []

    def _start(snapshot=None, web_config: str | None = None, listen="127.0.0.1:0"):
        box = LatestSnapshot(snapshot if snapshot is not None else snapshots.master())
        registry = CollectorRegistry()
        SnapshotCollector(box, registry)
        path = None
        if web_config is not None:
            path = tmp_path / "web.yml"
            path.write_text(web_config)
        handle = start_exporter(listen, registry, box, str(path) if path else None)
        started.append(handle)
        return Exporter(handle, box)

    yield _start
    for handle in started:
        handle.stop()


def client_context(pki: Path, cert: str | None = None, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


TLS_REFUSED = (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, OSError)


# ---------------------------------------------------------------------------------------------
# Plain HTTP


def test_metrics_landing_page_and_404(start):
    ex = start(snapshots.master())
    status, headers, body = ex.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b'iscsi_ha_pool_role{role="master"} 1.0' in body
    status, headers, body = ex.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'href="metrics"' in body and b'href="healthz"' in body
    assert b"0.1.0" in body and b"xcp-host1" in body
    assert ex.get("/nothing-here")[0] == 404


def test_openmetrics_and_gzip_for_prometheus(start):
    ex = start(snapshots.syncing(resources=4))
    status, headers, body = ex.get(
        "/metrics", {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    # The reassembled exposition parses as one valid OpenMetrics document.
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    progress = [s for s in fams["iscsi_ha_drbd_sync_progress_ratio"].samples]
    assert len(progress) == 4 and all(s.value == pytest.approx(0.42) for s in progress)


def test_a_new_snapshot_is_served_at_once_not_a_cached_one(start):
    ex = start(snapshots.master())
    for accept in (None, PROMETHEUS_ACCEPT):
        headers = {"Accept": accept} if accept else {}
        assert b'iscsi_ha_pool_role{role="master"} 1' in ex.get("/metrics", headers)[2]
    ex.box.publish(snapshots.slave())
    for accept in (None, PROMETHEUS_ACCEPT):
        headers = {"Accept": accept} if accept else {}
        body = ex.get("/metrics", headers)[2]
        assert b'iscsi_ha_pool_role{role="slave"} 1' in body
        assert b'iscsi_ha_pool_role{role="master"} 0' in body


def test_name_filter(start):
    ex = start()
    body = ex.get("/metrics?name[]=iscsi_ha_vip_local")[2]
    assert b"iscsi_ha_vip_local 1.0" in body and b"iscsi_ha_pool_role" not in body


def test_exposition_reuses_unchanged_families_and_renders_changed_ones():
    box = LatestSnapshot(snapshots.master(resources=2))
    registry = CollectorRegistry()
    SnapshotCollector(box, registry)
    expo = Exposition(registry)
    first, _ = expo.render(None, None)
    again, _ = expo.render(None, None)
    assert again is first  # same families, same bytes object
    box.publish(snapshots.split_brain(resources=2))
    changed, _ = expo.render(None, None)
    assert b'state="StandAlone"} 1.0' in changed and changed != first


def test_a_hung_cycle_does_not_block_a_scrape(start):
    """The cycle thread holds the controller's lock and hangs; /metrics answers at once."""
    ex = start(snapshots.master())
    cycle_lock = threading.Lock()
    hung, release = threading.Event(), threading.Event()

    def cycle():
        with cycle_lock:
            hung.set()
            release.wait(20)  # a command that never returns
            ex.box.publish(snapshots.slave())

    t = threading.Thread(target=cycle, daemon=True)
    t.start()
    try:
        assert hung.wait(5)
        for path in ("/metrics", "/healthz", "/"):
            t0 = time.monotonic()
            status, _, body = ex.get(path, timeout=5)
            assert status == 200 and time.monotonic() - t0 < 1.0, path
        assert b'iscsi_ha_pool_role{role="master"} 1.0' in ex.get("/metrics")[2]
        assert cycle_lock.locked()
    finally:
        release.set()
        t.join(5)
    assert b'iscsi_ha_pool_role{role="slave"} 1.0' in ex.get("/metrics")[2]


# ---------------------------------------------------------------------------------------------
# /healthz


def test_healthz_200_while_fresh_503_when_stale(start):
    ex = start(snapshots.master())
    status, _, body = ex.get("/healthz")
    assert status == 200 and body.startswith(b"ok: last cycle ended")
    ex.box.publish(snapshots.master(now=time.time() - 42))  # interval 5: limit 15 s
    status, _, body = ex.get("/healthz")
    assert status == 503
    assert b"stale: last cycle ended 42." in body and b"(15s)" in body


def test_health_rules():
    now = 1_000_000.0
    assert health(None, now)[0] == 503
    assert health(snapshots.starting(now=now - 2), now)[0] == 200
    code, text = health(snapshots.starting(now=now - 60), now)
    assert code == 503 and "60.0s" in text
    assert health(snapshots.master(now=now - 14.9), now)[0] == 200
    assert health(snapshots.master(now=now - 15.1), now)[0] == 503
    # The loop is alive even when its cycle failed: health is about liveness.
    assert health(snapshots.failed_cycle(now=now - 1), now)[0] == 200


# ---------------------------------------------------------------------------------------------
# TLS


def test_tls(start, pki):
    ex = start(
        web_config=f"tls_server_config:\n  cert_file: {pki}/server.crt\n"
        f"  key_file: {pki}/server.key\n"
    )
    assert ex.handle.scheme == "https"
    status, _, body = ex.get("/metrics", context=client_context(pki))
    assert status == 200 and b"iscsi_ha_up 1.0" in body
    with pytest.raises(TLS_REFUSED):
        ex.get("/metrics")  # plain HTTP to a TLS port


def test_tls_relative_paths_and_min_version(start, pki, tmp_path):
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    ex = start(
        web_config="tls_server_config:\n  cert_file: server.crt\n"
        "  key_file: server.key\n  min_version: TLS13\n"
    )
    assert ex.get("/healthz", context=client_context(pki))[0] == 200
    old = client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(TLS_REFUSED):
        ex.get("/healthz", context=old)


MTLS = """tls_server_config:
  cert_file: {pki}/server.crt
  key_file: {pki}/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {pki}/ca.crt
"""


def test_mtls_refuses_a_client_without_a_certificate(start, pki):
    ex = start(web_config=MTLS.format(pki=pki))
    assert ex.get("/metrics", context=client_context(pki, "client"))[0] == 200
    with pytest.raises(TLS_REFUSED):
        ex.get("/metrics", context=client_context(pki))
    with pytest.raises(TLS_REFUSED):
        ex.get("/metrics", context=client_context(pki, "rogue-client"))
    # The refused clients did not break the server.
    assert ex.get("/metrics", context=client_context(pki, "client"))[0] == 200


def test_mtls_client_allowed_sans(start, pki):
    ex = start(
        web_config=MTLS.format(pki=pki) + "  client_allowed_sans: [prometheus.test, 192.0.2.9]\n"
    )
    assert ex.get("/healthz", context=client_context(pki, "client"))[0] == 200
    with pytest.raises(TLS_REFUSED):
        ex.get("/healthz", context=client_context(pki, "other-client"))


def test_verify_client_cert_if_given(start, pki):
    ex = start(
        web_config=MTLS.format(pki=pki).replace(
            "RequireAndVerifyClientCert", "VerifyClientCertIfGiven"
        )
    )
    assert ex.get("/healthz", context=client_context(pki))[0] == 200
    assert ex.get("/healthz", context=client_context(pki, "client"))[0] == 200
    with pytest.raises(TLS_REFUSED):
        ex.get("/healthz", context=client_context(pki, "rogue-client"))


def test_a_stalled_tls_client_does_not_block_others(start, pki):
    ex = start(web_config=MTLS.format(pki=pki))
    silent = socket.create_connection(("127.0.0.1", ex.handle.port), timeout=5)
    try:  # connected, never says hello
        assert ex.get("/healthz", context=client_context(pki, "client"), timeout=3)[0] == 200
    finally:
        silent.close()


# ---------------------------------------------------------------------------------------------
# Basic auth


@pytest.fixture(scope="session")
def alice_hash() -> str:
    return bcrypt.hashpw(b"wonderland", bcrypt.gensalt(10)).decode().replace("$2b$", "$2y$")


def test_basic_auth(start, alice_hash):
    ex = start(web_config=f"basic_auth_users:\n  alice: '{alice_hash}'\n")
    for headers in (
        {},
        basic("alice", "wrong"),
        basic("bob", "wonderland"),
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer x"},
    ):
        status, resp_headers, _ = ex.get("/metrics", headers)
        assert status == 401, headers
        assert resp_headers["WWW-Authenticate"].startswith("Basic")
    assert ex.get("/healthz")[0] == 401  # every path, like exporter-toolkit
    status, _, body = ex.get("/metrics", basic("alice", "wonderland"))
    assert status == 200 and b"iscsi_ha_up" in body


def test_basic_auth_over_mtls(start, pki, alice_hash):
    ex = start(web_config=MTLS.format(pki=pki) + f"basic_auth_users:\n  alice: '{alice_hash}'\n")
    ctx = client_context(pki, "client")
    assert ex.get("/metrics", context=ctx)[0] == 401
    assert ex.get("/metrics", basic("alice", "wonderland"), context=ctx)[0] == 200


def test_successful_checks_are_cached(tmp_path, alice_hash):
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: '{alice_hash}'\n")
    web = load_web_config(str(path))
    t0 = time.perf_counter()
    assert web.check_credentials("alice", "wonderland")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(100):
        assert web.check_credentials("alice", "wonderland")
    cached = (time.perf_counter() - t0) / 100
    assert first > 0.01 and cached < first / 20, (first, cached)
    assert not web.check_credentials("alice", "wonderlan")
    assert not web.check_credentials("mallory", "wonderland")


# ---------------------------------------------------------------------------------------------
# Other web-config features


def test_headers_and_rate_limit(start):
    ex = start(
        web_config="http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        "    X-Content-Type-Options: nosniff\n"
        "rate_limit:\n  interval: 1h\n  burst: 2\n"
    )
    status, headers, _ = ex.get("/healthz")
    assert status == 200 and headers["X-Frame-Options"] == "deny"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert ex.get("/healthz")[0] == 200
    assert ex.get("/healthz")[0] == 429


BAD_CONFIGS = [
    ("tls_server_config: [unclosed", "not valid YAML"),
    ("tls_server_config:\n  cert_fil: x.crt\n", "tls_server_config.cert_fil: unknown key"),
    ("web_config: {}\n", "web_config: unknown key"),
    (
        "tls_server_config:\n  cert_file: /nonexistent/s.crt\n  key_file: /nonexistent/s.key\n",
        "tls_server_config.cert_file: /nonexistent/s.crt does not exist",
    ),
    ("tls_server_config:\n  key_file: s.key\n", "tls_server_config.cert_file: missing one of"),
    ("basic_auth_users:\n  alice: plaintext-password\n", "basic_auth_users.alice: not a bcrypt"),
    (
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        "http_server_config.headers.X-Frame-Options: invalid value",
    ),
    ("http_server_config:\n  headers:\n    Server: nginx\n", "can not be configured"),
    ("rate_limit:\n  interval: soon\n", "rate_limit.interval"),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS)
def test_bad_web_config_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError) as err:
        load_web_config(str(path))
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert "plaintext-password" not in str(err.value)


@pytest.mark.parametrize(
    "tls_extra,message",
    [
        (
            "  client_auth_type: RequireAnyClientCert\n  client_ca_file: {pki}/ca.crt\n",
            "client_auth_type: RequireAnyClientCert",
        ),
        ("  client_auth_type: Sometimes\n", "client_auth_type: invalid value 'Sometimes'"),
        ("  client_ca_file: {pki}/ca.crt\n", "client_ca_file: client CAs are configured without"),
        ("  min_version: TLS14\n", "min_version: unknown TLS version 'TLS14'"),
        ("  min_version: TLS13\n  max_version: TLS12\n", "min_version: TLS13 is newer"),
        ("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "cipher_suites: not supported"),
        (
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki}/server.key\n",
            "client_ca_file: cannot load the client CA",
        ),
        ("  client_allowed_sans: [a]\n", "client_allowed_sans: requires"),
    ],
)
def test_bad_tls_settings(tmp_path, pki, tls_extra, message):
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n"
        f"  key_file: {pki}/server.key\n" + tls_extra.format(pki=pki)
    )
    with pytest.raises(WebConfigError) as err:
        load_web_config(str(path))
    assert str(err.value).startswith(f"{path}: tls_server_config.")
    assert message in str(err.value)


def test_a_key_that_does_not_match_the_certificate(tmp_path, pki):
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/client.key\n"
    )
    with pytest.raises(WebConfigError, match="tls_server_config.cert_file: cannot load"):
        load_web_config(str(path))


def test_inline_certificate_and_key(start, pki):
    def block(name):
        return "|\n" + "".join(f"    {line}\n" for line in (pki / name).read_text().splitlines())

    ex = start(
        web_config=f"tls_server_config:\n  cert: {block('server.crt')}  key: {block('server.key')}"
    )
    assert ex.get("/healthz", context=client_context(pki))[0] == 200


def test_a_bad_web_config_stops_the_start_before_listening(tmp_path):
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  alice: not-a-hash\n")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(WebConfigError):
        start_exporter(f"127.0.0.1:{port}", CollectorRegistry(), lambda: None, str(path))
    with socket.socket() as s:  # nothing was left listening
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_empty_web_config_is_plain_http(start):
    ex = start(web_config="")
    assert ex.handle.scheme == "http" and ex.get("/healthz")[0] == 200


# ---------------------------------------------------------------------------------------------
# Listening


def test_parse_listen():
    assert parse_listen("127.0.0.1:19856") == (socket.AF_INET, "127.0.0.1", 19856)
    assert parse_listen("[::]:0") == (socket.AF_INET6, "::", 0)
    assert parse_listen("[::1]:9") == (socket.AF_INET6, "::1", 9)
    assert parse_listen(":19856")[1:] in ((("::", 19856)), ("0.0.0.0", 19856))
    for bad in ("19856", "::1:19856", "0.0.0.0:http", "0.0.0.0:70000", "[::1]19856"):
        with pytest.raises(ValueError, match="listen address"):
            parse_listen(bad)
    assert DEFAULT_PORT == 19856


def test_ipv6_wildcard_also_serves_ipv4(start):
    try:
        ex = start(listen="[::]:0")
    except OSError as e:  # a machine without IPv6
        pytest.skip(f"no IPv6: {e}")
    assert ex.get("/healthz")[0] == 200  # Exporter.get connects to 127.0.0.1
    conn = http.client.HTTPConnection("::1", ex.handle.port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_keep_alive_and_stop_frees_the_port(start):
    ex = start()
    conn = http.client.HTTPConnection("127.0.0.1", ex.handle.port, timeout=5)
    for _ in range(3):  # one connection, several scrapes
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()
    port = ex.handle.port
    ex.handle.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", "/metrics")
        conn.getresponse()
    conn.close()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
