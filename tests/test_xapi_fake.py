"""The real XenAPI SDK, through ``XenApiClient``, against the wire-level xapi fake.

Every test talks real XML-RPC over loopback (or a Unix socket, or TLS): the fake answers in
xapi's wire format and the client under test is the real ``XenAPI`` package with our
transports. What is proved: login, the HOST_IS_SLAVE redirect, the SDK's re-login on
SESSION_INVALID, following a master move, a hung xapi bounded by the timeout and counted, clear
errors that never carry the password, the local Unix socket path, and the fake's script mode
(the control method a lab uses to move the master).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
import traceback
import uuid
import xmlrpc.client

import pytest
import XenAPI
from iscsi_ha.controller.systems.runner import CommandStats
from iscsi_ha.controller.systems.xenapi import XenApiClient, XenApiError, master_url
from xapi_fake import XapiFake, loopback_hosts, self_signed_cert

PASSWORD = "s3cret-Pa55"
FAKE_SCRIPT = os.path.join(os.path.dirname(__file__), "xapi_fake.py")


@pytest.fixture
def fake():
    pool = XapiFake(loopback_hosts(), master="node1", password=PASSWORD)
    pool.add_lvmoiscsi_sr(attached={"node1": True, "node2": False})
    with pool:
        yield pool


def client_for(url, **kw):
    kw.setdefault("password", PASSWORD)
    kw.setdefault("timeout", 2.0)
    return XenApiClient(url, **kw)


# --------------------------------------------------------------------------------------------
# The wire format, seen by a plain XML-RPC client and by the bare SDK
# --------------------------------------------------------------------------------------------


def test_wire_format_success_and_failure_structs(fake):
    raw = xmlrpc.client.ServerProxy(fake.url("node1"), allow_none=True)
    login = raw.session.login_with_password("root", PASSWORD, "1.0", "test")
    assert login["Status"] == "Success" and login["Value"].startswith("OpaqueRef:")
    session = login["Value"]

    assert raw.SR.get_all_records("OpaqueRef:bogus") == {
        "Status": "Failure",
        "ErrorDescription": ["SESSION_INVALID", "OpaqueRef:bogus"],
    }
    assert raw.SR.frobnicate(session)["ErrorDescription"] == [
        "MESSAGE_METHOD_UNKNOWN",
        "SR.frobnicate",
    ]
    assert raw.PBD.get_record(session, "OpaqueRef:nope")["ErrorDescription"] == [
        "HANDLE_INVALID",
        "PBD",
        "OpaqueRef:nope",
    ]
    assert raw.PBD.get_by_uuid(session, "no-such")["ErrorDescription"] == [
        "UUID_INVALID",
        "PBD",
        "no-such",
    ]
    assert raw.pool.get_all(session, "extra")["ErrorDescription"] == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        "pool.get_all",
        "1",
        "2",
    ]

    records = raw.SR.get_all_records(session)["Value"]
    iscsi = [r for r in records.values() if r["type"] == "lvmoiscsi"]
    assert len(iscsi) == 1
    # XenAPI sends 64-bit ints as decimal strings, booleans as <boolean>.
    assert isinstance(iscsi[0]["physical_size"], str) and iscsi[0]["physical_size"].isdigit()
    assert iscsi[0]["shared"] is True


def test_sdk_login_on_master_and_on_slave(fake):
    session = XenAPI.Session(fake.url("node1"))
    session.xenapi.login_with_password("root", PASSWORD, "1.0", "test")
    try:
        pool = session.xenapi.pool.get_all()[0]
        master = session.xenapi.pool.get_master(pool)
        assert session.xenapi.host.get_name_label(master) == "node1"
        assert fake.state()["sessions"] == 1
    finally:
        session.xenapi.session.logout()
    assert fake.state()["sessions"] == 0

    slave = XenAPI.Session(fake.url("node2"))
    with pytest.raises(XenAPI.Failure) as info:
        slave.xenapi.login_with_password("root", PASSWORD, "1.0", "test")
    assert info.value.details == ["HOST_IS_SLAVE", fake.host_record("node1")["address"]]


# --------------------------------------------------------------------------------------------
# XenApiClient
# --------------------------------------------------------------------------------------------


def test_client_logs_in_and_calls(fake):
    with client_for(fake.url("node1")) as client:
        hosts = client.call("host.get_all_records")
        assert sorted(h["name_label"] for h in hosts.values()) == ["node1", "node2"]
        assert client.connected_to == fake.url("node1")
        assert client.stats.calls["xenapi"] == 1
    assert fake.state()["sessions"] == 0  # logged out on close


def test_client_follows_host_is_slave_to_the_master(fake):
    with client_for(fake.url("node2")) as client:
        client.call("pool.get_all")
        assert client.connected_to == fake.url("node1")
    # The login was tried on the slave, everything else went to the master.
    assert ("node2", "session.login_with_password") in fake.calls
    assert ("node1", "pool.get_all") in fake.calls
    assert ("node2", "pool.get_all") not in fake.calls


def test_sdk_logs_in_again_after_session_invalid(fake):
    with client_for(fake.url("node1")) as client:
        client.call("pool.get_all")
        fake.invalidate_sessions()  # what a xapi restart does
        assert client.call("pool.get_all") == list(fake.records["pool"])
        assert fake.logins == 2


def test_client_follows_a_master_move(fake):
    with client_for(fake.url("node1")) as client:
        client.call("pool.get_all")
        fake.set_master("node2")  # HA-Lizard promotes node2; xapi restarts, sessions die
        pool = client.call("pool.get_all")[0]
        master = client.call("pool.get_master", pool)
        assert client.call("host.get_name_label", master) == "node2"
        assert client.connected_to == fake.url("node2")
        # Only the one call that met the move was retried: nothing failed.
        assert client.stats.timeouts == {}


def test_hung_xapi_times_out_within_the_timeout_and_is_counted(fake):
    stats = CommandStats()
    with client_for(fake.url("node1"), timeout=0.5, stats=stats) as client:
        client.call("pool.get_all")
        fake.set_delay(5)
        start = time.monotonic()
        with pytest.raises(XenApiError) as info:
            client.call("SR.get_all_records")
        elapsed = time.monotonic() - start
        assert 0.5 <= elapsed < 1.5
        assert info.value.timed_out and not info.value.details
        assert "SR.get_all_records" in str(info.value) and "timed out after 0.5s" in str(info.value)
        assert stats.timeouts == {"xenapi": 1}
        assert stats.calls == {"xenapi": 2}

        fake.set_delay(0)  # xapi recovers: the next call logs in again and works
        assert client.call("pool.get_all")
        assert stats.timeouts == {"xenapi": 1}


def test_hung_login_times_out_too(fake):
    fake.set_delay(5)
    client = client_for(fake.url("node1"), timeout=0.5)
    start = time.monotonic()
    with pytest.raises(XenApiError) as info:
        client.call("pool.get_all")
    assert time.monotonic() - start < 1.5
    assert info.value.timed_out and "login" in str(info.value)
    assert client.stats.timeouts == {"xenapi": 1}


def test_wrong_password_is_a_clear_error_without_the_password(fake, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-Passw0rd"
    client = client_for(fake.url("node2"), password=wrong)  # via the redirect, too
    with pytest.raises(XenApiError) as info:
        client.call("pool.get_all")
    err = info.value
    assert err.code == "SESSION_AUTHENTICATION_FAILED"
    assert "login as 'root'" in str(err) and "Authentication failure" in str(err)
    shown = [
        str(err),
        repr(err),
        repr(client),
        caplog.text,
        "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    ]
    for text in shown:
        assert wrong not in text
    assert not err.timed_out


def test_unreachable_xapi_is_an_error_not_a_hang():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = client_for(f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(XenApiError) as info:
        client.call("pool.get_all")
    assert time.monotonic() - start < 1.0
    assert info.value.unreachable and "Connection refused" in str(info.value)


def test_close_is_idempotent_and_logs_out(fake):
    client = client_for(fake.url("node1"))
    client.login()
    assert fake.state()["sessions"] == 1
    client.close()
    client.close()
    assert fake.state()["sessions"] == 0 and client.connected_to is None


def test_master_url_keeps_scheme_and_port():
    assert master_url("local", "10.0.0.2") == "https://10.0.0.2"
    assert master_url("https://10.0.0.1", "10.0.0.2") == "https://10.0.0.2"
    assert master_url("http://127.0.0.1:8080", "127.0.0.2") == "http://127.0.0.2:8080"
    assert master_url("https://[fe80::1]:443", "fe80::2") == "https://[fe80::2]:443"


def test_bad_url_is_rejected_at_construction():
    with pytest.raises(ValueError):
        XenApiClient("ftp://host")


# --------------------------------------------------------------------------------------------
# The local Unix socket and TLS
# --------------------------------------------------------------------------------------------


def test_local_unix_socket(fake, tmp_path):
    # An underscore in the path: the SDK's own UDSTransport would turn it into a slash.
    path = str(tmp_path / "var_lib_xcp" / "xapi")
    os.makedirs(os.path.dirname(path))
    fake.add_unix_socket("node1", path)
    with client_for("local", socket_path=path) as client:
        assert len(client.call("host.get_all")) == 2
        assert client.connected_to == f"local socket {path}"


def test_local_socket_missing_is_unreachable(tmp_path):
    path = str(tmp_path / "no-xapi")
    client = client_for("local", socket_path=path)
    with pytest.raises(XenApiError) as info:
        client.call("pool.get_all")
    assert info.value.unreachable and path in str(info.value)
    assert "No such file or directory" in str(info.value)


@pytest.fixture
def tls_pool(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert = self_signed_cert(str(tmp_path))
    # The local socket on a slave redirects to https://MASTER on the default port, as in dom0.
    pool = XapiFake(loopback_hosts(), master="node1", password=PASSWORD, port=443, tls=cert)
    try:
        pool.start()
    except PermissionError:
        pytest.skip("binding port 443 needs root")
    try:
        yield pool
    finally:
        pool.stop()


def test_local_socket_on_a_slave_redirects_to_the_https_master(tls_pool, tmp_path):
    path = str(tmp_path / "xapi")
    tls_pool.add_unix_socket("node2", path)
    master_address = tls_pool.host_record("node1")["address"]
    with client_for("local", socket_path=path) as client:
        assert len(client.call("host.get_all")) == 2
        assert client.connected_to == f"https://{master_address}"
    assert ("node2", "session.login_with_password") in tls_pool.calls
    assert ("node1", "host.get_all") in tls_pool.calls


def test_https_certificate_is_checked_only_when_asked(tls_pool):
    url = tls_pool.url("node1")
    with client_for(url, verify_tls=False) as client:
        assert client.call("pool.get_all")
    strict = client_for(url, verify_tls=True)
    with pytest.raises(XenApiError) as info:
        strict.call("pool.get_all")
    assert "TLS certificate not trusted" in str(info.value) and info.value.unreachable


# --------------------------------------------------------------------------------------------
# Script mode: a separate process a lab drives through the control methods
# --------------------------------------------------------------------------------------------


def _start_script(args, env=None, netns=None):
    argv = [sys.executable, FAKE_SCRIPT, *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(timeout=10)
    sel.close()
    if not ready:
        _stop(proc)
        raise AssertionError("the fake did not print its endpoints within 10 s")
    line = proc.stdout.readline()
    if not line:
        _stop(proc)
        raise AssertionError(f"the fake exited: {proc.stderr.read()}")
    return proc, json.loads(line)


def _stop(proc):
    proc.terminate()  # by PID: Popen signals exactly this process
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def test_script_mode_control_moves_the_master():
    hosts = loopback_hosts()
    spec = ",".join(f"{n}={a}" for n, a in hosts)
    proc, info = _start_script(
        ["--listen", "own:0", "--hosts", spec, "--master", "node1", "--password", PASSWORD]
    )
    try:
        endpoints = info["endpoints"]
        assert endpoints["node1"] == f"http://{hosts[0][1]}:{endpoints['node1'].rsplit(':', 1)[1]}"
        with client_for(endpoints["node2"]) as client:
            client.call("pool.get_all")
            assert client.connected_to == endpoints["node1"]
            srs = client.call("SR.get_all_records")
            assert [r["name_label"] for r in srs.values() if r["type"] == "lvmoiscsi"] == [
                "iSCSI-HA"
            ]

            control = xmlrpc.client.ServerProxy(endpoints["node2"], allow_none=True)
            assert control.fake.set_master("node2") is True
            assert control.fake.state()["hosts"]["node2"]["master"] is True

            client.call("pool.get_all")
            assert client.connected_to == endpoints["node2"]
    finally:
        _stop(proc)
    assert proc.returncode == 0


@pytest.mark.integration
def test_script_mode_endpoints_inside_a_network_namespace():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    ns = f"xapi-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    proc = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=10)
        # Inside the namespace 127.0.0.1 and 127.0.0.2 are its own loopback addresses.
        proc, info = _start_script(
            [
                "--listen",
                "own:0",
                "--hosts",
                "node1=127.0.0.1,node2=127.0.0.2",
                "--master",
                "node1",
                "--password",
                PASSWORD,
                "--netns",
                f"node1={ns},node2={ns}",
            ]
        )
        port = int(info["endpoints"]["node2"].rsplit(":", 1)[1])
        probe = (
            "import sys; from iscsi_ha.controller.systems.xenapi import XenApiClient as C\n"
            f"c = C('http://127.0.0.2:{port}', password={PASSWORD!r}, timeout=2)\n"
            "c.call('pool.get_all'); print(c.connected_to); c.close()\n"
        )
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"http://127.0.0.1:{port}"
        # Not in this (the root) namespace: nothing answers there on that port.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", port), timeout=1).close()
    finally:
        if proc is not None:
            _stop(proc)
        subprocess.run(["ip", "netns", "del", ns], timeout=10)
