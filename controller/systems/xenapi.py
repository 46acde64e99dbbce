"""A small, bounded XenAPI client shared by the SR adapter and the split-brain evidence.

The XenAPI SDK (``pip install XenAPI``) speaks XML-RPC through ``xmlrpc.client`` and sets no socket
timeout anywhere: a xapi that accepts the connection and never answers would hang the controller's
loop for good. So every transport here is a subclass that puts a real socket timeout on its
connection (``timeout`` seconds for the connect, the TLS handshake and each read), and every call
is timed and counted in the runner's ``CommandStats`` under the command name ``xenapi``, a timed
out call counted as a timeout, so ``iscsi_ha_command_timeouts_total{command="xenapi"}`` shows it.

Three ways to reach xapi, as in the configuration:

* ``local``: the Unix socket ``/var/lib/xcp/xapi`` on dom0. The SDK's own ``UDSTransport`` derives
  the socket path from the URL's host name by turning ``_`` into ``/``, which breaks for any path
  with an underscore in it, so the connection here is given the path directly;
* ``https://host`` (certificate checked only with ``verify_tls``: XenServer ships self-signed ones);
* ``http://host:port`` (labs and tests).

Only the pool master accepts a login. On a slave, ``session.login_with_password`` fails with
``["HOST_IS_SLAVE", "<master address>"]``; the client then logs in at that address with the same
scheme and port (``https`` when it started from the local socket) and keeps talking to the master
until something goes wrong, when it starts again from the configured URL. The SDK re-logs in by
itself when a call answers ``SESSION_INVALID`` (xapi restarted, e.g. on a master change); if that
re-login is told ``HOST_IS_SLAVE``, the call is retried once at the new master. A call is retried
only in that case, when it provably never ran.

The password is never logged and never put in a message: errors from the login path are raised
without their cause chain, and any message is scrubbed of the password as a last defence.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
import xmlrpc.client
from typing import Any, Callable, Optional, Sequence, Tuple
from urllib.parse import urlsplit
from xml.parsers.expat import ExpatError

import XenAPI  # untyped: mypy.ini says so

from .runner import DEFAULT_TIMEOUT, CommandStats

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/lib/xcp/xapi"
STATS_NAME = "xenapi"
API_VERSION = "1.0"
ORIGINATOR = "iscsi-ha"
# A login may be redirected twice: once to the master, once more if the master moved meanwhile.
MAX_REDIRECTS = 2
# socket.timeout is TimeoutError only from Python 3.10 on.
_TIMEOUTS = (socket.timeout, TimeoutError)


class XenApiError(Exception):
    """A XenAPI call that did not succeed, with what xapi said when it said something.

    ``details`` is xapi's ErrorDescription (``("HOST_OFFLINE", "OpaqueRef:...")``) for an API
    failure and empty for a transport failure. ``timed_out`` and ``unreachable`` tell transport
    failures apart from refusals, so callers can stop early instead of waiting again.
    """

    def __init__(
        self,
        message: str,
        details: Sequence[str] = (),
        timed_out: bool = False,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: Tuple[str, ...] = tuple(str(d) for d in details)
        self.timed_out = timed_out
        self.unreachable = unreachable

    @property
    def code(self) -> Optional[str]:
        """xapi's error code (``HOST_OFFLINE``), None for transport failures."""
        return self.details[0] if self.details else None

    @property
    def description(self) -> str:
        """xapi's error in one line (``HOST_OFFLINE OpaqueRef:...``), else the message."""
        return " ".join(self.details) if self.details else self.message

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------------------------
# Transports with a socket timeout
# --------------------------------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket whose path is given, not derived from the URL."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class UnixTransport(XenAPI.UDSTransport):
    """The SDK's Unix-socket transport (keeps its tracing/originator headers), with a timeout."""

    _connection: Any  # (host, connection), as in xmlrpc.client.Transport

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self.unix_path = path
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        # Same contract as UDSTransport.make_connection: fresh extra headers per request, one
        # cached keep-alive connection.
        self._extra_headers: list = []
        self.with_tracecontext()
        self.with_originator()
        if self._connection and host == self._connection[0]:
            return self._connection[1]
        conn = _UnixHTTPConnection(self.unix_path, self.timeout)
        self._connection = host, conn
        return conn


