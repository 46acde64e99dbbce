"""`iscsi-cfg become-primary --accept-stale`: the operator's way out, end to end.

The real `iscsi-cfg` process talks to a real control socket served by a Controller over a fake
world in which the peer is gone and nothing proves this host has the newest data.
"""

import os
import subprocess
import sys

import pytest
import test_control
from iscsi_ha.controller.cli import ask
from iscsi_ha.controller.model import PoolRole
from test_control import Host, StubDaemon, serving
from worlds import res, world

EXE = os.path.join(os.path.dirname(sys.executable), "iscsi-cfg")
GONE = res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown")


sockdir = test_control.sockdir  # the same fixture: a socket directory every uid can traverse


@pytest.fixture
def lonely(tmp_path, sockdir):
    host = Host(
        str(tmp_path / "state"), world(PoolRole.MASTER, resources=(GONE,)), probe_answer=False
    )
    with serving(StubDaemon(host.controller), os.path.join(sockdir, "c.sock")) as server:
        assert ask(server.path, {"cmd": "manual-mode-enable"})["code"] == 0
        yield host, server.path


def cfg(path, *args, **kw):
    return subprocess.run(
        [EXE, "--socket", path, *args], capture_output=True, text=True, timeout=60, **kw
    )


def test_plain_become_primary_is_refused_and_says_why(lonely):
    host, path = lonely
    proc = cfg(path, "become-primary")
    assert proc.returncode == 1
    assert "cannot prove this host has the newest data" in proc.stderr
    assert "Promote" not in host.done


def test_accept_stale_with_yes_prints_what_is_known_then_promotes(lonely, caplog):
    host, path = lonely
    proc = cfg(
        path,
        "become-primary",
        "--accept-stale",
        "iscsi1",
        "--yes",
        env=dict(os.environ, SUDO_USER="alice"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "What this host knows about iscsi1" in proc.stdout
    assert "WFConnection" in proc.stdout and "proof:           none" in proc.stdout
    assert "peer last seen:  never" in proc.stdout
    assert "promoted iscsi1" in proc.stdout
    assert "Promote" in host.done
    assert "become-primary --accept-stale iscsi1" in caplog.text
    assert "user alice" in caplog.text and f"uid {os.geteuid()}" in caplog.text


def test_accept_stale_without_a_terminal_or_yes_does_nothing(lonely):
    host, path = lonely
    proc = cfg(path, "become-primary", "--accept-stale", "iscsi1", stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert "Promote" not in host.done


@pytest.mark.parametrize("typed, code", [("iscsi1\n", 0), ("yes\n", 1)])
def test_accept_stale_asks_for_the_resource_name(lonely, typed, code):
    host, path = lonely
    master, slave = os.openpty()
    try:
        os.write(master, typed.encode())
        proc = subprocess.run(
            [EXE, "--socket", path, "become-primary", "--accept-stale", "iscsi1"],
            stdin=slave,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == code, proc.stderr
    assert ("Promote" in host.done) == (code == 0)


def test_accept_stale_is_for_become_primary_only_and_a_list(lonely):
    host, path = lonely
    bad = ask(path, {"cmd": "become-secondary", "accept_stale": ["iscsi1"]})
    assert bad["ok"] is False and "become-primary only" in str(bad.get("error"))
    bad = ask(path, {"cmd": "become-primary", "accept_stale": "iscsi1"})
    assert bad["ok"] is False
    unknown = ask(path, {"cmd": "stale-info", "resource": "nope"})
    assert unknown["ok"] is False and "not a resource" in str(unknown.get("error"))
    assert "Promote" not in host.done
