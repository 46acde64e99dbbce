"""The peer channel: a small request/response API between the two controllers of a pool.

Over the **management network** (never the DRBD replication link: it must work when that link is
down), mutually authenticated TLS on port 19857 (``peer.port``). Why our own endpoint and not
XAPI's ``host.call_plugin``: that call is routed through the pool master's xapi, and the moments
the channel is needed are exactly those when the master may be dead or the pool split (the
fence-peer handler when the link breaks; the sequential-failure boot of a host that is alone). Our
endpoint needs only the two hosts; the bundled Python brings its own OpenSSL.

Authentication is pinned certificates: each host has its own key and self-signed certificate, and
accepts exactly one certificate from the other side (``peer.peer_cert_file``), compared byte for
byte after the TLS handshake verified it. A client or server that presents anything else is refused
during the handshake and logged. Nothing else listens: the channel allows only the operations in
``OPERATIONS`` below.

Wire format: one JSON object per connection, one line each way::

    -> {"op": "outdate", "args": {"resource": "iscsi1"}}
    <- {"ok": true, "result": {"resource": "iscsi1", "disk": "Outdated", ...}}
    <- {"ok": false, "error": "refused", "message": "iscsi1 is Primary here ..."}

Every call is bounded: the client has one deadline for connect + handshake + request + answer; the
server cuts a connection off after ``timeout`` seconds and serves a handful at once. Every call is
logged on both sides (operation, peer, outcome, duration).

Operations (named, so later features add to the list instead of inventing a second channel):

* ``ping``: who answers (host name, version).
* ``status``: the peer's pool role and DRBD states as of its last cycle (never waits for a cycle).
* ``outdate``: ``drbdadm outdate RESOURCE`` here, for the other host's fence-peer handler. Refused
  while this host is Primary for it (DRBD refuses too; the refusal says so first).
* ``switchover-facts``, ``-arm``, ``-release``, ``-wait``, ``-abort``, ``-end``: the parts of
  ``iscsi-cfg switchover``, served by ``switchover.Switchover`` (its docstring has the protocol).
* ``splitbrain``: this host's split-brain evidence, one of DRBD's resolve steps, or the audit
  line, for ``iscsi-cfg split-brain`` on the other host (``controller/splitbrain_ops.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .model import PeerObservation

log = logging.getLogger("iscsi_ha.peer")

MAX_MESSAGE = 64 * 1024
MAX_CONNECTIONS = 8
OPERATIONS = (
    "ping",
    "status",
    "outdate",
    "splitbrain",
    "switchover-facts",
    "switchover-arm",
    "switchover-release",
    "switchover-wait",
    "switchover-abort",
    "switchover-end",
)

Handler = Callable[[Mapping[str, Any]], Dict[str, Any]]


class PeerError(Exception):
    """A call that did not get an answer (``kind``: unreachable, timeout, tls, bad_answer) or
    got a refusal (``kind``: the error code the server sent, e.g. "refused")."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Refused(Exception):
    """Raised by a handler: the operation is not allowed now; ``str()`` says why, ``code`` is
    the machine-readable kind sent back ("refused", "primary", "unknown_resource")."""

    def __init__(self, message: str, code: str = "refused") -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------ TLS


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def pinned_fingerprint(peer_cert_file: str) -> str:
    with open(peer_cert_file, encoding="ascii") as fh:
        return fingerprint(ssl.PEM_cert_to_DER_cert(fh.read()))


