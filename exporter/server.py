"""The HTTP endpoint: ``/metrics``, ``/healthz`` and a landing page, with TLS and basic auth.

``start_exporter(listen, registry, get_snapshot, web_config_file)`` checks the web configuration
file (see ``webconfig``; a bad file raises ``WebConfigError`` before anything listens), binds
``listen`` and serves from a daemon thread; it returns a handle with ``.port`` and ``.stop()``.
The caller registers its collectors (``SnapshotCollector``) on ``registry``; ``get_snapshot`` is
only read for ``/healthz`` and to notice a new snapshot.

Serving never waits for the controller. Every request runs in its own thread (stdlib
``ThreadingHTTPServer``; the TLS handshake too, so a slow client cannot stall the others), reads
the latest snapshot reference and renders it. Rendering is the only real cost -- at 64 DRBD
resources the one-hot families are ~3,900 series, and client_python's exposition of them takes
tens of milliseconds on a small host -- so ``Exposition`` keeps the rendered text of each metric
family it has seen and reuses it while the collector hands out the same (immutable) family
objects, i.e. until the next cycle; and a background thread renders a new snapshot as soon as it
is published, in the formats recently asked for, so a scrape normally finds the output ready.
Output is the format the client asks for (client_python's ``choose_encoder``: OpenMetrics for
Prometheus, text 0.0.4 otherwise), gzip-compressed when accepted.

``/healthz`` answers 200 while the last cycle ended less than three intervals ago, else 503 with
the age in the body; it reports whether the loop is alive, not whether storage is healthy (that is
what the metrics and alerts are for). Basic auth and TLS apply to every path, as in
exporter-toolkit.

``listen`` is ``host:port``: ``0.0.0.0:19856``, ``127.0.0.1:19856``, ``[::]:19856`` (IPv6 and IPv4),
``[::1]:19856``, ``:19856`` (every address, IPv6 and IPv4), ``name:port``; port 0 picks a free port
(tests).

Default port: 19856. The Prometheus wiki page "Default port allocations" has handed out every
port of the exporter range 9100-9999 since mid-2023 (the provisional 9856 included) and goes on
allocating from 10000 upward; the Prometheus guide asks exporters that are not registered there to
stay outside the allocated ranges. 19856 is far above the newly allocated ports, is not listed on
the page (its few entries outside the range are 3903, 7300, 8080-8292, 9087-9099, 9393, 9876,
9913, 9980-9999, 19091, 19999, 24231, 42004, 44323, 61091), is not in the IANA services list, is
below Linux's ephemeral range (32768-60999) so an outgoing connection never takes it, and keeps
"9856" recognisable.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import html
import io
import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, cast
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import CollectorRegistry

from ..controller import __version__
from ..controller.model import Snapshot
from .collector import snapshot_getter
from .webconfig import WebConfig, load_web_config, peer_allowed

log = logging.getLogger(__name__)

DEFAULT_PORT = 19856
HEALTHY_INTERVALS = 3
HANDSHAKE_TIMEOUT = 10.0  # seconds for a client to finish the TLS handshake
HEADER_TIMEOUT = 5.0  # seconds for a whole request head to arrive (Go's ReadHeaderTimeout)
IDLE_TIMEOUT = 60.0  # keep-alive connections idle longer than this are closed
# Connections served at once. Prometheus uses one; the cap keeps a flood of idle connections from
# taking the controller's file descriptors (it shares them with every command of every cycle).
# One client address may hold PER_CLIENT of them (more are closed at accept, which costs no
# thread); beyond the cap a new connection closes the longest-waiting one of the address that
# holds the most, so a flood from one host can never lock out a scraper on another.
MAX_CONNECTIONS = 32
PER_CLIENT = 8
WARM_POLL = 0.1  # how often the warm-up thread looks for a new snapshot
WARM_FORMATS_FOR = 600.0  # keep warming a format for this long after its last request
# Level 1: at 64 resources ~1 ms instead of ~7 ms (level 6) or ~11 ms (9, gzip's default), for
# 18 KiB instead of 15 KiB; the text is so repetitive that the fastest level already gains 15x.
GZIP_LEVEL = 1


# ------------------------------------------------------------------------------------------
# Health
# ------------------------------------------------------------------------------------------


def health(snapshot: Optional[Snapshot], now: float) -> tuple[int, str]:
    """The ``/healthz`` answer: (HTTP status, one line of text)."""
    if snapshot is None:
        return 503, "unavailable: the controller has not published any state yet\n"
    limit = HEALTHY_INTERVALS * snapshot.interval
    last = snapshot.last
    if last is None:
        age = now - snapshot.started
        if age < limit:
            return 200, (
                f"starting: no cycle has finished yet (controller started {age:.1f}s "
                f"ago, limit {limit:g}s)\n"
            )
        return 503, (
            f"stale: no cycle has finished {age:.1f}s after the controller started "
            f"(limit {HEALTHY_INTERVALS} intervals = {limit:g}s)\n"
        )
    age = now - (last.started + last.duration)
    if age < limit:
        return 200, (
            f"ok: last cycle ended {age:.1f}s ago, outcome {last.outcome.value} "
            f"(limit {limit:g}s)\n"
        )
    return 503, (
        f"stale: last cycle ended {age:.1f}s ago, more than {HEALTHY_INTERVALS} "
        f"intervals ({limit:g}s)\n"
    )


# ------------------------------------------------------------------------------------------
# Exposition with reuse
# ------------------------------------------------------------------------------------------


class _One:
    """Lets client_python's encoders render a single metric family."""

    __slots__ = ("metric",)

    def __init__(self, metric: Any) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Any]:
        yield self.metric


