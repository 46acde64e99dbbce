"""The control socket under a local connect flood (#16).

Before: with a non-root uid in ``control.allowed_uids`` the socket is 0666, and any local user's
connect loop took the 16 slots, so root's ``iscsi-cfg`` reported the controller unreachable, and
every refused connection wrote a log line.
"""

import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest
from iscsi_ha.controller.cli import ask
from iscsi_ha.controller.control import root_socket_path
from test_control import Host, StubDaemon, converged_master, serving, sockdir  # noqa: F401

NOBODY = 65534  # allowed below: a monitoring user
STRANGER = 4321  # not allowed

FLOOD = """
    import socket, sys, time
    path, seconds = sys.argv[1], float(sys.argv[2])
    end = time.monotonic() + seconds
    held = []
    while time.monotonic() < end:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(path)
            held.append(s)  # connected and silent: holds whatever it was given
        except OSError:
            s.close()
            time.sleep(0.001)
        if len(held) > 40:
            held.pop(0).close()
"""


def _flood(uid: int, path: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            sys.executable,
            "-c",
            textwrap.dedent(FLOOD),
            path,
            str(seconds),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.root  # setpriv to other uids
def test_root_keeps_working_under_a_local_connect_flood(tmp_path, sockdir, caplog):  # noqa: F811
    host = Host(str(tmp_path / "state"), converged_master())
    path = os.path.join(sockdir, "control.sock")
    caplog.set_level(logging.INFO, logger="iscsi_ha.control")
    with serving(StubDaemon(host.controller), path, allowed_uids=(0, NOBODY), read_timeout=5.0):
        assert os.stat(path).st_mode & 0o777 == 0o666  # so NOBODY can connect at all
        assert os.stat(root_socket_path(path)).st_mode & 0o777 == 0o600  # root's own
        floods = [_flood(NOBODY, path, 6) for _ in range(3)] + [
            _flood(STRANGER, path, 6) for _ in range(2)
        ]
        try:
            time.sleep(1.0)  # the floods hold everything they can get
            worst = 0.0
            for _ in range(20):
                t0 = time.monotonic()
                answer = ask(path, {"cmd": "status"}, timeout=3.0)
                worst = max(worst, time.monotonic() - t0)
                assert answer["ok"] is True, answer
                time.sleep(0.1)
            assert worst < 1.0, worst
        finally:
            for p in floods:
                p.kill()
                p.wait()
    assert not os.path.exists(root_socket_path(path))  # removed on stop
    refused = [r for r in caplog.records if "refused uid" in r.getMessage()]
    assert 1 <= len(refused) <= 2, len(refused)  # once per refused uid, not per connection


@pytest.mark.root
def test_an_allowed_user_gets_its_own_few_slots_only(tmp_path, sockdir):  # noqa: F811
    from iscsi_ha.controller.control import PER_UID_SLOTS, ControlServer

    host = Host(str(tmp_path / "state"), converged_master())
    server = ControlServer(
        os.path.join(sockdir, "c.sock"),
        StubDaemon(host.controller),
        (0, NOBODY),
        max_connections=16,
    )
    taken = [server.slots.take(NOBODY) for _ in range(PER_UID_SLOTS + 2)]
    assert taken == [True] * PER_UID_SLOTS + [False, False]
    others = [server.slots.take(70000 + i) for i in range(20)]  # many allowed uids together
    assert others.count(True) == 16 - 4 - PER_UID_SLOTS  # root's quarter stays free
    assert all(server.slots.take(0) for _ in range(4))
    assert not server.slots.take(0)  # and now everything is in use


def test_a_lone_surrogate_command_gets_an_answer(tmp_path):
    """Found by the fuzzer: JSON allows "\\udcff"; quoting it used to raise inside dispatch."""
    from iscsi_ha.controller.control import ControlServer

    host = Host(str(tmp_path / "state"), converged_master())
    server = ControlServer("/nonexistent/c.sock", StubDaemon(host.controller), (0,))
    answer = server.dispatch({"cmd": "\udcff"})
    assert answer["ok"] is False and answer["error"].startswith("unknown command")
