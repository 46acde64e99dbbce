"""The Prometheus exporter-toolkit web configuration file (``--web.config.file``).

Operators who run other Prometheus exporters already have one of these files, with TLS
certificates and bcrypt-hashed users; iscsi-ha reads the same format with the same key names and
meanings (prometheus/exporter-toolkit ``docs/web-configuration.md``)::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file's directory
      key_file: server.key           # (or cert: / key: with the PEM text inline)
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt # (or client_ca: inline)
      client_allowed_sans: [prometheus.example.org]
      min_version: TLS12             # TLS10 | TLS11 | TLS12 (default) | TLS13
      max_version: TLS13             # default TLS13
    http_server_config:
      headers: {X-Content-Type-Options: nosniff}
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt, e.g. htpasswd -nBC 10 "" | tr -d ':\\n'
    rate_limit: {interval: 1s, burst: 20}

The file is checked completely when the daemon starts -- YAML syntax, unknown keys, the
certificate and key actually loading, the client CA, every hash being bcrypt -- and any problem
raises ``WebConfigError`` naming the file and the key, so the daemon refuses to start rather than
serve metrics unprotected. Unlike exporter-toolkit the file is read once (restart to reload).

Where Python's ``ssl`` module cannot do what the Go toolkit does, the setting is refused with a
message saying so, never silently weakened:

* ``client_auth_type: RequireAnyClientCert`` (require a certificate but do not verify it): ssl
  can only require *and verify*; use ``RequireAndVerifyClientCert`` with ``client_ca_file``.
* ``cipher_suites`` and ``curve_preferences`` (Go names): not supported; OpenSSL's defaults apply.

``RequestClientCert`` (ask for a certificate, never verify or require it) grants access exactly
like ``NoClientCert``, so it is served as ``NoClientCert``. ``http_server_config.http2`` is
accepted and has no effect: the endpoint speaks HTTP/1.1.

Basic auth: bcrypt is slow on purpose (~70 ms at cost 10), so successful checks are cached (by a
SHA-256 of user, hash and password, never the password itself), as exporter-toolkit does; a
scrape with known credentials costs a dictionary lookup. Unknown users are checked against a
dummy hash so a wrong user name takes as long as a wrong password.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import bcrypt

from ..controller.config import ConfigError, load_yaml
from ..controller.files import CONFIG_LIMIT, read_capped

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "RequireClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
# exporter-toolkit only lets these headers be set, some only to these values.
ALLOWED_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
HTTP_KEYS = ("http2", "headers")
RATE_KEYS = ("interval", "burst")

BCRYPT_RE = re.compile(r"^\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}$")
# A cost-10 hash of a password nobody knows: checked for unknown users so that timing does not
# tell which user names exist.
DUMMY_HASH = b"$2b$10$kOLUFy2bHGzid.mvgeLoK.MAQkHVEwiqmN9r9AO8xKxc18ST3x9de"
AUTH_CACHE_SIZE = 256
# Cost 10 is ~70 ms per check, 12 ~0.3 s; every step doubles it.
MAX_BCRYPT_COST = 12
# bcrypt time for unknown credentials: each client may use a tenth of a core, all together a
# quarter, both after a burst of one second (a scraper's first login always gets through).
BCRYPT_CLIENT_SHARE = 0.1
BCRYPT_TOTAL_SHARE = 0.25
BCRYPT_BURST = 1.0
MAX_BCRYPT_CLIENTS = 4096
MAX_RATE_INTERVAL = 3600.0
MAX_RATE_BURST = 1_000_000


class WebConfigError(ValueError):
    """A web configuration file that cannot be used; str() names the file and the key."""


@dataclass(frozen=True)
class TlsSettings:
    context: ssl.SSLContext
    client_auth_type: str
    min_version: str
    max_version: str
    client_allowed_sans: tuple[str, ...] = ()


@dataclass
class WebConfig:
    """What the HTTP server needs from the file: a TLS context, users, headers, a rate limit."""

    path: Optional[str] = None
    tls: Optional[TlsSettings] = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    rate_limit_interval: float = 0.0
    rate_limit_burst: int = 0

    def __post_init__(self) -> None:
        self._auth_cache: dict[bytes, bool] = {}
        # Serialises bcrypt runs (CPU-heavy), as exporter-toolkit does; cached checks skip it.
        self._bcrypt_lock = threading.Lock()
        self._limiter = (
            TokenBucket(self.rate_limit_interval, self.rate_limit_burst)
            if self.rate_limit_interval > 0
            else None
        )
        self._bcrypt_budget = CpuBudget()

    @property
    def auth_required(self) -> bool:
        return bool(self.users)

    def check_credentials(self, user: str, password: str, client: str = "") -> Optional[bool]:
        """True when ``user`` exists and ``password`` matches its bcrypt hash; None when the
        check was not made because ``client`` (or everybody) used up the bcrypt budget.

        Credentials that passed once are answered from the cache, never limited: the flood of
        wrong passwords that the budget stops cannot lock out a scraper that knows its own.
        """
        stored = self.users.get(user)
        known = stored is not None
        hashed = stored if stored is not None else DUMMY_HASH
        key = hashlib.sha256(b"\0".join((user.encode(), hashed, password.encode()))).digest()
        if known and self._auth_cache.get(key):
            return True
        with self._bcrypt_lock:  # the budget is looked at inside: queued checks see it spent
            if not self._bcrypt_budget.allow(client):
                return None
            started = time.monotonic()
            try:
                ok = bcrypt.checkpw(password.encode(), hashed)
            except ValueError:
                ok = False
            self._bcrypt_budget.charge(client, time.monotonic() - started)
        ok = ok and known
        if ok:
            if len(self._auth_cache) >= AUTH_CACHE_SIZE:
                self._auth_cache.clear()  # crude but bounded; a few re-checks cost 70 ms each
            self._auth_cache[key] = True
        return ok

    def allow_request(self) -> bool:
        """The token bucket of ``rate_limit``; always True when it is off."""
        return self._limiter is None or self._limiter.take()


class TokenBucket:
    """One token every ``interval`` seconds, at most ``burst`` saved (golang.org/x/time/rate)."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) / self.interval)
            self._stamp = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