class Exposition:
    """Renders a registry, reusing the text of metric families that are the very same objects.

    A collector that yields the same ``Metric`` object twice promises it did not change in
    between; ``SnapshotCollector`` does so for one snapshot, and client_python's own metrics
    build new objects on every collect, so they are always rendered afresh. No locks: the caches
    are replaced by single assignments, and two threads rendering at once both produce a
    correct answer.
    """

    def __init__(self, registry: CollectorRegistry, gzip_level: int = GZIP_LEVEL) -> None:
        self.registry = registry
        self.gzip_level = gzip_level
        self._parts: dict[str, dict[int, tuple[Any, bytes]]] = {}
        self._whole: dict[tuple[str, bool], tuple[list[Any], bytes]] = {}
        self._recent: dict[tuple[str, bool], tuple[Callable[..., bytes], float]] = {}

    def render(
        self,
        accept: Optional[str],
        accept_encoding: Optional[str],
        names: Optional[list[str]] = None,
    ) -> tuple[bytes, list[tuple[str, str]]]:
        encoder, content_type = choose_encoder(accept or "")
        gz = gzip_accepted(accept_encoding or "")
        if names:
            body = encoder(self.registry.restricted_registry(names))
            if gz:
                body = gzip.compress(body, compresslevel=self.gzip_level)
        else:
            self._recent[(content_type, gz)] = (encoder, time.monotonic())
            body = self._render(encoder, content_type, gz)
        headers = [("Content-Type", content_type)]
        if gz:
            headers.append(("Content-Encoding", "gzip"))
        return body, headers

    def warm(self) -> None:
        """Render the formats asked for recently, so the next scrape finds them ready."""
        now = time.monotonic()
        for (content_type, gz), (encoder, used) in list(self._recent.items()):
            if now - used < WARM_FORMATS_FOR:
                self._render(encoder, content_type, gz)
            else:
                self._recent.pop((content_type, gz), None)

    def _render(self, encoder: Callable[..., bytes], content_type: str, gz: bool) -> bytes:
        metrics = list(self.registry.collect())
        whole = self._whole.get((content_type, gz))
        if (
            whole is not None
            and len(whole[0]) == len(metrics)
            and all(a is b for a, b in zip(whole[0], metrics))
        ):
            return whole[1]
        openmetrics = content_type.startswith("application/openmetrics-text")
        old = self._parts.get(content_type, {})
        new: dict[int, tuple[Any, bytes]] = {}
        chunks = []
        for metric in metrics:
            hit = old.get(id(metric))
            if hit is not None and hit[0] is metric:
                text = hit[1]
            else:
                text = encoder(_One(metric))
                if openmetrics and text.endswith(b"# EOF\n"):
                    text = text[:-6]  # one EOF for the whole exposition, added below
            # Holding the metric keeps its id() from being reused by another object.
            new[id(metric)] = (metric, text)
            chunks.append(text)
        if openmetrics:
            chunks.append(b"# EOF\n")
        body = b"".join(chunks)
        if gz:
            body = gzip.compress(body, compresslevel=self.gzip_level)
        self._parts[content_type] = new
        self._whole[(content_type, gz)] = (metrics, body)
        return body