def tls_context(server: bool, cert_file: str, key_file: str, peer_cert_file: str) -> ssl.SSLContext:
    """TLS 1.2+ with a client certificate required both ways and only the peer's trusted."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(cafile=peer_cert_file)
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Identity is the pinned certificate, not a host name: the peer may be reached by address.
    ctx.check_hostname = False
    if hasattr(ssl, "VERIFY_X509_STRICT"):  # self-signed pins need no CA extensions
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return ctx


def _check_pin(sock: ssl.SSLSocket, pin: str) -> None:
    der = sock.getpeercert(binary_form=True)
    if der is None or fingerprint(der) != pin:
        raise ssl.SSLError("the peer's certificate is not the pinned one")


# ------------------------------------------------------------------------------ client


class PeerClient:
    def __init__(
        self, address: str, port: int, context: ssl.SSLContext, pin: str, timeout: float = 2.0
    ) -> None:
        self.address, self.port = address, port
        self.context, self.pin = context, pin
        self.timeout = timeout

    def call(
        self, op: str, args: Optional[Mapping[str, Any]] = None, timeout: Optional[float] = None
    ) -> Dict[str, Any]:
        """The result of ``op`` on the peer; raises PeerError. Never takes longer than
        ``timeout`` (default: the configured one), whatever the network does."""
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        t0 = time.monotonic()
        try:
            answer = self._exchange(op, dict(args or {}), deadline)
        except PeerError as exc:
            log.info(
                "peer call %s to %s:%d: %s: %s (%.2fs)",
                op,
                self.address,
                self.port,
                exc.kind,
                exc,
                time.monotonic() - t0,
            )
            raise
        took = time.monotonic() - t0
        if not answer.get("ok"):
            kind = str(answer.get("error") or "failed")
            message = str(answer.get("message") or kind)
            log.info(
                "peer call %s to %s:%d refused: %s (%.2fs)",
                op,
                self.address,
                self.port,
                message,
                took,
            )
            raise PeerError(kind, message)
        log.info("peer call %s to %s:%d: ok (%.2fs)", op, self.address, self.port, took)
        result = answer.get("result")
        return result if isinstance(result, dict) else {}

    def _exchange(self, op: str, args: Dict[str, Any], deadline: float) -> Dict[str, Any]:
        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerError("timeout", f"no answer within the deadline ({op})")
            return remaining

        where = f"{self.address}:{self.port}"
        try:
            raw = socket.create_connection((self.address, self.port), timeout=left())
        except socket.timeout:
            raise PeerError("timeout", f"cannot connect to {where}: timed out") from None
        except OSError as exc:
            raise PeerError(
                "unreachable", f"cannot connect to {where}: {exc.strerror or exc}"
            ) from None
        try:
            raw.settimeout(left())
            try:
                sock = self.context.wrap_socket(raw, server_hostname=None)
                _check_pin(sock, self.pin)
            except socket.timeout:
                raise PeerError("timeout", f"TLS handshake with {where} timed out") from None
            except (ssl.SSLError, ssl.CertificateError) as exc:
                raise PeerError("tls", f"TLS with {where} refused: {exc}") from None
            except OSError as exc:
                raise PeerError("tls", f"TLS with {where} failed: {exc}") from None
            with sock:
                data = (json.dumps({"op": op, "args": args}) + "\n").encode()
                buf = b""
                try:
                    sock.settimeout(left())
                    sock.sendall(data)
                    while b"\n" not in buf and len(buf) <= MAX_MESSAGE:
                        sock.settimeout(left())
                        chunk = sock.recv(4096)
                        if not chunk:
                            break
                        buf += chunk
                except socket.timeout:
                    raise PeerError("timeout", f"{where} did not answer {op} in time") from None
                except OSError as exc:
                    raise PeerError("unreachable", f"{where} dropped the call: {exc}") from None
        finally:
            raw.close()
        try:
            answer = json.loads(buf.split(b"\n", 1)[0])
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except ValueError:
            raise PeerError("bad_answer", f"{where} answered {op} with {buf[:80]!r}") from None
        return answer


# ------------------------------------------------------------------------------ server


class PeerServer:
    """Serves ``handlers`` ({op: function(args) -> result}) to the authenticated peer only."""

    def __init__(
        self,
        listen: Tuple[str, int],
        context: ssl.SSLContext,
        pin: str,
        handlers: Mapping[str, Handler],
        timeout: float = 2.0,
    ) -> None:
        self.context, self.pin = context, pin
        self.handlers = dict(handlers)
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stop = threading.Event()
        host, port = listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.address = self.sock.getsockname()[:2]
        self._thread = threading.Thread(target=self._serve, name="peer-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("peer channel listening on %s:%d", *self.address)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                log.warning("peer channel: %s refused: too many connections", addr[0])
                conn.close()
                continue
            threading.Thread(target=self._handle_slot, args=(conn, addr), daemon=True).start()

    def _handle_slot(self, conn: socket.socket, addr: Any) -> None:
        try:
            self.handle(conn, addr)
        finally:
            self._slots.release()

    def handle(self, conn: socket.socket, addr: Any) -> None:
        who = addr[0]
        deadline = time.monotonic() + self.timeout
        t0 = time.monotonic()
        try:
            conn.settimeout(self.timeout)
            try:
                sock = self.context.wrap_socket(conn, server_side=True)
                _check_pin(sock, self.pin)
            except (ssl.SSLError, OSError) as exc:
                # Anyone but the peer ends here: no certificate, another certificate, no TLS.
                log.warning("peer channel: refused %s: not the authenticated peer (%s)", who, exc)
                return
            with sock:
                buf = b""
                try:
                    while b"\n" not in buf:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or len(buf) > MAX_MESSAGE:
                            log.warning(
                                "peer channel: %s sent no complete request in time or "
                                "too much; cut off",
                                who,
                            )
                            return
                        sock.settimeout(remaining)
                        chunk = sock.recv(4096)
                        if not chunk:
                            break
                        buf += chunk
                except OSError as exc:
                    log.warning("peer channel: %s: %s", who, exc)
                    return
                answer, op = self.dispatch(buf.split(b"\n", 1)[0])
                log.info(
                    "peer channel: %s from %s: %s (%.2fs)",
                    op,
                    who,
                    "ok" if answer.get("ok") else answer.get("message"),
                    time.monotonic() - t0,
                )
                try:
                    sock.settimeout(max(0.1, deadline - time.monotonic()))
                    sock.sendall((json.dumps(answer) + "\n").encode())
                except OSError as exc:
                    log.info("peer channel: cannot answer %s: %s", who, exc)
        finally:
            conn.close()

    def dispatch(self, raw: bytes) -> Tuple[Dict[str, Any], str]:
        try:
            request = json.loads(raw)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError('expected {"op": NAME, "args": {...}}')
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("args must be an object")
        except ValueError as exc:
            return {"ok": False, "error": "bad_request", "message": str(exc)}, "?"
        op = request["op"]
        handler = self.handlers.get(op)
        if handler is None:
            return {
                "ok": False,
                "error": "unknown_op",
                "message": f"unknown operation; known: {', '.join(sorted(self.handlers))}",
            }, op[:40]
        try:
            return {"ok": True, "result": handler(args)}, op
        except Refused as exc:
            return {"ok": False, "error": exc.code, "message": str(exc)}, op
        except Exception as exc:  # a handler bug must not kill the server
            log.exception("peer channel: %s failed", op)
            return {"ok": False, "error": "failed", "message": f"{type(exc).__name__}: {exc}"}, op


# ------------------------------------------------------------------------------ the watcher


class PeerWatcher:
    """Asks the peer for its status in the background, so a cycle never waits for the network.

    ``current()`` is what a cycle reads: the last answer and its age, or "unreachable" once the
    last answer is older than ``max_age``.
    """

    def __init__(
        self, client: PeerClient, max_age: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.max_age = max_age
        self.monotonic = monotonic
        self._last: Optional[Tuple[float, PeerObservation]] = None
        self._error: Optional[str] = None

    def poll(self) -> None:
        try:
            result = self.client.call("status")
        except PeerError as exc:
            self._error = str(exc)
            return
        resources = result.get("resources") or {}
        obs = PeerObservation(
            reachable=True,
            pool_role=str(result.get("pool_role")) if result.get("pool_role") else None,
            resources={
                str(k): {str(a): str(b) for a, b in dict(v).items()}
                for k, v in dict(resources).items()
            },
            view_age=_duration(result.get("age")),
        )
        self._last, self._error = (self.monotonic(), obs), None

    def current(self) -> PeerObservation:
        if self._last is None:
            return PeerObservation(False, error=self._error or "no answer yet")
        at, obs = self._last
        age = self.monotonic() - at
        if age > self.max_age:
            return PeerObservation(False, age=age, error=self._error or f"no answer for {age:.0f}s")
        return dataclasses.replace(
            obs, age=age, answered_at=at, last_poll_failed=self._error is not None
        )


def _duration(value: Any) -> Optional[float]:
    """A non-negative finite number of seconds from the peer's answer, else None (unknown)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return max(0.0, float(value)) if math.isfinite(value) else None