class CpuBudget:
    """Seconds of bcrypt a client, and all clients together, may spend per second.

    bcrypt is slow on purpose, so an unauthenticated client that sends wrong passwords as fast
    as it can would keep a core busy (~17 checks a second at cost 10). Each check is charged
    what it took; while a client's (or the global) account is overdrawn, its checks are
    refused (the server answers 429) until time pays it back. Charging time, not checks,
    keeps the limit the same at any bcrypt cost.
    """

    def __init__(
        self,
        per_client: float = BCRYPT_CLIENT_SHARE,
        overall: float = BCRYPT_TOTAL_SHARE,
        burst: float = BCRYPT_BURST,
    ) -> None:
        self.per_client = per_client
        self.overall = overall
        self.burst = burst
        self._lock = threading.Lock()
        self._accounts: dict[str, tuple[float, float]] = {}  # client -> (balance, stamp)

    def _balance(self, key: str, rate: float, now: float) -> float:
        balance, stamp = self._accounts.get(key, (self.burst, now))
        return min(self.burst, balance + (now - stamp) * rate)

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return (
                self._balance("", self.overall, now) > 0
                and self._balance("c:" + client, self.per_client, now) > 0
            )

    def charge(self, client: str, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._accounts) > MAX_BCRYPT_CLIENTS:
                self._accounts = {"": self._accounts.get("", (self.burst, now))}
            for key, rate in (("", self.overall), ("c:" + client, self.per_client)):
                self._accounts[key] = (self._balance(key, rate, now) - seconds, now)


def load_web_config(path: Optional[str]) -> WebConfig:
    """Read and check ``path``; None or "" means no file: plain HTTP, no authentication."""
    if not path:
        return WebConfig()
    try:
        text = read_capped(path, CONFIG_LIMIT).decode("utf-8")
    except OSError as e:
        raise WebConfigError(
            f"{path}: cannot read the web configuration file: {e.strerror or e}"
        ) from None
    except UnicodeDecodeError as e:
        raise WebConfigError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        # The controller's own YAML reading: the same limits, and messages that give the line
        # and column but never quote the file (it may hold an inline private key).
        data, duplicates = load_yaml(text, path)
    except ConfigError as e:
        raise WebConfigError(str(e).replace(": invalid YAML:", ": not valid YAML:")) from None
    if duplicates:
        raise WebConfigError(f"{path}: {duplicates[0]}")
    return parse_web_config(data, path)


