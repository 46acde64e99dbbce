"""Fuzzing everything else the controller reads (#16): the configuration loader, the web config,
the control-socket protocol, the manual-mode file, pool.conf, ``ip addr`` and XenAPI's SR records.

Same contract as the DRBD fuzzing: no uncaught exception, and every rejection names what it
rejected -- a config problem starts with the file and a key path or a line; a web-config error
names the file; a control-socket error is a JSON answer with a message. Seeds are fixed
(``derandomize``) so a CI failure reproduces; cases run are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path
from typing import Dict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iscsi_ha.controller.config import Config, ConfigError, load_config, parse_config
from iscsi_ha.controller.control import ControlServer, _BadRequest, parse_request
from iscsi_ha.controller.state import MANUAL_MODE_FILE, ManualModeStore
from iscsi_ha.controller.systems.pool import parse_pool_conf
from iscsi_ha.controller.systems.sr import build_sr_observation
from iscsi_ha.controller.systems.vip import AddrParseError, parse_addr_show, parse_arping
from iscsi_ha.exporter.webconfig import WebConfigError, load_web_config, parse_web_config
from test_control import Host, StubDaemon, converged_master
from test_vip import ADDR_VIP, ADDR_VIP_BOTH_PREFIXES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / "examples" / "iscsi-ha.yaml").read_text()
# Every documented key switched on (all defaults), plus the required ones: the richest real file.
FULL = re.sub(r"(?m)^(\s*)#(?=[a-z_][a-z0-9_]*:)", r"\1", EXAMPLE)
WEB_CONFIGS = [
    "basic_auth_users:\n  alice: '$2y$10$" + "a" * 53 + "'\n"
    "rate_limit: {interval: 1s, burst: 20}\n"
    "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
    "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    "  client_allowed_sans: [prometheus.test]\n  min_version: TLS12\n",
    "tls_server_config:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n    MIIB\n"
    "    -----END CERTIFICATE-----\n  key: |\n    -----BEGIN PRIVATE KEY-----\n    MIGH\n"
    "    -----END PRIVATE KEY-----\n",
]
FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
SPICE = [
    b":",
    b"[",
    b"{",
    b"]",
    b"}",
    b"&a",
    b"*a",
    b"!!python/object:os.system",
    b"\x1b[31m",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"-",
    b"#",
    b"\n",
    b"  ",
    b'"',
    b"'",
    b"9" * 60,
    b"1e308",
    b"-1",
    b"~",
    b"<<: *a",
    b"%YAML 1.1\n",
    b"? ",
    b"|",
    b">",
    b"\t",
    b"\r",
]
RUN: Dict[str, int] = {}


def _mutate(data, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        pos = data.draw(st.integers(0, len(out)), label="pos")
        piece = data.draw(st.sampled_from(SPICE), label="piece")
        how = data.draw(st.sampled_from(["insert", "replace", "truncate", "drop-line"]))
        if how == "insert":
            out[pos:pos] = piece
        elif how == "replace":
            out[pos : pos + len(piece)] = piece
        elif how == "truncate":
            del out[pos:]
        else:
            start = out.rfind(b"\n", 0, pos) + 1
            end = out.find(b"\n", pos)
            del out[start : (end + 1 if end >= 0 else len(out))]
    return bytes(out)


# ---------------------------------------------------------------------------- config


def _check_config_file(path: Path) -> None:
    RUN["config"] = RUN.get("config", 0) + 1
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert exc.problems
        for line in str(exc).splitlines():
            assert line.startswith(f"{path}: "), line
            rest = line[len(f"{path}: ") :]
            # names what it rejected: "key.path: what", "line N...: what" or "what the file is"
            assert rest and "Traceback" not in rest, line
            assert ": " in rest or re.match(r"^[a-z]", rest), line
        return
    assert isinstance(cfg, Config)
    json.dumps(cfg.to_dict())  # a loaded config is always printable


def test_config_truncated_at_every_line(tmp_path):
    path = tmp_path / "c.yaml"
    lines = FULL.splitlines(keepends=True)
    for i in range(len(lines) + 1):
        path.write_text("".join(lines[:i]))
        _check_config_file(path)
        if i < len(lines):
            path.write_text("".join(lines[:i] + lines[i + 1 :]))
            _check_config_file(path)


@FUZZ
@given(
    st.sampled_from([FULL, EXAMPLE, "resources: [iscsi1]\nvip: {address: 10.10.10.3/24}\n"]),
    st.data(),
)
def test_config_mutated_bytes(tmp_path_factory, text, data):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(_mutate(data, text.encode()))
    _check_config_file(path)


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "iscsi1",
            "10.10.10.3/24",
            "/dev/drbd0",
            "ALL",
            "auto",
            "8.4",
            "9",
            "local",
            "https://x",
            "info",
            "eth0",
            "iqn.2024-01.org.x:y",
        ]
    ),
)
_KEYS = st.sampled_from(
    [
        "resources",
        "vip",
        "address",
        "interval",
        "drbd",
        "target",
        "luns",
        "lun",
        "path",
        "paths",
        "xenapi",
        "password_file",
        "control",
        "allowed_uids",
        "exporter",
        "listen",
        "tid",
        "timeout",
        "kernel_log",
        "probe_interval",
        "x",
        "password",
    ]
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=5)),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(_KEYS, _VALUES, max_size=8))
def test_config_generated_mappings(mapping):
    RUN["config-mapping"] = RUN.get("config-mapping", 0) + 1
    try:
        parse_config(mapping, "<fuzz>")
    except ConfigError as exc:
        assert exc.problems and all(str(exc).startswith("<fuzz>: ") for _ in [0])


# ---------------------------------------------------------------------------- web config


def _check_web(path: Path) -> None:
    RUN["web-config"] = RUN.get("web-config", 0) + 1
    try:
        load_web_config(str(path))
    except WebConfigError as exc:
        assert str(path) in str(exc), str(exc)
        assert "MIGH" not in str(exc) and "MIIB" not in str(exc)  # never the inline PEM


@FUZZ
@given(st.sampled_from(WEB_CONFIGS), st.data())
def test_web_config_mutated_bytes(tmp_path_factory, text, data):
    path = tmp_path_factory.mktemp("web") / "web.yml"
    path.write_bytes(_mutate(data, text.encode()))
    _check_web(path)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            ["tls_server_config", "http_server_config", "basic_auth_users", "rate_limit", "x"]
        ),
        st.recursive(
            _SCALARS,
            lambda inner: st.one_of(
                st.lists(inner, max_size=3),
                st.dictionaries(
                    st.sampled_from(
                        [
                            "cert_file",
                            "key",
                            "client_auth_type",
                            "min_version",
                            "headers",
                            "X-Frame-Options",
                            "interval",
                            "burst",
                            "alice",
                            "http2",
                        ]
                    ),
                    inner,
                    max_size=4,
                ),
            ),
            max_leaves=12,
        ),
        max_size=4,
    )
)
def test_web_config_generated(mapping):
    RUN["web-config-mapping"] = RUN.get("web-config-mapping", 0) + 1
    try:
        parse_web_config(mapping, "/fuzz/web.yml")
    except WebConfigError as exc:
        assert str(exc).startswith("/fuzz/web.yml: "), str(exc)


# ---------------------------------------------------------------------------- control socket


REQUESTS = [
    b'{"cmd": "status"}',
    b'{"cmd": "log", "since": 0}',
    b'{"cmd": "get"}',
    b'{"cmd": "manual-mode-enable"}',
    b'{"cmd": "become-primary"}',
]


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=300),
        st.sampled_from(REQUESTS).flatmap(lambda r: st.just(r)),
        st.builds(lambda r, d: d, st.sampled_from(REQUESTS), st.data()),
    )
)
def test_control_parse_request(raw):
    RUN["control-parse"] = RUN.get("control-parse", 0) + 1
    try:
        request = parse_request(raw if isinstance(raw, bytes) else b"{}")
    except _BadRequest as exc:
        assert str(exc).startswith("malformed request"), str(exc)
        return
    assert isinstance(request, dict) and isinstance(request["cmd"], str)


_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**30), 10**30),
        st.text(max_size=20),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    host = Host(str(tmp_path_factory.mktemp("state")), converged_master())
    return ControlServer(
        "/nonexistent/c.sock", StubDaemon(host.controller), (os.geteuid(),), read_timeout=0.5
    )


@FUZZ
@given(
    cmd=st.sampled_from(
        [
            "status",
            "get",
            "log",
            "manual-mode-enable",
            "manual-mode-disable",
            "become-primary",
            "become-secondary",
            "",
            "x" * 100,
            "\udcff",
        ]
    ),
    extra=st.dictionaries(st.sampled_from(["since", "cmd2", "x"]), _JSON, max_size=2),
)
def test_control_dispatch_any_request(control, cmd, extra):
    RUN["control-dispatch"] = RUN.get("control-dispatch", 0) + 1
    answer = control.dispatch({"cmd": cmd, **extra}, pid=1, uid=0)
    assert isinstance(answer, dict) and "ok" in answer
    if not answer["ok"]:
        assert answer.get("error") or answer.get("message"), answer
    json.dumps(answer, default=str)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.sampled_from(REQUESTS).map(lambda r: r + b"\n"),
        st.binary(min_size=1, max_size=50).map(lambda b: b'{"cmd": "' + b + b'"}\n'),
    )
)
def test_control_connection_any_bytes(control, raw):
    """The whole per-connection path over a real socket pair: always one JSON answer line."""
    RUN["control-connection"] = RUN.get("control-connection", 0) + 1
    server_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with server_end, client_end:

        def serve():
            try:
                control.handle(server_end)
            finally:
                server_end.shutdown(socket.SHUT_RDWR)  # what _handle_slot's close does

        t = threading.Thread(target=serve)
        t.start()
        client_end.sendall(raw)
        client_end.shutdown(socket.SHUT_WR)
        client_end.settimeout(2)
        buf = b""
        while True:
            chunk = client_end.recv(65536)
            if not chunk:
                break
            buf += chunk
        t.join(5)
        assert not t.is_alive()
    if not raw:
        assert buf == b""  # a probe: connected and closed without a word
        return
    answer = json.loads(buf.split(b"\n", 1)[0])
    assert "ok" in answer and (answer["ok"] or answer.get("error") or answer.get("message"))


# ---------------------------------------------------------------------------- small files


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.builds(lambda d: d, st.data()).map(lambda _: b"")))
def test_manual_mode_file_any_bytes(tmp_path_factory, raw):
    RUN["manual-mode"] = RUN.get("manual-mode", 0) + 1
    d = tmp_path_factory.mktemp("st")
    (d / MANUAL_MODE_FILE).write_bytes(raw)
    mode, problem = ManualModeStore(str(d)).load()
    assert problem is None or (mode.enabled and MANUAL_MODE_FILE in problem)


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200),
        st.sampled_from(["master", "slave:10.0.0.1"]).map(lambda t: t + "\ufffd\n"),
    )
)
def test_pool_conf_any_text(text):
    RUN["pool.conf"] = RUN.get("pool.conf", 0) + 1
    obs = parse_pool_conf(text)
    assert obs.role.value in ("master", "slave", "unknown")
    if obs.role.value == "unknown":
        assert obs.detail


@FUZZ
@given(st.sampled_from([ADDR_VIP, ADDR_VIP_BOTH_PREFIXES]), st.data())
def test_ip_addr_mutated(text, data):
    RUN["ip-addr"] = RUN.get("ip-addr", 0) + 1
    mutated = _mutate(data, text.encode()).decode("utf-8", errors="replace")
    try:
        parse_addr_show(mutated, "10.99.0.3/24")
    except AddrParseError as exc:
        assert str(exc)
    parse_arping(mutated)


_RECORD = st.dictionaries(
    st.sampled_from(
        [
            "uuid",
            "type",
            "PBDs",
            "host",
            "currently_attached",
            "SR",
            "name_label",
            "hostname",
            "address",
            "x",
        ]
    ),
    st.one_of(
        _SCALARS, st.lists(st.sampled_from(["OpaqueRef:1", "OpaqueRef:2", 3, None]), max_size=3)
    ),
    max_size=6,
)
_RECORDS = st.one_of(
    _SCALARS,
    st.lists(_RECORD, max_size=2),
    st.dictionaries(
        st.sampled_from(["OpaqueRef:1", "OpaqueRef:2", "x"]),
        st.one_of(_RECORD, _SCALARS),
        max_size=3,
    ),
)


@FUZZ
@given(_RECORDS, _RECORDS, _RECORDS)
def test_sr_records_any_shape(srs, pbds, hosts):
    RUN["sr-records"] = RUN.get("sr-records", 0) + 1
    obs = build_sr_observation(srs, pbds, hosts)
    assert obs.reachable


def test_zz_report():
    print(
        "\nfuzz inputs cases: "
        + ", ".join(f"{k} {v}" for k, v in sorted(RUN.items()))
        + f"; total {sum(RUN.values())}"
    )
    assert sum(RUN.values()) > 0
