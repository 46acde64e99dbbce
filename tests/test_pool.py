"""The pool role: pool.conf parsing and reading.

pool.conf is what xapi writes (``master`` or ``slave:<address>``); the parser is checked on every
form docs/design.md §2 names, and the reader on real files: missing, a directory, unreadable
(a real EACCES, made by reading as ``nobody`` from a forked child when the tests run as root),
not UTF-8.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from iscsi_ha.controller.model import PoolObservation, PoolRole
from iscsi_ha.controller.systems.pool import parse_pool_conf, read_pool_conf


@pytest.mark.parametrize(
    "text, role, address",
    [
        ("master", PoolRole.MASTER, None),
        ("master\n", PoolRole.MASTER, None),
        ("  master \n", PoolRole.MASTER, None),
        ("slave:192.168.1.10", PoolRole.SLAVE, "192.168.1.10"),
        ("slave:192.168.1.10\n", PoolRole.SLAVE, "192.168.1.10"),
        ("slave: 10.0.0.1 \n", PoolRole.SLAVE, "10.0.0.1"),
        ("slave:fe80::1", PoolRole.SLAVE, "fe80::1"),  # everything after the FIRST colon
        ("slave:2001:db8::42\n", PoolRole.SLAVE, "2001:db8::42"),
        ("slave:xcp-host1.example.org", PoolRole.SLAVE, "xcp-host1.example.org"),
    ],
)
def test_known_roles(text, role, address):
    obs = parse_pool_conf(text)
    assert obs == PoolObservation(role, master_address=address)


@pytest.mark.parametrize(
    "text, detail",
    [
        ("", "pool.conf is empty"),
        ("  \n\t\n", "pool.conf is empty"),
        (None, "pool.conf could not be read"),
        ("broken", "pool.conf says 'broken'"),
        ("broken\n", "pool.conf says 'broken'"),
        ("slave:", "pool.conf says 'slave:' without a master address"),
        ("slave:  \n", "pool.conf says 'slave:' without a master address"),
        ("Master", "pool.conf says 'Master'"),
        ("masterful", "pool.conf says 'masterful'"),
        ("slave 10.0.0.1", "pool.conf says 'slave 10.0.0.1'"),
        ("slave:10.0.0.1 10.0.0.2", "pool.conf says 'slave:10.0.0.1 10.0.0.2'"),
        ("master\nslave:10.0.0.1", "pool.conf says 'master\\nslave:10.0.0.1'"),
    ],
)
def test_anything_else_is_unknown_with_a_reason(text, detail):
    obs = parse_pool_conf(text)
    assert obs.role is PoolRole.UNKNOWN
    assert obs.master_address is None
    assert obs.detail == detail


def test_long_garbage_is_quoted_short():
    obs = parse_pool_conf("x" * 5000)
    assert obs.role is PoolRole.UNKNOWN
    assert obs.detail.startswith("pool.conf says 'xxx") and obs.detail.endswith("...'")
    assert len(obs.detail) < 100


# --------------------------------------------------------------------------------------------
# read_pool_conf on real files
# --------------------------------------------------------------------------------------------


def test_read_master_and_slave_files(tmp_path):
    path = tmp_path / "pool.conf"
    path.write_text("master")
    assert read_pool_conf(str(path)).role is PoolRole.MASTER
    path.write_text("slave:10.99.0.1\n")
    assert read_pool_conf(str(path)) == PoolObservation(PoolRole.SLAVE, "10.99.0.1")
    path.write_text("")
    assert read_pool_conf(str(path)).detail == "pool.conf is empty"


def test_missing_file(tmp_path):
    path = str(tmp_path / "pool.conf")
    obs = read_pool_conf(path)
    assert obs.role is PoolRole.UNKNOWN
    assert obs.detail == f"cannot read {path}: No such file or directory"


def test_a_directory_in_place_of_the_file(tmp_path):
    obs = read_pool_conf(str(tmp_path))
    assert obs.role is PoolRole.UNKNOWN
    assert obs.detail == f"cannot read {tmp_path}: Is a directory"


def test_not_utf8_is_unknown_not_a_crash(tmp_path):
    path = tmp_path / "pool.conf"
    path.write_bytes(b"\xff\xfe\x00garbage")
    obs = read_pool_conf(str(path))
    assert obs.role is PoolRole.UNKNOWN and obs.detail.startswith("pool.conf says '")


def test_unreadable_file(tmp_path):
    path = tmp_path / "pool.conf"
    path.write_text("master")
    path.chmod(0o000)
    if os.geteuid() != 0:
        detail = read_pool_conf(str(path)).detail
    else:
        # root reads through any mode bits: read from a forked child that became nobody.
        detail = _read_as_nobody(str(path))
    assert detail == f"cannot read {path}: Permission denied"


def _read_as_nobody(path: str) -> str:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, read, report, exit without running pytest's atexit
        code = 1
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            obs = read_pool_conf(path)
            os.write(wfd, f"{obs.role.value}\n{obs.detail}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the child reading as nobody did not finish in 10 s")
    with os.fdopen(rfd) as fh:
        role, detail = fh.read().split("\n", 1)
    assert os.WEXITSTATUS(status) == 0 and role == "unknown"
    return detail