class TimeoutTransport(xmlrpc.client.Transport):
    """Plain HTTP with a socket timeout (connections connect lazily, so setting it here works)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        return conn


class TimeoutSafeTransport(xmlrpc.client.SafeTransport):
    """HTTPS with a socket timeout; the timeout also bounds the TLS handshake."""

    def __init__(self, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPSConnection:
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        return conn


def tls_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        # XenServer and XCP-ng ship self-signed certificates; checking is opt-in.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def master_url(configured: str, address: str) -> str:
    """Where to log in after ``HOST_IS_SLAVE``: the master's address, same scheme and port.

    From the local socket (``local``) the master is another host, so https on its default port.
    An IPv6 address gets the brackets a URL needs.
    """
    host = address.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if configured == "local":
        return f"https://{host}"
    parts = urlsplit(configured)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class XenApiClient:
    """One logged-in XenAPI session, re-established as needed; thread-safe; every call bounded."""

    def __init__(
        self,
        url: str = "local",
        socket_path: str = DEFAULT_SOCKET,
        username: str = "root",
        password: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        verify_tls: bool = False,
        stats: Optional[CommandStats] = None,
    ) -> None:
        if url != "local" and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"XenAPI url must be 'local', https://HOST or http://HOST: {url!r}")
        self.url = url.rstrip("/")
        self.socket_path = socket_path
        self.username = username
        self._password = password
        self.timeout = timeout
        self.verify_tls = verify_tls
        self.stats = stats if stats is not None else CommandStats()
        self._lock = threading.RLock()
        self._session: Optional[XenAPI.Session] = None
        self._current: Optional[str] = None  # URL of the logged-in endpoint (the master)

    def __repr__(self) -> str:
        return f"XenApiClient(url={self.url!r}, username={self.username!r}, timeout={self.timeout})"

    # -- public --------------------------------------------------------------------------------

    @property
    def connected_to(self) -> Optional[str]:
        """The endpoint of the current session (after any HOST_IS_SLAVE redirect), or None."""
        return self._current

    def call(self, method: str, *args: Any) -> Any:
        """``client.call("PBD.plug", ref)``: the session argument is added. Raises XenApiError."""
        return self._timed(lambda: self._call(method, args))

    def login(self) -> None:
        """Log in now (normally done by the first call). Raises XenApiError."""
        self._timed(self._ensure_session)

    def _timed(self, work: Callable[[], Any]) -> Any:
        """``work()`` under the lock, timed and counted as one ``xenapi`` command."""
        with self._lock:
            start = time.monotonic()
            timed_out = False
            try:
                return work()
            except XenApiError as exc:
                timed_out = exc.timed_out
                raise
            finally:
                self.stats.record(STATS_NAME, time.monotonic() - start, timed_out)

    def close(self) -> None:
        """Log out (bounded, errors ignored) and drop the connection. Safe to call twice."""
        with self._lock:
            session, self._session, self._current = self._session, None, None
            if session is None:
                return
            start = time.monotonic()
            timed_out = False
            try:
                session.xenapi.session.logout()
            except _TIMEOUTS:
                timed_out = True
            except Exception as exc:  # logging out is best effort
                log.debug("XenAPI logout failed: %s", self._scrub(str(exc)))
            finally:
                self.stats.record(STATS_NAME, time.monotonic() - start, timed_out)
                _close_transport(session)

    def __enter__(self) -> "XenApiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _call(self, method: str, args: Tuple[Any, ...]) -> Any:
        for attempt in (1, 2):
            session = self._ensure_session()
            where = self._current or self._describe(self.url)
            try:
                fn: Any = session.xenapi
                for part in method.split("."):
                    fn = getattr(fn, part)
                return fn(*args)
            except XenAPI.Failure as exc:
                details = _details(exc)
                if details and details[0] == "HOST_IS_SLAVE" and len(details) > 1 and attempt == 1:
                    # The SDK's automatic re-login (after SESSION_INVALID) reached a host that is
                    # no longer the master: the call never ran; follow the master and retry once.
                    log.info("XenAPI at %s is now a slave; master is %s", where, details[1])
                    self._drop()
                    self._login_chain(master_url(self.url, details[1]))
                    continue
                raise XenApiError(
                    self._scrub(f"XenAPI {method} at {where} failed: {' '.join(details)}"),
                    details=details,
                ) from None
            except Exception as exc:  # every transport failure becomes XenApiError
                self._drop(reset=True)
                raise self._transport_error(f"XenAPI {method}", where, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _ensure_session(self) -> XenAPI.Session:
        if self._session is None:
            self._login_chain(self.url)
        assert self._session is not None
        return self._session

    def _login_chain(self, url: str) -> None:
        """Log in at ``url``, following HOST_IS_SLAVE to the master (at most MAX_REDIRECTS)."""
        for _ in range(MAX_REDIRECTS + 1):
            session = self._new_session(url)
            where = self._describe(url)
            try:
                session.login_with_password(self.username, self._password, API_VERSION, ORIGINATOR)
            except XenAPI.Failure as exc:
                _close_transport(session)
                details = _details(exc)
                if details and details[0] == "HOST_IS_SLAVE" and len(details) > 1:
                    log.debug("XenAPI at %s is a slave; logging in at master %s", where, details[1])
                    url = master_url(self.url, details[1])
                    continue
                # No cause chain: the SDK's exception context holds the login parameters.
                raise XenApiError(
                    self._scrub(
                        f"XenAPI login as {self.username!r} at {where} refused: "
                        + " ".join(details)
                    ),
                    details=details,
                ) from None
            except Exception as exc:
                _close_transport(session)
                raise self._transport_error(
                    f"XenAPI login as {self.username!r}", where, exc
                ) from None
            self._session = session
            self._current = where
            log.debug("XenAPI session open at %s", where)
            return
        raise XenApiError(
            f"XenAPI login at {self._describe(self.url)}: still redirected after "
            f"{MAX_REDIRECTS} HOST_IS_SLAVE answers (the pool master is moving)",
            unreachable=True,
        )

    def _new_session(self, url: str) -> XenAPI.Session:
        transport: xmlrpc.client.Transport
        if url == "local":
            transport = UnixTransport(self.socket_path, self.timeout)
            uri = "http://localhost/"
        elif url.startswith("https:"):
            transport = TimeoutSafeTransport(self.timeout, tls_context(self.verify_tls))
            uri = url + "/"
        else:
            transport = TimeoutTransport(self.timeout)
            uri = url + "/"
        return XenAPI.Session(uri, transport=transport)

    def _drop(self, reset: bool = False) -> None:
        """Forget the session (the connection state is unknown after a failure)."""
        if self._session is not None:
            _close_transport(self._session)
        self._session = None
        self._current = None
        if reset:
            log.debug("XenAPI session dropped; next call starts again at %s", self.url)

    def _describe(self, url: str) -> str:
        return f"local socket {self.socket_path}" if url == "local" else url

    def _transport_error(self, what: str, where: str, exc: BaseException) -> XenApiError:
        if isinstance(exc, _TIMEOUTS) or (
            isinstance(exc, xmlrpc.client.Fault) and exc.faultCode == 504
        ):
            return XenApiError(
                f"{what} at {where} timed out after {self.timeout:g}s", timed_out=True
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            text = f"{what} at {where}: TLS certificate not trusted ({exc.verify_message})"
        elif isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or type(exc).__name__
            text = f"{what} at {where}: connection failed: {reason}"
        elif isinstance(exc, xmlrpc.client.ProtocolError):
            text = f"{what} at {where}: HTTP {exc.errcode} {exc.errmsg}"
        elif isinstance(exc, http.client.HTTPException):
            text = f"{what} at {where}: connection broken: {type(exc).__name__} {exc}".rstrip()
        elif isinstance(exc, ExpatError):
            text = f"{what} at {where}: the answer is not XML-RPC ({exc})"
        elif isinstance(exc, xmlrpc.client.Fault):
            text = f"{what} at {where}: {exc.faultString}"
        else:
            text = f"{what} at {where}: {type(exc).__name__}: {exc}"
        return XenApiError(self._scrub(text), unreachable=True)

    def _scrub(self, text: str) -> str:
        # Short passwords would blank out ordinary words; they never appear in xapi's answers.
        if len(self._password) >= 3:
            text = text.replace(self._password, "***")
        return text


def _details(exc: "XenAPI.Failure") -> Tuple[str, ...]:
    details = exc.details if isinstance(exc.details, (list, tuple)) else [exc.details]
    return tuple(str(d) for d in details)


def _close_transport(session: "XenAPI.Session") -> None:
    try:
        session("close")()
    except Exception:  # closing a dead socket may fail; nothing to do about it
        pass
