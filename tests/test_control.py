"""The control socket, over real Unix sockets, in front of a real ``Controller``.

The controller is the real ``cycle.Controller`` (real decide(), execute(), manual-mode file); only
its systems are fakes at the protocol level: ``WorldSystems`` turns a ``worlds.FakeWorld`` into the
drbd / target / vip adapters, so a become-primary really promotes, serves and binds in that world.
Clients are real sockets, some of them run under another uid (``setpriv``) to exercise the mode of
the socket file and the SO_PEERCRED check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import replace
from typing import Any, Dict, List, Optional

import pytest
from iscsi_ha.controller import cli
from iscsi_ha.controller.cli import ask
from iscsi_ha.controller.commands import Command
from iscsi_ha.controller.config import Config, PathsConfig, VipConfig
from iscsi_ha.controller.control import ControlServer, ControlSocketError
from iscsi_ha.controller.cycle import Controller, CycleSettings
from iscsi_ha.controller.execute import Systems
from iscsi_ha.controller.model import (
    AnnounceVip,
    BindVip,
    Demote,
    Outcome,
    PoolObservation,
    PoolRole,
    Promote,
    ServeTarget,
    StartTargetDaemon,
    StepResult,
    StopServingTarget,
    UnbindVip,
    UpResource,
)
from iscsi_ha.controller.state import ManualModeStore
from worlds import FakeWorld, res, world

NOBODY = 65534


# --------------------------------------------------------------------------------------------
# A real Controller over a fake world
# --------------------------------------------------------------------------------------------


class _Part:
    def __init__(self, w: FakeWorld, done: List[str]) -> None:
        self.w, self.done = w, done

    def _do(self, action) -> StepResult:
        ok = self.w.apply(action)
        self.done.append(type(action).__name__)
        return StepResult(ok, "" if ok else "refused by DRBD (rc 11)", refused=not ok)


class WorldDrbd(_Part):
    def observe(self, names):
        return tuple(r for r in self.w.obs.resources if r.name in names)

    def up(self, name):
        return self._do(UpResource(name))

    def primary(self, name):
        return self._do(Promote(name))

    def secondary(self, name):
        return self._do(Demote(name))

    def generation_ids(self, name):
        return None  # DRBD's meta-data flags: not part of the fake world


class WorldTarget(_Part):
    def observe(self):
        return self.w.obs.target

    def start_daemon(self):
        return self._do(StartTargetDaemon())

    def serve(self):
        return self._do(ServeTarget())

    def stop_serving(self):
        return self._do(StopServingTarget())


class WorldVip(_Part):
    def observe(self):
        # What `ip addr show` can tell: local or not. Conflicts come from the probe.
        return replace(self.w.obs.vip, conflict=None, announce_due=False)

    def bind(self):
        return self._do(BindVip())

    def unbind(self):
        return self._do(UnbindVip())

    def announce(self):
        return self._do(AnnounceVip())


class Host:
    """A host: its world, the actions applied to it, the VIP probe's answer, and a Controller."""

    def __init__(self, state_dir: str, obs, probe_answer: Optional[bool] = False) -> None:
        self.world = FakeWorld(obs)
        self.done: List[str] = []
        self.probe_answer = probe_answer
        self.probes = 0
        self.state_dir = state_dir
        self.controller = self.new_controller()

    def probe(self) -> Optional[bool]:
        self.probes += 1
        return self.probe_answer

    def new_controller(self) -> Controller:
        """A fresh Controller over the same world and state directory (a restart)."""
        systems = Systems(
            WorldDrbd(self.world, self.done),
            WorldTarget(self.world, self.done),
            WorldVip(self.world, self.done),
        )
        settings = CycleSettings(
            resources=tuple(r.name for r in self.world.obs.resources),
            status_file=os.path.join(self.state_dir, "status"),
        )
        return Controller(
            settings,
            systems,
            lambda: self.world.obs.pool,
            ManualModeStore(self.state_dir),
            probe_vip=self.probe,
            hostname="test-host",
            drbd_version="8.4.11",
        )

    @property
    def roles(self):
        return [r.role for r in self.world.obs.resources]

    def set_pool(self, role: PoolRole, detail: str = "") -> None:
        self.world.obs = replace(self.world.obs, pool=PoolObservation(role, detail=detail))

    def set_resources(self, **kw) -> None:
        self.world.obs = replace(
            self.world.obs, resources=tuple(replace(r, **kw) for r in self.world.obs.resources)
        )