def parse_web_config(data: Any, path: str) -> WebConfig:
    base = os.path.dirname(os.path.abspath(path))
    if data is None:
        data = {}
    top = _mapping(data, path, "(top level)")
    _known(top, TOP_KEYS, path, "")

    tls_raw = _mapping(top.get("tls_server_config") or {}, path, "tls_server_config")
    _known(tls_raw, TLS_KEYS, path, "tls_server_config.")
    tls = _tls(tls_raw, base, path) if _tls_enabled(tls_raw) else None

    http = _mapping(top.get("http_server_config") or {}, path, "http_server_config")
    _known(http, HTTP_KEYS, path, "http_server_config.")
    if "http2" in http and not isinstance(http["http2"], bool):
        raise WebConfigError(f"{path}: http_server_config.http2: must be true or false")
    headers = _headers(http.get("headers") or {}, path)

    users = _users(top.get("basic_auth_users") or {}, path)

    rate = _mapping(top.get("rate_limit") or {}, path, "rate_limit")
    _known(rate, RATE_KEYS, path, "rate_limit.")
    interval = _duration(rate.get("interval", 0), path, "rate_limit.interval")
    if interval > MAX_RATE_INTERVAL:
        raise WebConfigError(
            f"{path}: rate_limit.interval: at most {MAX_RATE_INTERVAL:g}s (one hour)"
        )
    burst = rate.get("burst", 0)
    if not isinstance(burst, int) or isinstance(burst, bool) or not 0 <= burst <= MAX_RATE_BURST:
        raise WebConfigError(
            f"{path}: rate_limit.burst: not a whole number from 0 to {MAX_RATE_BURST}"
        )
    if interval > 0 and burst < 1:
        raise WebConfigError(f"{path}: rate_limit.burst: must be at least 1 when interval is set")

    return WebConfig(
        path=path,
        tls=tls,
        users=users,
        headers=headers,
        rate_limit_interval=interval,
        rate_limit_burst=burst,
    )


# ------------------------------------------------------------------------------------------


def _mapping(value: Any, path: str, key: str) -> dict:
    if not isinstance(value, dict):
        raise WebConfigError(f"{path}: {key}: expected a mapping, got {type(value).__name__}")
    return value


def _known(section: dict, keys: tuple[str, ...], path: str, prefix: str) -> None:
    for key in section:
        if key not in keys:
            raise WebConfigError(f"{path}: {prefix}{key}: unknown key (known: {', '.join(keys)})")


def _str(section: dict, key: str, path: str, prefix: str = "tls_server_config.") -> str:
    value = section.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebConfigError(f"{path}: {prefix}{key}: expected a string")
    return value


def _tls_enabled(t: dict) -> bool:
    # exporter-toolkit's TLSConfig.IsEnabled: any of these set means "serve TLS".
    return any(
        t.get(k)
        for k in (
            "cert_file",
            "cert",
            "key_file",
            "key",
            "client_ca_file",
            "client_ca",
            "client_auth_type",
        )
    )


_P = "tls_server_config."


@dataclass(frozen=True)
class _TlsMaterial:
    """The certificate, key and client CA: each as a file (made absolute) or inline PEM."""

    cert_file: str
    cert: str
    key_file: str
    key: str
    ca_file: str
    ca: str


def _tls_material(t: dict, base: str, path: str) -> _TlsMaterial:
    def file_key(key: str) -> str:
        value = _str(t, key, path)
        return os.path.join(base, value) if value else ""

    m = _TlsMaterial(
        file_key("cert_file"),
        _str(t, "cert", path),
        file_key("key_file"),
        _str(t, "key", path),
        file_key("client_ca_file"),
        _str(t, "client_ca", path),
    )
    if not m.cert_file and not m.cert:
        raise WebConfigError(f"{path}: {_P}cert_file: missing one of cert or cert_file")
    if not m.key_file and not m.key:
        raise WebConfigError(f"{path}: {_P}key_file: missing one of key or key_file")
    for k, both in (
        ("cert", m.cert and m.cert_file),
        ("key", m.key and m.key_file),
        ("client_ca", m.ca and m.ca_file),
    ):
        if both:
            raise WebConfigError(f"{path}: {_P}{k}: give either {k} or {k}_file, not both")
    return m