# ------------------------------------------------------------------------------ operations


def make_handlers(
    hostname: str,
    version: str,
    resources: Tuple[str, ...],
    snapshot: Callable[[], Any],
    drbd: Any,
    settle: float = 1.5,
) -> Dict[str, Handler]:
    """The operations this host serves to its peer. ``snapshot`` is the controller's (never
    blocks); ``drbd`` the DRBD adapter (``observe``, ``outdate``)."""

    def ping(args: Mapping[str, Any]) -> Dict[str, Any]:
        return {"host": hostname, "version": version}

    def status(args: Mapping[str, Any]) -> Dict[str, Any]:
        snap = snapshot()
        obs = snap.last.observation if snap is not None and snap.last is not None else None
        if obs is None:
            return {"host": hostname, "pool_role": None, "resources": {}, "age": None}
        return {
            "host": hostname,
            "pool_role": obs.pool.role.value,
            "manual": bool(snap.manual.enabled),
            "age": time.time() - (snap.last.started + snap.last.duration),
            "resources": {
                r.name: {
                    "role": r.role,
                    "peer_role": r.peer_role,
                    "connection": r.connection,
                    "disk": r.disk,
                    "peer_disk": r.peer_disk,
                }
                for r in obs.resources
            },
        }

    def outdate(args: Mapping[str, Any]) -> Dict[str, Any]:
        name = args.get("resource")
        if name not in resources:
            raise Refused(
                f"{str(name)[:60]!r} is not a resource of {hostname} ({', '.join(resources)})",
                "unknown_resource",
            )
        (res,) = drbd.observe([name])
        # The two sides notice a broken link a moment apart; DRBD refuses to outdate a disk that
        # is still Connected. Give this side a moment (bounded) to notice too.
        until = time.monotonic() + settle
        while res.peer_reachable and not res.error and time.monotonic() < until:
            time.sleep(0.1)
            (res,) = drbd.observe([name])
        if res.error:
            raise Refused(f"cannot read {name} on {hostname}: {res.error}", "failed")
        if res.role == "Primary":
            raise Refused(f"{name} is Primary on {hostname}: not outdating it", "primary")
        if res.disk in ("Outdated", "Inconsistent", "Diskless"):
            return {"resource": name, "disk": res.disk, "changed": False}
        step = drbd.outdate(name)
        (after,) = drbd.observe([name])
        if not step.ok:
            raise Refused(f"{hostname}: {step.message}", "failed")
        log.warning(
            "peer channel: outdated %s on request of the peer's fence-peer handler (disk %s -> %s)",
            name,
            res.disk,
            after.disk,
        )
        return {"resource": name, "disk": after.disk, "changed": True}

    return {"ping": ping, "status": status, "outdate": outdate}