def converged_master():
    return world(
        pool=PoolRole.MASTER, resources=(res(role="Primary"),), serving=True, vip_local=True
    )


class StubDaemon:
    """What ControlServer needs of daemon.Daemon: .controller, .cfg, .config_path, .trigger()."""

    def __init__(self, controller: Controller, cfg: Optional[Config] = None) -> None:
        self.controller = controller
        self.cfg = cfg or Config(resources=("iscsi1",), vip=VipConfig(address="10.99.0.3/24"))
        self.config_path = "/etc/iscsi-ha/iscsi-ha.yaml"
        self.triggers: List[str] = []

    def trigger(self, why: str) -> None:
        self.triggers.append(why)


@pytest.fixture
def sockdir():
    """A directory every uid can traverse (pytest's tmp_path is 0700), removed afterwards."""
    d = tempfile.mkdtemp(prefix=f"ctl-{os.getpid()}-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def serving(daemon, path: str, **kw):
    # The uid running the tests may use the socket: root under CI, anyone in `make unit`.
    server = ControlServer(path, daemon, kw.pop("allowed_uids", (os.geteuid(),)), **kw)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def host(tmp_path):
    return Host(str(tmp_path / "state"), converged_master())


@pytest.fixture
def served(host, sockdir):
    daemon = StubDaemon(host.controller)
    path = os.path.join(sockdir, "run", "control.sock")
    with serving(daemon, path, read_timeout=0.5) as server:
        yield host, daemon, server, path


def wait_until(check, limit: float, what: str) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"not within {limit}s: {what}"
        time.sleep(0.01)


class WatchedLock:
    """The controller's lock, telling the test when somebody has to wait for it."""

    def __init__(self, lock) -> None:
        self.lock = lock
        self.waiting = threading.Event()

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            self.waiting.set()
            self.lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


def raw(path: str, data: bytes, timeout: float = 5.0) -> Dict[str, Any]:
    """Send bytes as they are; return the decoded answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(data)
        except BrokenPipeError:
            pass  # the server may answer and close before reading ("busy"): read its answer
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


def run_as(uid: int, code: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run a small Python client under another uid."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            sys.executable,
            "-c",
            textwrap.dedent(code),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


CLIENT = """
    import json, socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(sys.argv[1] if len(sys.argv) > 1 else {path!r})
    except PermissionError as exc:
        print(json.dumps({{"connect_error": "EACCES"}}))
        sys.exit(0)
    try:
        s.sendall(b'{{"cmd": "manual-mode-enable"}}\\n')
    except BrokenPipeError:
        pass  # refused before the request was read: the answer is still there to read
    print(s.makefile().readline().strip())
"""


# --------------------------------------------------------------------------------------------
# The socket file
# --------------------------------------------------------------------------------------------


@pytest.mark.root
def test_socket_file_is_0600_in_a_0755_directory_and_removed_on_stop(host, sockdir):
    path = os.path.join(sockdir, "run", "iscsi-ha", "control.sock")
    with serving(StubDaemon(host.controller), path):
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == 0
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755
        assert ask(path, {"cmd": "status"})["ok"] is True
        # No temporary names left behind.
        assert os.listdir(os.path.dirname(path)) == ["control.sock"]
    assert not os.path.exists(path)


def test_refuses_to_steal_the_socket_of_a_running_controller(served, caplog):
    host, daemon, server, path = served
    second = ControlServer(path, daemon)
    with caplog.at_level(logging.INFO, logger="iscsi_ha.control"):
        with pytest.raises(ControlSocketError, match="another iscsi-ha controller is running"):
            second.start()
        second.stop()  # stopping the one that never started must not remove the live socket
        assert ask(path, {"cmd": "status"})["hostname"] == "test-host"
    # The second one's probe (connect, close) is not logged as a bad request.
    assert [r.message for r in caplog.records if "bad request" in r.message] == []


def test_replaces_a_stale_socket_but_never_a_regular_file(host, sockdir):
    path = os.path.join(sockdir, "control.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # a socket file nobody listens on: what a killed controller leaves
    dead.close()
    with pytest.raises(ConnectionRefusedError):
        ask_raw_connect(path)
    with serving(StubDaemon(host.controller), path):
        assert ask(path, {"cmd": "status"})["ok"] is True

    with open(path, "w") as fh:
        fh.write("not a socket\n")
    with pytest.raises(ControlSocketError, match="is not a socket"):
        ControlServer(path, StubDaemon(host.controller)).start()
    with open(path) as fh:
        assert fh.read() == "not a socket\n"


def ask_raw_connect(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)


def test_stop_leaves_a_socket_that_another_process_put_there(host, sockdir):
    path = os.path.join(sockdir, "control.sock")
    server = ControlServer(path, StubDaemon(host.controller))
    server.start()
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(path)
        server.stop()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        other.close()


# --------------------------------------------------------------------------------------------
# Who may talk
# --------------------------------------------------------------------------------------------


@pytest.mark.root
def test_non_root_client_cannot_connect_to_the_default_socket(served):
    host, daemon, server, path = served
    proc = run_as(NOBODY, CLIENT.format(path=path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"connect_error": "EACCES"}
    assert host.controller.load_manual().enabled is False
    assert daemon.triggers == []


@pytest.mark.root
def test_so_peercred_refuses_uids_not_allowed_and_serves_allowed_ones(host, sockdir):
    path = os.path.join(sockdir, "control.sock")
    daemon = StubDaemon(host.controller)
    # A non-root uid in the list opens the file mode; SO_PEERCRED is then the gate.
    with serving(daemon, path, allowed_uids=(0, 4242)):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o666
        refused = run_as(NOBODY, CLIENT.format(path=path))
        answer = json.loads(refused.stdout)
        assert answer["ok"] is False and answer["code"] == 2
        assert "uid 65534 may not use" in answer["error"]
        assert host.controller.load_manual().enabled is False

        allowed = run_as(4242, CLIENT.format(path=path))
        answer = json.loads(allowed.stdout)
        assert answer == {"ok": True, "code": 0, "message": answer["message"]}
        assert host.controller.load_manual().enabled is True
    assert daemon.triggers == ["operator ran manual-mode-enable"]


@pytest.mark.root
def test_cli_as_nobody_exits_2_and_says_root_is_needed(served):
    host, daemon, server, path = served
    cli = os.path.join(os.path.dirname(sys.executable), "iscsi-cfg")
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            cli,
            "--socket",
            path,
            "become-secondary",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc
    assert "only root" in proc.stderr
    assert host.roles == ["Primary"]


# --------------------------------------------------------------------------------------------
# Bad clients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, says",
    [
        (b"this is not json\n", "malformed request, not JSON"),
        (b"\xff\xfe{}\n", "malformed request, not JSON"),
        (b"[1, 2, 3]\n", "expected a JSON object"),
        (b'{"command": "status"}\n', '"cmd" must be a string'),
        (b'{"cmd": 7}\n', '"cmd" must be a string'),
        (b'{"cmd": "reboot"}\n', "unknown command 'reboot'"),
        (b'{"cmd": "log", "since": "yesterday"}\n', '"since" must be a unix time'),
        (b"\n", "malformed request"),
    ],
)
def test_bad_requests_get_an_error_answer_and_the_server_keeps_serving(served, data, says):
    host, daemon, server, path = served
    answer = raw(path, data)
    assert answer["ok"] is False and answer["code"] == 2
    assert says in answer["error"]
    assert ask(path, {"cmd": "status"})["ok"] is True
    assert daemon.triggers == []


def test_a_request_without_newline_ends_at_eof(served):
    host, daemon, server, path = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b'{"cmd": "status"}')
        s.shutdown(socket.SHUT_WR)
        answer = json.loads(s.makefile().readline())
    assert answer["hostname"] == "test-host"


@pytest.mark.parametrize("size", [64 * 1024 + 1, 1024 * 1024])
def test_huge_requests_are_refused_and_harm_nothing(served, size):
    host, daemon, server, path = served
    payload = b'{"cmd": "status", "pad": "' + b"x" * size + b'"}\n'
    answer = raw(path, payload)
    assert answer == {"ok": False, "code": 2, "error": "request too large (limit 65536 bytes)"}
    # The controller and the socket carry on.
    result = host.controller.run_cycle()
    assert result.outcome is Outcome.OK
    assert ask(path, {"cmd": "status"})["counters"]["cycles"] == {"ok": 1}


def test_a_slow_client_does_not_block_another_and_is_cut_off(host, sockdir):
    path = os.path.join(sockdir, "control.sock")
    with serving(StubDaemon(host.controller), path, read_timeout=2.0):
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            slow.settimeout(10)
            slow.connect(path)
            slow.sendall(b'{"cmd": "sta')  # ... and nothing more
            t0 = time.monotonic()
            assert ask(path, {"cmd": "status"})["ok"] is True
            served_in = time.monotonic() - t0
            answer = json.loads(slow.makefile().readline())
            cut_after = time.monotonic() - t0
        finally:
            slow.close()
    assert served_in < 1.0  # not after the slow client's 2 s deadline
    assert answer["ok"] is False
    assert answer["error"] == "timeout: no complete request within 2s"
    assert 1.5 < cut_after < 5.0


def test_a_dribbling_client_is_cut_off_at_the_total_deadline(served):
    host, daemon, server, path = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        t0 = time.monotonic()
        answer = None
        for ch in b'{"cmd": "status"}':  # one byte every 0.1 s: each recv is quick, the total not
            try:
                s.sendall(bytes([ch]))
            except OSError:
                break
            time.sleep(0.1)
        answer = json.loads(s.makefile().readline())
    assert answer["error"].startswith("timeout")
    assert time.monotonic() - t0 < 3.0


def test_connections_beyond_the_limit_are_told_busy(host, sockdir):
    path = os.path.join(sockdir, "control.sock")
    with serving(StubDaemon(host.controller), path, read_timeout=1.0, max_connections=2):
        idle = []
        before = {t.ident for t in threading.enumerate() if t.name == "control-conn"}
        try:
            for _ in range(2):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                idle.append(s)
            wait_until(
                lambda: (
                    len(
                        [
                            t
                            for t in threading.enumerate()
                            if t.name == "control-conn" and t.ident not in before
                        ]
                    )
                    == 2
                ),
                5,
                "both idle clients in their handler threads",
            )
            busy = raw(path, b'{"cmd": "status"}\n')
            assert busy["ok"] is False and busy["error"].startswith("busy")
        finally:
            for s in idle:
                s.close()
        # Closed idle clients free their slots (EOF ends their read at once).
        deadline = time.monotonic() + 3
        while True:
            answer = raw(path, b'{"cmd": "status"}\n')
            if answer.get("ok") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer["ok"] is True


# --------------------------------------------------------------------------------------------
# What it answers
# --------------------------------------------------------------------------------------------


def test_status_is_the_last_snapshot_with_manual_mode_counters_and_age(served):
    host, daemon, server, path = served
    before = ask(path, {"cmd": "status"})
    assert before["last"] is None and before["counters"]["cycles"] == {}
    host.controller.run_cycle()
    doc = ask(path, {"cmd": "status"})
    assert doc["hostname"] == "test-host" and doc["drbd_version"] == "8.4.11"
    assert doc["version"] == host.controller.snapshot().version
    assert doc["last"]["outcome"] == "ok"
    assert doc["last"]["observation"]["resources"][0]["role"] == "Primary"
    assert 0 <= doc["last_cycle_age"] < 2
    assert doc["counters"]["cycles"] == {"ok": 1}
    assert doc["manual"] == {"enabled": False, "requested": None, "since": None, "problem": None}
    assert doc["interval"] == 5.0


def test_status_shows_manual_mode_at_once_and_a_damaged_manual_file(served):
    host, daemon, server, path = served
    assert ask(path, {"cmd": "manual-mode-enable"})["code"] == 0
    manual = ask(path, {"cmd": "status"})["manual"]
    assert manual["enabled"] is True and manual["since"] > time.time() - 10
    with open(os.path.join(host.state_dir, "manual-mode.json"), "w") as fh:
        fh.write("{garbage")
    manual = ask(path, {"cmd": "status"})["manual"]
    assert manual["enabled"] is True and "damaged" in manual["problem"]


def test_status_never_waits_for_a_cycle_but_role_commands_do(served):
    host, daemon, server, path = served
    assert ask(path, {"cmd": "manual-mode-enable"})["code"] == 0
    in_cycle, release = threading.Event(), threading.Event()

    def long_cycle():  # holds the controller's lock like a slow cycle would
        with host.controller.lock:
            in_cycle.set()
            release.wait(10)

    host.controller.lock = watched = WatchedLock(host.controller.lock)
    holder = threading.Thread(target=long_cycle)
    holder.start()
    answers: List[Dict[str, Any]] = []
    try:
        assert in_cycle.wait(5)
        worker = threading.Thread(
            target=lambda: answers.append(ask(path, {"cmd": "become-secondary"}, timeout=10))
        )
        worker.start()
        t0 = time.monotonic()
        assert ask(path, {"cmd": "status"})["ok"] is True
        assert ask(path, {"cmd": "log"})["ok"] is True
        assert time.monotonic() - t0 < 2.0  # milliseconds, not "until the cycle ends"
        assert watched.waiting.wait(5)  # the role command has reached the lock
        assert answers == [] and host.roles == ["Primary"]  # waiting for the lock
    finally:
        release.set()
        holder.join(5)
    worker.join(10)
    assert answers[0]["code"] == 0 and host.roles == ["Secondary"]


def test_log_returns_the_cycle_sentences_since_a_time(served):
    host, daemon, server, path = served
    host.controller.run_cycle()
    first = ask(path, {"cmd": "log", "since": 0})["entries"]
    assert [e["outcome"] for e in first] == ["ok"]
    assert first[0]["message"].startswith("no action")
    host.set_pool(PoolRole.UNKNOWN, "pool.conf says 'broken'")
    host.controller.run_cycle()
    later = ask(path, {"cmd": "log", "since": first[0]["t"]})["entries"]
    assert [e["outcome"] for e in later] == ["held"]
    assert "pool.conf says 'broken'" in later[0]["message"]


def test_get_gives_the_running_configuration_without_secrets(served, monkeypatch, tmp_path):
    host, daemon, server, path = served
    secret = "S3cret-xapi-password"
    monkeypatch.setenv("ISCSI_HA_XAPI_PASSWORD", secret)
    daemon.cfg = Config(
        resources=("iscsi1", "iscsi2"),
        vip=VipConfig(address="10.99.0.3/24"),
        paths=PathsConfig(state_dir=str(tmp_path)),
    )
    raw_answer = json.dumps(ask(path, {"cmd": "get"}))
    answer = json.loads(raw_answer)
    assert answer["config"]["resources"] == ["iscsi1", "iscsi2"]
    assert answer["config"]["paths"]["state_dir"] == str(tmp_path)
    assert (
        answer["config"]["xenapi"]["password_source"]
        == "environment variable ISCSI_HA_XAPI_PASSWORD"
    )
    assert secret not in raw_answer


def test_an_exception_inside_the_controller_is_an_answer_not_a_dead_server(served):
    host, daemon, server, path = served
    assert ask(path, {"cmd": "manual-mode-enable"})["code"] == 0

    def broken_pool():
        raise OSError("pool.conf: Input/output error")

    host.controller.read_pool = broken_pool
    answer = ask(path, {"cmd": "become-primary"})
    assert answer["ok"] is False and answer["code"] == 1
    assert "pool.conf: Input/output error" in answer["error"]
    assert ask(path, {"cmd": "status"})["ok"] is True


# --------------------------------------------------------------------------------------------
# The role commands through the socket: every refusal, and the way through
# --------------------------------------------------------------------------------------------


def cmd(path: str, name: str) -> Dict[str, Any]:
    return ask(path, {"cmd": name}, timeout=30)


@pytest.mark.parametrize("name", ["become-primary", "become-secondary"])
def test_become_refused_outside_manual_mode(served, name):
    host, daemon, server, path = served
    answer = cmd(path, name)
    assert answer["ok"] is False and answer["code"] == 1
    assert "only in manual mode" in answer["message"]
    assert "iscsi-cfg manual-mode-enable" in answer["message"]
    assert host.done == [] and host.roles == ["Primary"]


def test_become_primary_refused_while_the_peer_is_primary(tmp_path, sockdir):
    host = Host(str(tmp_path), world(resources=(res(role="Secondary", peer_role="Primary"),)))
    with serving(StubDaemon(host.controller), os.path.join(sockdir, "c.sock")) as server:
        assert cmd(server.path, "manual-mode-enable")["code"] == 0
        answer = cmd(server.path, "become-primary")
    assert answer["code"] == 1
    assert answer["message"] == (
        "refused: the peer is Primary for iscsi1; run "
        "`iscsi-cfg become-secondary` on the peer first"
    )
    assert host.done == [] and host.roles == ["Secondary"]
    # A refusal does not record the request: manual mode still keeps the current roles.
    assert host.controller.load_manual().requested is None


def test_become_primary_refused_while_another_host_answers_for_the_vip(tmp_path, sockdir):
    # Peer unreachable: nothing says it let go of the VIP, so the controller probes (arping -D).
    # (Its disk is Outdated, so promoting is otherwise allowed: the VIP is what refuses.)
    obs = world(
        resources=(
            res(
                role="Secondary",
                peer_role="Unknown",
                connection="WFConnection",
                peer_disk="Outdated",
            ),
        )
    )
    host = Host(str(tmp_path), obs, probe_answer=True)
    with serving(StubDaemon(host.controller), os.path.join(sockdir, "c.sock")) as server:
        assert cmd(server.path, "manual-mode-enable")["code"] == 0
        answer = cmd(server.path, "become-primary")
    assert answer["code"] == 1
    assert "VIP 10.99.0.3/24 is not local but another host answers for it" in answer["message"]
    assert host.probes == 1
    assert host.done == [] and host.roles == ["Secondary"]
    assert not host.world.obs.vip.local


def test_become_primary_refused_by_the_cycle_when_no_good_data(tmp_path, sockdir):
    obs = world(
        resources=(
            res(
                role="Secondary",
                peer_role="Unknown",
                connection="WFConnection",
                disk="Outdated",
                peer_disk="DUnknown",
            ),
        )
    )
    host = Host(str(tmp_path), obs, probe_answer=False)
    with serving(StubDaemon(host.controller), os.path.join(sockdir, "c.sock")) as server:
        assert cmd(server.path, "manual-mode-enable")["code"] == 0
        answer = cmd(server.path, "become-primary")
    assert answer["code"] == 1
    assert (
        "not promoting iscsi1: local disk is Outdated and the peer is unreachable"
        in answer["message"]
    )
    assert "Promote" not in host.done and host.roles == ["Secondary"]


def test_manual_mode_disable_refused_until_roles_are_native(served):
    host, daemon, server, path = served
    assert cmd(path, "manual-mode-enable")["code"] == 0
    done = cmd(path, "become-secondary")
    assert done["code"] == 0, done
    assert host.roles == ["Secondary"]
    assert host.done == ["UnbindVip", "StopServingTarget", "Demote"]
    assert not host.world.obs.vip.local and not host.world.obs.target.serving

    refused = cmd(path, "manual-mode-disable")
    assert refused["code"] == 1
    assert "storage role is secondary but this host is pool master" in refused["message"]
    assert "run `iscsi-cfg become-primary` first" in refused["message"]
    assert host.controller.load_manual().enabled is True

    # Following the advice gets through.
    assert cmd(path, "become-primary")["code"] == 0
    assert host.roles == ["Primary"] and host.world.obs.vip.local
    disabled = cmd(path, "manual-mode-disable")
    assert disabled["code"] == 0, disabled
    assert host.controller.load_manual().enabled is False
    assert daemon.triggers == [
        f"operator ran {n}"
        for n in (
            "manual-mode-enable",
            "become-secondary",
            "manual-mode-disable",
            "become-primary",
            "manual-mode-disable",
        )
    ]


def test_manual_mode_disable_refused_while_primary_without_the_vip(served):
    host, daemon, server, path = served
    assert cmd(path, "manual-mode-enable")["code"] == 0
    host.world.obs = replace(host.world.obs, vip=replace(host.world.obs.vip, local=False))
    answer = cmd(path, "manual-mode-disable")
    assert answer["code"] == 1 and "become-primary" in answer["message"]


def test_manual_mode_disable_refused_on_a_slave_that_is_primary(tmp_path, sockdir):
    host = Host(str(tmp_path), converged_master())
    host.set_pool(PoolRole.SLAVE)
    with serving(StubDaemon(host.controller), os.path.join(sockdir, "c.sock")) as server:
        assert cmd(server.path, "manual-mode-enable")["code"] == 0
        answer = cmd(server.path, "manual-mode-disable")
        assert answer["code"] == 1
        assert "run `iscsi-cfg become-secondary` first" in answer["message"]


def test_manual_mode_disable_refused_while_the_pool_role_is_unknown(served):
    host, daemon, server, path = served
    assert cmd(path, "manual-mode-enable")["code"] == 0
    host.set_pool(PoolRole.UNKNOWN, "pool.conf says 'broken'")
    answer = cmd(path, "manual-mode-disable")
    assert answer["code"] == 1
    assert answer["message"].startswith(
        "refused: cannot leave manual mode while the pool role unknown: pool.conf says 'broken'"
    )
    assert host.controller.load_manual().enabled is True


def test_manual_mode_enable_and_disable_are_idempotent(served):
    host, daemon, server, path = served
    assert cmd(path, "manual-mode-disable") == {
        "ok": True,
        "code": 0,
        "message": "manual mode is already disabled",
    }
    assert cmd(path, "manual-mode-enable")["code"] == 0
    assert cmd(path, "manual-mode-enable")["message"] == "manual mode is already enabled"


def test_manual_mode_survives_a_restart_of_the_controller(tmp_path, sockdir):
    # Master whose storage is Secondary: automatic mode would promote it at once.
    host = Host(str(tmp_path), world(resources=(res(role="Secondary"),)))
    path = os.path.join(sockdir, "c.sock")
    with serving(StubDaemon(host.controller), path):
        assert cmd(path, "manual-mode-enable")["code"] == 0

    host.controller = host.new_controller()  # the restart: new Controller, same state dir
    with serving(StubDaemon(host.controller), path):
        assert ask(path, {"cmd": "status"})["manual"]["enabled"] is True
        result = host.controller.run_cycle()
        assert "manual mode: keeping the current role (secondary)" in result.message
        assert host.done == [] and host.roles == ["Secondary"]
        # Still manual: become-primary works without enabling again.
        assert cmd(path, "become-primary")["code"] == 0
        assert host.roles == ["Primary"]
    host.controller = host.new_controller()
    result = host.controller.run_cycle()
    assert "manual mode: operator asked for primary" in result.message


def test_every_command_of_the_enum_is_dispatched_and_has_its_cli(host):
    # One enum (controller/commands.py) for socket, CLI and cycle: a member without a handler
    # here, or without its iscsi-cfg subcommand, fails.
    server = ControlServer("/nonexistent/control.sock", StubDaemon(host.controller), (0,))
    subcommands = cli.parser()._subparsers._group_actions[0].choices
    for command in Command:
        answer = server.dispatch({"cmd": command.value, "resource": "iscsi1"})
        assert "unknown command" not in str(answer.get("error", "")), command
        if command is not Command.STALE_INFO:  # sent by become-primary --accept-stale
            assert command.value in subcommands, command
    assert server.dispatch({"cmd": "no-such"})["error"].startswith("unknown command")