def _tls_versions(t: dict, path: str) -> tuple[str, str]:
    """(min_version, max_version) by exporter-toolkit's names, e.g. ("TLS12", "TLS13")."""
    versions = {}
    for k, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = t.get(k) or default
        if name not in TLS_VERSIONS:
            raise WebConfigError(
                f"{path}: {_P}{k}: unknown TLS version {name!r} (one of {', '.join(TLS_VERSIONS)})"
            )
        versions[k] = name
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        raise WebConfigError(
            f"{path}: {_P}min_version: {versions['min_version']} is newer than "
            f"max_version {versions['max_version']}"
        )
    return versions["min_version"], versions["max_version"]


def _client_auth(t: dict, m: _TlsMaterial, path: str) -> tuple[str, tuple[str, ...]]:
    """(client_auth_type, client_allowed_sans), refusing what Python's ssl cannot do."""
    auth = t.get("client_auth_type") or "NoClientCert"
    if auth not in CLIENT_AUTH_TYPES:
        raise WebConfigError(
            f"{path}: {_P}client_auth_type: invalid value {auth!r} "
            f"(one of {', '.join(CLIENT_AUTH_TYPES)})"
        )
    if auth in ("RequireAnyClientCert", "RequireClientCert"):
        raise WebConfigError(
            f"{path}: {_P}client_auth_type: {auth} (require a certificate without verifying "
            "it) cannot be done with Python's ssl module; use RequireAndVerifyClientCert with "
            "client_ca_file"
        )
    if (m.ca_file or m.ca) and auth == "NoClientCert":
        raise WebConfigError(
            f"{path}: {_P}client_ca_file: client CAs are configured without a "
            "client_auth_type that uses them"
        )
    for unsupported in ("cipher_suites", "curve_preferences"):
        if t.get(unsupported):
            raise WebConfigError(
                f"{path}: {_P}{unsupported}: not supported by iscsi-ha "
                "(Python's ssl module takes no Go cipher/curve names); remove "
                "the key to use OpenSSL's defaults"
            )
    sans = t.get("client_allowed_sans")
    if sans is not None:
        if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
            raise WebConfigError(f"{path}: {_P}client_allowed_sans: expected a list of strings")
        if auth != "RequireAndVerifyClientCert":
            raise WebConfigError(
                f"{path}: {_P}client_allowed_sans: requires client_auth_type "
                "RequireAndVerifyClientCert"
            )
    return auth, tuple(sans or ())


def _verify_clients(ctx: ssl.SSLContext, auth: str, m: _TlsMaterial, path: str) -> None:
    if auth not in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        # NoClientCert, and RequestClientCert whose unverified certificate grants nothing more.
        ctx.verify_mode = ssl.CERT_NONE
        return
    ctx.verify_mode = (
        ssl.CERT_REQUIRED if auth == "RequireAndVerifyClientCert" else ssl.CERT_OPTIONAL
    )
    try:
        if m.ca_file:
            ctx.load_verify_locations(cafile=m.ca_file)
        elif m.ca:
            ctx.load_verify_locations(cadata=m.ca)
        else:
            # Go verifies against the system roots when no client CA is given.
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    except (OSError, ssl.SSLError) as e:
        key_name = "client_ca_file" if m.ca_file else "client_ca"
        where = f" ({m.ca_file})" if m.ca_file else ""
        raise WebConfigError(
            f"{path}: {_P}{key_name}: cannot load the client CA{where}: {e}"
        ) from e


def _tls(t: dict, base: str, path: str) -> TlsSettings:
    m = _tls_material(t, base, path)
    min_version, max_version = _tls_versions(t, path)
    auth, sans = _client_auth(t, m, path)
    prefer = t.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError(f"{path}: {_P}prefer_server_cipher_suites: must be true or false")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = TLS_VERSIONS[min_version]
        ctx.maximum_version = TLS_VERSIONS[max_version]
    except ValueError as e:
        raise WebConfigError(f"{path}: {_P}min_version: not allowed by this OpenSSL: {e}") from e
    if prefer:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_cert_chain(ctx, m.cert_file, m.cert, m.key_file, m.key, path)
    _verify_clients(ctx, auth, m, path)
    return TlsSettings(
        context=ctx,
        client_auth_type=auth,
        min_version=min_version,
        max_version=max_version,
        client_allowed_sans=sans,
    )