# DRBD's documented fence-peer exit codes (drbd.conf(5), handlers / fence-peer).
FENCE_PEER_INCONSISTENT = 3  # the peer's disk was already Inconsistent
FENCE_PEER_OUTDATED = 4  # the peer's disk was set Outdated (or was Outdated already)
FENCE_PEER_UNREACHABLE = 5  # the peer could not be reached
FENCE_PEER_PRIMARY = 6  # the peer refused: it is Primary for the resource
# 7 (peer fenced off the cluster) belongs to resource-and-stonith: never returned here.


def fence_exit_code(
    result: Optional[Mapping[str, Any]], error: Optional[PeerError]
) -> Tuple[int, str]:
    """(exit code, sentence) for the fence-peer handler from the peer's answer to ``outdate``."""
    if error is not None:
        if error.kind == "primary":
            return FENCE_PEER_PRIMARY, f"the peer refused to outdate: {error}"
        return FENCE_PEER_UNREACHABLE, f"the peer could not outdate its disk: {error}"
    disk = str((result or {}).get("disk"))
    if disk == "Inconsistent":
        return FENCE_PEER_INCONSISTENT, "the peer's disk is Inconsistent"
    if disk == "Outdated":
        return FENCE_PEER_OUTDATED, "the peer's disk is Outdated"
    return FENCE_PEER_UNREACHABLE, f"the peer answered but its disk is {disk}, not Outdated"
