"""The peer channel (controller/peer.py): real TLS on loopback, real certificates from openssl.

What must hold: only the pinned peer is served (no certificate, another certificate, or no TLS is
refused and logged); every call ends by its deadline whatever the other side does; a dead peer
never delays a cycle; the fence-peer handler exits with DRBD's documented codes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from iscsi_ha.controller.cycle import Controller, CycleSettings
from iscsi_ha.controller.model import PeerObservation, PoolObservation, PoolRole, StepResult
from iscsi_ha.controller.peer import (
    FENCE_PEER_INCONSISTENT,
    FENCE_PEER_OUTDATED,
    FENCE_PEER_PRIMARY,
    FENCE_PEER_UNREACHABLE,
    PeerClient,
    PeerError,
    PeerServer,
    PeerWatcher,
    Refused,
    fence_exit_code,
    make_handlers,
    pinned_fingerprint,
    tls_context,
)
from iscsi_ha.controller.state import ManualModeStore
from worlds import FakeSystems, res, world


def make_cert(directory, name):
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    exe = os.path.join(os.path.dirname(sys.executable), "iscsi-cfg")
    sub = directory / name
    proc = subprocess.run(
        [exe, "peer-cert", "--dir", str(sub), "--name", name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    os.replace(sub / "host.key", key)
    os.replace(sub / "host.crt", crt)
    return str(crt), str(key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    return {n: make_cert(d, n) for n in ("node1", "node2", "stranger")}


def server_for(certs, handlers, timeout=2.0, me="node1", peer="node2"):
    crt, key = certs[me]
    ctx = tls_context(True, crt, key, certs[peer][0])
    srv = PeerServer(
        ("127.0.0.1", 0), ctx, pinned_fingerprint(certs[peer][0]), handlers, timeout=timeout
    )
    srv.start()
    return srv


def client_for(certs, port, me="node2", trust="node1", timeout=2.0):
    crt, key = certs[me]
    ctx = tls_context(False, crt, key, certs[trust][0])
    return PeerClient("127.0.0.1", port, ctx, pinned_fingerprint(certs[trust][0]), timeout)


@pytest.fixture
def served(certs):
    calls = []

    def outdate(args):
        calls.append(args)
        if args.get("resource") == "primary-here":
            raise Refused("primary-here is Primary on node1: not outdating it", "primary")
        return {"resource": args["resource"], "disk": "Outdated", "changed": True}

    srv = server_for(certs, {"ping": lambda a: {"host": "node1"}, "outdate": outdate})
    yield srv, calls
    srv.stop()


def test_the_peer_is_served(certs, served):
    srv, calls = served
    client = client_for(certs, srv.address[1])
    assert client.call("ping") == {"host": "node1"}
    assert client.call("outdate", {"resource": "iscsi1"})["disk"] == "Outdated"
    assert calls == [{"resource": "iscsi1"}]
    with pytest.raises(PeerError) as err:
        client.call("outdate", {"resource": "primary-here"})
    assert err.value.kind == "primary" and "is Primary on node1" in str(err.value)
    with pytest.raises(PeerError) as err:
        client.call("format-disk")
    assert err.value.kind == "unknown_op"


def test_a_stranger_certificate_is_refused_both_ways(certs, served, caplog):
    srv, calls = served
    caplog.set_level(logging.INFO)
    stranger = client_for(certs, srv.address[1], me="stranger")
    with pytest.raises(PeerError) as err:
        stranger.call("outdate", {"resource": "iscsi1"})
    assert err.value.kind in ("tls", "unreachable")
    assert calls == []
    deadline = time.monotonic() + 5
    while "not the authenticated peer" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "not the authenticated peer" in caplog.text
    # A client that trusts the stranger, not node1: node1's server is not its peer either.
    wrong = client_for(certs, srv.address[1], trust="stranger")
    with pytest.raises(PeerError) as err:
        wrong.call("ping")
    assert err.value.kind == "tls"


def test_no_client_certificate_and_no_tls_are_refused(certs, served, caplog):
    srv, calls = served
    caplog.set_level(logging.INFO)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(srv.address, timeout=5) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b'{"op": "outdate", "args": {"resource": "iscsi1"}}\n')
                if not tls.recv(100):
                    raise OSError("closed")
    with socket.create_connection(srv.address, timeout=5) as raw:
        raw.sendall(b'{"op": "outdate", "args": {"resource": "iscsi1"}}\n')
        raw.settimeout(5)
        try:
            data = raw.recv(100)
        except ConnectionResetError:
            data = b""
        assert b'"ok"' not in data  # closed, reset or a TLS alert: never an answer
    assert calls == []
    deadline = time.monotonic() + 5  # the server logs from its own thread
    while (
        not all(
            w in caplog.text for w in ("WRONG_VERSION_NUMBER", "PEER_DID_NOT_RETURN_A_CERTIFICATE")
        )
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in caplog.text
    assert "WRONG_VERSION_NUMBER" in caplog.text
    # ... and the server still serves its peer.
    assert client_for(certs, srv.address[1]).call("ping") == {"host": "node1"}


def test_a_silent_server_cannot_hold_a_call_past_its_deadline(certs):
    # A TCP listener that never accepts: connect succeeds (backlog), TLS never answers.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    try:
        client = client_for(certs, lst.getsockname()[1], timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(PeerError) as err:
            client.call("ping")
        took = time.monotonic() - t0
        assert err.value.kind == "timeout" and took < 0.5 + 0.3, took
    finally:
        lst.close()


def test_a_slow_handler_is_bounded_too(certs):
    release = threading.Event()
    srv = server_for(certs, {"ping": lambda a: (release.wait(5), {})[1]})
    try:
        client = client_for(certs, srv.address[1], timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(PeerError) as err:
            client.call("ping")
        assert err.value.kind == "timeout" and time.monotonic() - t0 < 0.8
    finally:
        release.set()
        srv.stop()


def test_a_closed_port_is_unreachable_at_once(certs):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    with pytest.raises(PeerError) as err:
        client_for(certs, port).call("ping")
    assert err.value.kind == "unreachable" and time.monotonic() - t0 < 0.5


def test_a_dead_peer_never_delays_a_cycle(certs, tmp_path):
    lst = socket.socket()  # accepts TCP, never speaks TLS: the worst kind of dead
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    try:
        watcher = PeerWatcher(client_for(certs, lst.getsockname()[1], timeout=2.0), max_age=15)
        poller = threading.Thread(target=watcher.poll)
        poller.start()
        fake = FakeSystems(world(resources=(res(peer_role="Primary"),)))
        ctl = Controller(
            CycleSettings(resources=("iscsi1",)),
            fake.systems,
            lambda: PoolObservation(PoolRole.SLAVE),
            ManualModeStore(str(tmp_path / "state")),
            probe_vip=fake.probe,
            peer_status=watcher.current,
        )
        t0 = time.monotonic()
        r = ctl.run_cycle()
        assert time.monotonic() - t0 < 0.5, "the cycle waited for the peer"
        assert r.observation.peer.reachable is False
        poller.join(5)
        assert "timed out" in (watcher.current().error or "")
    finally:
        lst.close()


@pytest.mark.parametrize(
    "reported, expected",
    [(1.5, 1.5), (-3, 0.0), (True, None), ("2", None), (float("nan"), None), (None, None)],
)
def test_the_watcher_keeps_how_old_the_peers_view_was_and_a_failed_poll(certs, reported, expected):
    # decide() trusts the peer's "still Primary" only from a view newer than the link loss, and
    # forgets a cached one as soon as the peer stops answering (controller/decide.py).
    status = {
        "host": "node1",
        "pool_role": "slave",
        "age": reported,
        "resources": {"iscsi1": {"role": "Primary", "connection": "Connected"}},
    }
    srv = server_for(certs, {"status": lambda a: status})
    clock = [100.0]
    try:
        w = PeerWatcher(client_for(certs, srv.address[1]), max_age=15, monotonic=lambda: clock[0])
        w.poll()
        clock[0] += 2
        cur = w.current()
        assert cur.view_age == expected and not cur.last_poll_failed
        assert cur.view_ago() == (None if expected is None else 2 + expected)
    finally:
        srv.stop()
    w.poll()  # the server is gone: the answer stays (fresh) but the failure is said
    cur = w.current()
    assert cur.reachable and cur.last_poll_failed


def test_the_watcher_reports_the_peer_and_forgets_an_old_answer(certs):
    status = {
        "host": "node1",
        "pool_role": "master",
        "resources": {"iscsi1": {"role": "Primary", "disk": "UpToDate"}},
    }
    srv = server_for(certs, {"status": lambda a: status})
    clock = [100.0]
    try:
        w = PeerWatcher(client_for(certs, srv.address[1]), max_age=15, monotonic=lambda: clock[0])
        assert not w.current().reachable
        w.poll()
        cur = w.current()
        assert cur.reachable and cur.pool_role == "master"
        assert cur.resources["iscsi1"]["disk"] == "UpToDate"
        clock[0] += 16
        assert not w.current().reachable and "no answer for 16s" in w.current().error
    finally:
        srv.stop()


# ------------------------------------------------------------------ the operations


class Drbd:
    """The DRBD adapter's two calls the outdate operation uses, over a scripted state."""

    def __init__(self, r):
        self.r, self.outdated = r, 0

    def observe(self, names):
        return (self.r,)

    def outdate(self, name):
        self.outdated += 1
        if self.r.role == "Primary":
            return StepResult(False, "refused", True)
        self.r = res(
            name=self.r.name,
            role=self.r.role,
            connection=self.r.connection,
            peer_role="Unknown",
            disk="Outdated",
            peer_disk="DUnknown",
        )
        return StepResult(True, "")