# ------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------


LANDING = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>iscsi-ha exporter</title></head>
<body>
<h1>iscsi-ha exporter</h1>
<p>iscsi-ha {version}{host}: DRBD, iSCSI target and virtual IP that follow the pool master.</p>
<ul>
<li><a href="metrics">Metrics</a> (as of the controller's last cycle)</li>
<li><a href="healthz">Health</a> (200 while cycles keep running)</li>
</ul>
</body>
</html>
"""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connections
    server_version = f"iscsi-ha/{__version__}"
    timeout = IDLE_TIMEOUT
    # Headers and body go out in two writes; with Nagle on, the body would wait ~40 ms for the
    # client's delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def handle_one_request(self) -> None:
        conn = self.server.conn_of(self.connection)
        if conn is not None and conn.requests:
            # Keep-alive: wait for the next request up to IDLE_TIMEOUT, then give it
            # HEADER_TIMEOUT in total to arrive (a client dribbling one byte a second does not
            # get to keep the connection).
            self.server.mark(conn, "idle", IDLE_TIMEOUT)
            try:
                # StreamRequestHandler buffers its input (rbufsize -1): a BufferedReader,
                # which typeshed only knows as BufferedIOBase.
                if not cast(io.BufferedReader, self.rfile).peek(1):
                    self.close_connection = True
                    return
            except OSError:
                self.close_connection = True
                return
            self.server.mark(conn, "head", HEADER_TIMEOUT)
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        conn = self.server.conn_of(self.connection)
        if conn is not None:
            conn.requests += 1
            self.server.mark(conn, "busy", 0.0)
        return ok

    def _serve(self, send_body: bool) -> None:
        web = self.server.web
        if not web.allow_request():
            self._send(429, "text/plain; charset=utf-8", b"Too Many Requests\n", send_body)
            return
        if web.auth_required:
            allowed = self._authorized(web)
            if allowed is None:  # the bcrypt budget is spent: no check, come back later
                self._send(
                    429,
                    "text/plain; charset=utf-8",
                    b"Too Many Requests: too many failed logins\n",
                    send_body,
                    [("Retry-After", "1")],
                )
                return
            if not allowed:
                self._send(
                    401,
                    "text/plain; charset=utf-8",
                    b"Unauthorized\n",
                    send_body,
                    [("WWW-Authenticate", 'Basic realm="iscsi-ha"')],
                )
                return
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        if path == "/metrics":
            names = parse_qs(url.query).get("name[]")
            body, headers = self.server.exposition.render(
                self.headers.get("Accept"), self.headers.get("Accept-Encoding"), names
            )
            self._send(200, None, body, send_body, headers)
        elif path == "/healthz":
            code, text = health(self.server.get_snapshot(), time.time())
            self._send(code, "text/plain; charset=utf-8", text.encode(), send_body)
        elif path == "/":
            snap = self.server.get_snapshot()
            host = f" on {html.escape(snap.hostname)}" if snap is not None else ""
            page = LANDING.format(version=html.escape(__version__), host=host)
            self._send(200, "text/html; charset=utf-8", page.encode(), send_body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"Not Found: try /metrics\n", send_body)

    def _authorized(self, web: WebConfig) -> Optional[bool]:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = (
                base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        return web.check_credentials(user, password, str(self.client_address[0]))

    def _send(
        self,
        code: int,
        content_type: Optional[str],
        body: bytes,
        send_body: bool,
        headers: Optional[list[tuple[str, str]]] = None,
    ) -> None:
        self.send_response(code)
        for name, value in self.server.web.headers.items():
            self.send_header(name, value)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in headers or ():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        log.debug("%s %s", self.address_string(), format % args)


class _Conn:
    """One accepted connection: its socket, what it is doing and until when it may."""

    __slots__ = ("sock", "client", "state", "since", "deadline", "requests")

    def __init__(self, sock: socket.socket, client: str, now: float, deadline: float) -> None:
        self.sock = sock
        self.client = client
        self.state = "new"  # new (handshake, first request head) | head | busy | idle | closing
        self.since = now
        self.deadline = deadline
        self.requests = 0


_WAITING = ("new", "head", "idle")  # states in which a connection costs us and gives nothing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # a burst of connects waits in the kernel, not in SYN retries

    def __init__(
        self,
        family: int,
        address: tuple,
        web: WebConfig,
        exposition: Exposition,
        get_snapshot: Callable[[], Optional[Snapshot]],
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.address_family = family
        self.web = web
        self.exposition = exposition
        self.get_snapshot = get_snapshot
        self.max_connections = max_connections
        self._conns: dict[int, _Conn] = {}  # id(socket as accepted) -> its record
        self._by_sock: dict[int, _Conn] = {}  # id(socket the handler has) -> the same record
        self._lock = threading.Lock()
        self.evicted = 0  # connections closed to make room or for being too slow (for tests)
        self.refused = 0  # connections closed at accept (their address holds too many)
        super().__init__(address, _Handler)

    # -- the connection table

    def process_request(self, request: Any, client_address: Any) -> None:
        """Runs in the accept loop: admit the connection, making room if the table is full."""
        now = time.monotonic()
        first = HEADER_TIMEOUT + (HANDSHAKE_TIMEOUT if self.web.tls is not None else 0.0)
        client = str(client_address[0]) if client_address else ""
        with self._lock:
            live = [c for c in self._conns.values() if c.state != "closing"]
            per_client: dict[str, int] = {}
            for c in live:
                per_client[c.client] = per_client.get(c.client, 0) + 1
            if per_client.get(client, 0) >= PER_CLIENT:
                self.refused += 1
                self.shutdown_request(request)
                return
            if len(live) >= self.max_connections:
                waiting = [c for c in live if c.state in _WAITING]
                if not waiting or len(self._conns) >= 2 * self.max_connections:
                    # Everything is busy answering (or closing): this one waits for nothing.
                    self.refused += 1
                    self.shutdown_request(request)
                    return
                self._close(min(waiting, key=lambda c: (-per_client[c.client], c.since)))
            conn = _Conn(request, client, now, now + first)
            self._conns[id(request)] = conn
            self._by_sock[id(request)] = conn
        try:
            super().process_request(request, client_address)
        except Exception:  # no thread to be had: drop this connection, keep serving
            self._forget(request)
            self.shutdown_request(request)

    def conn_of(self, sock: Any) -> Optional[_Conn]:
        return self._by_sock.get(id(sock))

    def mark(self, conn: _Conn, state: str, limit: float) -> None:
        with self._lock:
            if conn.state == "closing":
                return
            now = time.monotonic()
            conn.state, conn.since, conn.deadline = state, now, now + limit

    def _close(self, conn: _Conn) -> None:
        """Wake the connection's thread with EOF; it then ends and leaves the table."""
        conn.state = "closing"
        self.evicted += 1
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _forget(self, request: Any) -> None:
        with self._lock:
            conn = self._conns.pop(id(request), None)
            if conn is not None:
                self._by_sock.pop(id(conn.sock), None)
                self._by_sock.pop(id(request), None)

    def service_actions(self) -> None:
        """Every poll interval of the accept loop: close connections past their deadline."""
        now = time.monotonic()
        with self._lock:
            for conn in list(self._conns.values()):
                if conn.state in _WAITING and now > conn.deadline:
                    self._close(conn)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # "[::]" and ":port" listen on IPv4 too, like Go's net.Listen.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # HTTPServer.server_bind would call getfqdn(), a DNS lookup that can hang.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's own thread: the handshake cannot block the accept loop.
        accepted = request
        conn = self.conn_of(accepted)
        try:
            tls = self.web.tls
            if tls is not None:
                request.settimeout(HANDSHAKE_TIMEOUT)
                try:
                    request = tls.context.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError) as e:
                    log.info("TLS handshake with %s failed: %s", client_address[0], e)
                    request.close()
                    return
                if conn is not None:
                    with self._lock:  # from now on the TLS socket is the one to shut down
                        conn.sock = request
                        self._by_sock[id(request)] = conn
                if not peer_allowed(request.getpeercert(), tls.client_allowed_sans):
                    log.info("client certificate of %s has no allowed SAN", client_address[0])
                    self.shutdown_request(request)
                    return
            try:
                super().finish_request(request, client_address)
            finally:
                if tls is not None:
                    self.shutdown_request(request)
        finally:
            self._forget(accepted)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)

    def close_connections(self) -> None:
        with self._lock:
            for conn in list(self._conns.values()):
                self._close(conn)