def _load_cert_chain(
    ctx: ssl.SSLContext, cert_file: str, cert: str, key_file: str, key: str, path: str
) -> None:
    p = "tls_server_config."
    for k, f in (("cert_file", cert_file), ("key_file", key_file)):
        if f and not os.path.isfile(f):
            raise WebConfigError(f"{path}: {p}{k}: {f} does not exist or is not a file")
    tmp: list[str] = []
    try:
        # ssl loads certificates from files only: inline PEM goes through a private temp file.
        for text in (cert, key):
            if text:
                fd, name = tempfile.mkstemp(prefix="iscsi-ha-web-", suffix=".pem")
                tmp.append(name)
                with os.fdopen(fd, "w") as pem:
                    pem.write(text)
        it = iter(tmp)
        certfile = cert_file or next(it)
        keyfile = key_file or next(it)
        try:
            ctx.load_cert_chain(certfile=certfile, keyfile=keyfile)
        except (OSError, ssl.SSLError) as e:
            which = "cert_file" if cert_file else "cert"
            raise WebConfigError(
                f"{path}: {p}{which}: cannot load the certificate "
                f"({cert_file or 'inline'}) with its key ({key_file or 'inline'}): {e}"
            ) from e
    finally:
        for name in tmp:
            os.unlink(name)


def _headers(headers: Any, path: str) -> dict[str, str]:
    headers = _mapping(headers, path, "http_server_config.headers")
    out = {}
    for name, value in headers.items():
        where = f"{path}: http_server_config.headers.{name}"
        if name not in ALLOWED_HEADERS:
            raise WebConfigError(
                f"{where}: this header can not be configured (one of {', '.join(ALLOWED_HEADERS)})"
            )
        if not isinstance(value, str):
            raise WebConfigError(f"{where}: expected a string")
        allowed = ALLOWED_HEADERS[name]
        if allowed and value not in allowed:
            raise WebConfigError(f"{where}: invalid value {value!r} (one of {', '.join(allowed)})")
        if value:
            out[name] = value
    return out


def _users(users: Any, path: str) -> dict[str, bytes]:
    users = _mapping(users, path, "basic_auth_users")
    out = {}
    for name, hashed in users.items():
        where = f"{path}: basic_auth_users.{name}"
        if not isinstance(name, str) or not name:
            raise WebConfigError(f"{path}: basic_auth_users: user name {name!r} is not a string")
        if ":" in name:
            raise WebConfigError(f"{where}: a user name cannot contain ':' (basic auth)")
        m = BCRYPT_RE.match(hashed) if isinstance(hashed, str) else None
        if m is None or not 4 <= int(m.group(1)) <= 31:
            # Never echo the value: it may be a plain-text password put there by mistake.
            raise WebConfigError(
                f"{where}: not a bcrypt hash (expected $2y$<cost>$... as made by htpasswd -nBC 10)"
            )
        if int(m.group(1)) > MAX_BCRYPT_COST:
            # Each failed login costs one check: at cost 16 that is ~5 s of a core per request.
            raise WebConfigError(
                f"{where}: bcrypt cost {int(m.group(1))} is too slow to check "
                f"on every wrong password (at most {MAX_BCRYPT_COST}; make "
                "the hash with htpasswd -nBC 10)"
            )
        out[name] = hashed.encode()
    return out


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def _duration(value: Any, path: str, key: str) -> float:
    """A Go duration ("1s", "250ms", "1m30s", "0"); a bare number is seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1e9:
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0.0
        pos, total = 0, 0.0
        for m in _GO_DURATION.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _GO_UNITS[m.group(2)]
            pos = m.end()
        if pos == len(text) and pos > 0:
            return total
    shown = repr(value) if isinstance(value, str) and len(value) < 40 else "the value"
    raise WebConfigError(f"{path}: {key}: {shown} is not a duration such as 1s or 250ms")


def peer_allowed(cert: Optional[dict], allowed: tuple[str, ...]) -> bool:
    """exporter-toolkit's client_allowed_sans: some SAN of the client certificate is listed.

    ``cert`` is ``SSLSocket.getpeercert()``; DNS names, e-mail addresses, IP addresses and URIs
    count, compared exactly (IP addresses in their canonical form).
    """
    if not allowed:
        return True
    if not cert:
        return False
    wanted = {_canonical_ip(a) for a in allowed}
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "IP Address":
            value = _canonical_ip(value)
        if kind in ("DNS", "email", "IP Address", "URI") and value in wanted:
            return True
    return False


def _canonical_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return text