def test_outdate_operation_refuses_a_primary_and_unknown_resources():
    primary = Drbd(res(role="Primary", connection="WFConnection", peer_role="Unknown"))
    h = make_handlers("node1", "0", ("iscsi1",), lambda: None, primary)
    with pytest.raises(Refused) as err:
        h["outdate"]({"resource": "iscsi1"})
    assert err.value.code == "primary" and primary.outdated == 0
    with pytest.raises(Refused) as err:
        h["outdate"]({"resource": "../etc"})
    assert err.value.code == "unknown_resource"
    secondary = Drbd(res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown"))
    h = make_handlers("node1", "0", ("iscsi1",), lambda: None, secondary)
    assert h["outdate"]({"resource": "iscsi1"}) == {
        "resource": "iscsi1",
        "disk": "Outdated",
        "changed": True,
    }
    assert h["outdate"]({"resource": "iscsi1"})["changed"] is False  # already Outdated
    assert secondary.outdated == 1


@pytest.mark.parametrize(
    "result, error, code",
    [
        ({"disk": "Outdated"}, None, FENCE_PEER_OUTDATED),
        ({"disk": "Inconsistent"}, None, FENCE_PEER_INCONSISTENT),
        ({"disk": "UpToDate"}, None, FENCE_PEER_UNREACHABLE),
        (None, PeerError("primary", "iscsi1 is Primary on node2"), FENCE_PEER_PRIMARY),
        (None, PeerError("timeout", "no answer"), FENCE_PEER_UNREACHABLE),
        (None, PeerError("tls", "refused"), FENCE_PEER_UNREACHABLE),
        (None, PeerError("failed", "(-?) DRBD said no"), FENCE_PEER_UNREACHABLE),
    ],
)
def test_fence_exit_codes_are_drbds(result, error, code):
    assert fence_exit_code(result, error)[0] == code
    assert (
        FENCE_PEER_INCONSISTENT,
        FENCE_PEER_OUTDATED,
        FENCE_PEER_UNREACHABLE,
        FENCE_PEER_PRIMARY,
    ) == (3, 4, 5, 6)


def _fence_config(tmp_path, certs, port, me="node2", peer="node1"):
    cfg = tmp_path / "iscsi-ha.yaml"
    cfg.write_text(
        textwrap.dedent(f"""\
        resources: [iscsi1]
        node_name: {me}
        vip: {{address: 10.99.77.3/24, interface: lo}}
        logging: {{syslog: false}}
        peer:
          address: 127.0.0.1
          port: {port}
          cert_file: {certs[me][0]}
          key_file: {certs[me][1]}
          peer_cert_file: {certs[peer][0]}
          timeout: 0.5
        """)
    )
    return cfg


def fence(cfg, resource="iscsi1"):
    exe = os.path.join(os.path.dirname(sys.executable), "iscsi-ha")
    env = dict(os.environ, DRBD_RESOURCE=resource)
    t0 = time.monotonic()
    proc = subprocess.run(
        [exe, "fence-peer", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    return proc, time.monotonic() - t0


def test_fence_peer_handler_as_drbd_runs_it(tmp_path, certs, served):
    srv, calls = served
    proc, _ = fence(_fence_config(tmp_path, certs, srv.address[1]))
    assert proc.returncode == 4, proc.stderr
    assert calls == [{"resource": "iscsi1"}]
    assert "the peer's disk is Outdated; exit 4" in proc.stderr
    proc, _ = fence(_fence_config(tmp_path, certs, srv.address[1]), "primary-here")
    assert proc.returncode == 5 and "not a resource" in proc.stderr  # not ours: never asked


def test_fence_peer_handler_with_a_dead_peer_exits_5_in_bounded_time(tmp_path, certs):
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    try:
        proc, took = fence(_fence_config(tmp_path, certs, lst.getsockname()[1]))
    finally:
        lst.close()
    assert proc.returncode == 5, proc.stderr
    assert "could not outdate" in proc.stderr
    assert took < 10  # 2 x peer.timeout for the call, plus Python's start-up


def test_fence_peer_refused_by_a_primary_peer_exits_6(tmp_path, certs):
    def outdate(args):
        raise Refused("iscsi1 is Primary on node1: not outdating it", "primary")

    srv = server_for(certs, {"outdate": outdate})
    try:
        proc, _ = fence(_fence_config(tmp_path, certs, srv.address[1]))
    finally:
        srv.stop()
    assert proc.returncode == 6, proc.stderr


def test_drbd_snippet_names_the_handler_and_the_fencing_policy():
    exe = os.path.join(os.path.dirname(sys.executable), "iscsi-cfg")
    proc = subprocess.run(
        [exe, "--config", "/etc/x.yaml", "drbd-snippet"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    assert "fencing resource-only;" in proc.stdout
    assert 'fence-peer "' in proc.stdout and 'fence-peer --config /etc/x.yaml";' in proc.stdout


def test_peer_status_json_is_plain(certs):
    snap_holder = {}
    h = make_handlers("node1", "0", ("iscsi1",), lambda: snap_holder.get("s"), Drbd(res()))
    assert h["status"]({})["pool_role"] is None  # before the first cycle
    json.dumps(h["ping"]({}))
    assert PeerObservation().reachable is False