@dataclass
class ExporterHandle:
    """A running exporter: where it listens, and how to stop it."""

    host: str
    port: int
    scheme: str
    _server: _Server = field(repr=False)
    _threads: tuple[threading.Thread, ...] = field(repr=False)
    _stop: threading.Event = field(repr=False)

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._server.shutdown()  # returns once serve_forever has left its loop
        self._server.server_close()
        self._server.close_connections()
        for t in self._threads:
            t.join(timeout)


def parse_listen(listen: str) -> tuple[int, str, int]:
    """``host:port`` -> (address family, host, port); ValueError names what is wrong."""
    text = listen.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"listen address {listen!r}: expected [IPv6]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(
                f"listen address {listen!r}: expected host:port (e.g. 0.0.0.0:{DEFAULT_PORT})"
            )
        if ":" in host:
            raise ValueError(
                f"listen address {listen!r}: write IPv6 addresses in brackets, "
                f"e.g. [::]:{DEFAULT_PORT}"
            )
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {listen!r}: port {port!r} is not a number 0-65535")
    if host == "":
        return (
            (socket.AF_INET6, "::", int(port))
            if socket.has_ipv6
            else (socket.AF_INET, "0.0.0.0", int(port))
        )
    try:
        ip = ipaddress.ip_address(host)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return family, host, int(port)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise ValueError(f"listen address {listen!r}: cannot resolve {host!r}: {e}") from e
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0]), int(port)


def start_exporter(
    listen: str,
    registry: CollectorRegistry,
    get_snapshot: Any,
    web_config_file: Optional[str] = None,
) -> ExporterHandle:
    """Check the web config, listen, and serve in daemon threads; see the module docstring.

    Raises ``WebConfigError`` for a bad web configuration file, ``ValueError`` for a bad listen
    address and ``OSError`` when the address cannot be bound -- all before serving anything.
    """
    web = load_web_config(web_config_file)
    family, host, port = parse_listen(listen)
    get = snapshot_getter(get_snapshot)
    exposition = Exposition(registry)
    server = _Server(family, (host, port), web, exposition, get)
    stop = threading.Event()

    def warm() -> None:
        seen: object = object()
        while not stop.wait(WARM_POLL):
            try:
                snap = get()
                if snap is not seen:
                    seen = snap
                    exposition.warm()
            except Exception:  # keep warming; a scrape would show the same error to its client
                log.exception("pre-rendering the metrics failed")

    threads = (
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="exporter-http",
            daemon=True,
        ),
        threading.Thread(target=warm, name="exporter-warm", daemon=True),
    )
    for t in threads:
        t.start()
    bound = server.server_address
    handle = ExporterHandle(
        host=str(bound[0]),
        port=int(bound[1]),
        scheme="https" if web.tls else "http",
        _server=server,
        _threads=threads,
        _stop=stop,
    )
    log.info(
        "exporter listening on %s (%s)",
        handle.url,
        "TLS " + web.tls.client_auth_type if web.tls else "plain HTTP",
    )
    return handle
