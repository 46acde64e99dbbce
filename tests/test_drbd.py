"""The DRBD adapter against what real DRBD 8.4.11 and 9.2.18 printed (tests/fixtures/drbd84,
tests/fixtures/drbd92), plus a few documented states the lab did not capture (drbd92-json/ and
inline texts, each marked as hand-written).

Every fixture file is checked: the tests are parametrised over the directory listings, and a new
capture without an expectation here fails until someone writes down what it should read as.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest
from drbd_captures import (
    DRBD84,
    DRBD92,
    DRBD92_JSON,
    PROC_DRBD,
    install,
    load_capture,
    read_frames,
)
from fakes import FakeRunner
from iscsi_ha.controller.model import DrbdResource
from iscsi_ha.controller.systems.drbd import (
    Drbd,
    Drbd9Connection,
    Drbd9Device,
    Drbd9PeerDevice,
    Drbd9Resource,
    DrbdParseError,
    LocalPeer,
    drbd_words,
    find_split_brain,
    is_unknown_resource,
    parse_cstate,
    parse_dstate,
    parse_proc_drbd,
    parse_proc_version,
    parse_refusal,
    parse_role,
    parse_sh_minor,
    parse_status_json,
    resource_from_proc,
    resource_from_status,
)
from iscsi_ha.controller.systems.runner import CommandResult, ProcessRunner

KIB = 1024


def text(path: Path) -> str:
    return path.read_text()


# ============================================================================================
# DRBD 8.4: every file of tests/fixtures/drbd84
# ============================================================================================


@dataclass(frozen=True)
class State84:
    role: str
    peer_role: str
    cstate: str
    disk: str
    peer_disk: str
    oos_kib: int
    progress: Optional[float]  # None: out of sync with no resync running (8.4 prints no size)


_SYNCED_N1 = State84("Primary", "Secondary", "Connected", "UpToDate", "UpToDate", 0, 1.0)
_SYNCED_N2 = State84("Secondary", "Primary", "Connected", "UpToDate", "UpToDate", 0, 1.0)
_BOTH_PRIMARY = State84("Primary", "Unknown", "StandAlone", "UpToDate", "DUnknown", 64, None)
_INCONSISTENT = State84(
    "Secondary", "Secondary", "Connected", "Inconsistent", "Inconsistent", 65496, None
)

EXPECT_84_STATES: Dict[str, State84] = {
    "state-01-connected-inconsistent-node1.txt": _INCONSISTENT,
    "state-01-connected-inconsistent-node2.txt": _INCONSISTENT,
    "state-02-synced-n1primary-node1.txt": _SYNCED_N1,
    "state-02-synced-n1primary-node2.txt": _SYNCED_N2,
    "state-03-after-switchover-node1.txt": _SYNCED_N2,
    "state-03-after-switchover-node2.txt": _SYNCED_N1,
    "state-04-disconnected-node1.txt": State84(
        "Secondary", "Unknown", "StandAlone", "UpToDate", "DUnknown", 0, 1.0
    ),
    "state-04-disconnected-node2.txt": State84(
        "Primary", "Unknown", "StandAlone", "UpToDate", "DUnknown", 0, 1.0
    ),
    "state-05-both-primary-standalone-node1.txt": _BOTH_PRIMARY,
    "state-05-both-primary-standalone-node2.txt": _BOTH_PRIMARY,
    "state-06-after-reconnect-splitbrain-node1.txt": _BOTH_PRIMARY,
    "state-06-after-reconnect-splitbrain-node2.txt": _BOTH_PRIMARY,
    "state-07-after-sb-recovery-node1.txt": _SYNCED_N2,
    "state-07-after-sb-recovery-node2.txt": _SYNCED_N1,
}


def check_state_84(path: Path, exp: State84) -> None:
    cap = load_capture(path)
    assert sorted(cap) == sorted(
        [PROC_DRBD, "drbdadm role r0", "drbdadm cstate r0", "drbdadm dstate r0"]
    )
    assert all(rc == 0 for rc, _, _ in cap.values())
    proc_text = cap[PROC_DRBD][1]
    assert parse_proc_version(proc_text) == "8.4.11"
    table = parse_proc_drbd(proc_text)
    assert set(table) == {0}
    m = table[0]
    assert (m.role, m.peer_role, m.cstate, m.disk, m.peer_disk) == (
        exp.role,
        exp.peer_role,
        exp.cstate,
        exp.disk,
        exp.peer_disk,
    )
    assert m.out_of_sync_bytes == exp.oos_kib * KIB
    assert m.sync_progress == exp.progress
    assert m.resync is None
    # drbdadm says the same as /proc/drbd.
    assert parse_role(cap["drbdadm role r0"][1]) == LocalPeer(exp.role, exp.peer_role)
    assert parse_cstate(cap["drbdadm cstate r0"][1]) == exp.cstate
    assert parse_dstate(cap["drbdadm dstate r0"][1]) == LocalPeer(exp.disk, exp.peer_disk)
    assert resource_from_proc("r0", [m]) == DrbdResource(
        name="r0",
        role=exp.role,
        peer_role=exp.peer_role,
        connection=exp.cstate,
        disk=exp.disk,
        peer_disk=exp.peer_disk,
        out_of_sync_bytes=exp.oos_kib * KIB,
        sync_progress=exp.progress,
    )


def check_initial_sync_samples_84(path: Path) -> None:
    frames = read_frames(path)
    assert len(frames) == 15
    minors = [parse_proc_drbd(f.stdout)[0] for f in frames]
    assert all((m.role, m.peer_role) == ("Primary", "Secondary") for m in minors)

    first, last = minors[0], minors[-1]
    assert (first.cstate, first.disk, first.peer_disk) == ("Connected", "UpToDate", "Inconsistent")
    assert first.out_of_sync_bytes == 65496 * KIB and first.sync_progress is None
    assert (last.cstate, last.disk, last.peer_disk) == ("Connected", "UpToDate", "UpToDate")
    assert last.out_of_sync_bytes == 0 and last.sync_progress == 1.0 and last.resync is None

    syncing = minors[1:-1]
    for m in syncing:
        assert m.cstate == "SyncSource" and m.resync is not None
        assert m.resync.total_bytes == 65496 * KIB
        assert m.resync.left_bytes == m.out_of_sync_bytes  # the (left/total)K numbers
        assert m.resync.eta_seconds is not None and m.resync.speed_bytes_per_second
    ratios = [m.sync_progress for m in syncing]
    assert all(r is not None for r in ratios)
    assert ratios == sorted(ratios) and len(set(ratios)) == len(ratios)  # strictly increasing
    assert 0 < ratios[0] < 0.01 and 0.99 < ratios[-1] < 1.0
    printed = [m.resync.percent for m in syncing if m.resync]
    assert printed == sorted(printed)
    assert printed[0] == 6.3 and printed[-1] == 100.0

    # "sync'ed:  6.3% (65112/65496)K" / "finish: 0:02:42 speed: 384 (384) K/sec"
    one = minors[1].resync
    assert one is not None
    assert (one.left_bytes, one.eta_seconds, one.speed_bytes_per_second) == (
        65112 * KIB,
        162.0,
        384 * KIB,
    )
    # "sync'ed:  6.3% (63832/65496)K" / "finish: 0:00:31 speed: 1,664 (1,664) K/sec"
    two = minors[2].resync
    assert two is not None
    assert (two.percent, two.left_bytes, two.eta_seconds, two.speed_bytes_per_second) == (
        6.3,
        63832 * KIB,
        31.0,
        1664 * KIB,
    )
    assert minors[2].sync_progress == pytest.approx((65496 - 63832) / 65496)
    # "sync'ed:100.0% (136/65496)K" / "finish: 0:00:00 speed: 5,024 (5,024) K/sec": DRBD rounds
    # up; the ratio from the numbers does not claim 100 % while 136 KiB are left.
    end = minors[13].resync
    assert end is not None
    assert (end.percent, end.left_bytes, end.eta_seconds, end.speed_bytes_per_second) == (
        100.0,
        136 * KIB,
        0.0,
        5024 * KIB,
    )
    assert minors[13].sync_progress == pytest.approx((65496 - 136) / 65496)


def check_sb_recovery_samples_84(path: Path) -> None:
    frames = read_frames(path)
    assert [f.t for f in frames] == [0.02, 0.53, 1.05, 1.58]
    minors = [parse_proc_drbd(f.stdout)[0] for f in frames]
    for m in minors[:2]:
        assert (m.cstate, m.role, m.peer_role, m.disk, m.peer_disk) == (
            "WFConnection",
            "Secondary",
            "Unknown",
            "UpToDate",
            "DUnknown",
        )
        assert m.out_of_sync_bytes == 64 * KIB and m.sync_progress is None
    sync = minors[2]
    assert (sync.cstate, sync.role, sync.peer_role, sync.disk, sync.peer_disk) == (
        "SyncTarget",
        "Secondary",
        "Primary",
        "Inconsistent",
        "UpToDate",
    )
    # "sync'ed:100.0% (100/128)K" / "finish: 0:00:00 speed: 28 (28) want: 240 K/sec"
    assert sync.resync is not None
    assert (sync.resync.percent, sync.resync.left_bytes, sync.resync.total_bytes) == (
        100.0,
        100 * KIB,
        128 * KIB,
    )
    assert sync.resync.speed_bytes_per_second == 28 * KIB and sync.resync.eta_seconds == 0.0
    assert sync.sync_progress == pytest.approx(28 / 128)
    done = minors[3]
    assert (done.cstate, done.disk, done.peer_disk) == ("Connected", "UpToDate", "UpToDate")
    assert done.out_of_sync_bytes == 0 and done.sync_progress == 1.0


def check_experiments_84(path: Path) -> None:
    frames = read_frames(path)
    assert len(frames) == 12
    assert not any("A: fixed" in f.stdout or "B: new-current" in f.stdout for f in frames)
    procs = [f for f in frames if f.command.startswith(PROC_DRBD)]
    assert [f.node for f in procs] == ["node1", "node1", "node1", "node2"]
    synced = parse_proc_drbd(procs[0].stdout)[0]  # its output ends with a dmesg line
    assert (synced.cstate, synced.role, synced.peer_role, synced.disk, synced.peer_disk) == (
        "Connected",
        "Primary",
        "Secondary",
        "UpToDate",
        "UpToDate",
    )
    for f in procs[1:]:
        m = parse_proc_drbd(f.stdout)[0]
        assert (m.cstate, m.role, m.peer_role, m.disk, m.peer_disk) == (
            "WFConnection",
            "Secondary",
            "Unknown",
            "Inconsistent",
            "DUnknown",
        )
        assert m.out_of_sync_bytes == 65496 * KIB and m.sync_progress is None
    # new-current-uuid refused with (151): a plain failure, not one of the safety refusals.
    uuid = [f for f in frames if "new-current-uuid" in f.command]
    assert len(uuid) == 2
    for f in uuid:
        assert f.rc == 10 and parse_refusal(f.stdout) is None
        assert drbd_words(f.stdout) == "0: Failure: (151) Need to be StandAlone"
    # "drbdadm primary r0; drbdadm role r0": the 8.4 wording of the rc 17 refusal.
    (refused,) = [f for f in frames if f.command == "drbdadm primary r0; drbdadm role r0"]
    assert parse_refusal(refused.stdout) == (
        -2,
        "no_uptodate_data",
        "(-2) Need access to UpToDate data",
    )
    assert parse_role(refused.stdout.splitlines()[-1]) == LocalPeer("Secondary", "Unknown")


def check_dmesg_84_split(path: Path) -> None:
    log = text(path)
    assert find_split_brain(log) == {0}  # 8.4 names only the minor: "block drbd0: ..."
    assert find_split_brain(log, {0: "r0"}) == {"r0"}
    assert find_split_brain(log, {1: "other"}) == {0}


def check_dmesg_84_recovery(path: Path) -> None:
    log = text(path)
    assert "Split-Brain detected but unresolved" in log
    assert find_split_brain(log) == frozenset()
    assert find_split_brain(log, {0: "r0"}) == frozenset()
    # The same log cut just after the split brain still flags it: the recovery clears it.
    lines = log.splitlines()
    cut = next(i for i, line in enumerate(lines) if "but unresolved" in line)
    assert find_split_brain("\n".join(lines[: cut + 1]), {0: "r0"}) == {"r0"}
    # ... and up to the reconnection that failed again, too.
    standalone = next(i for i, line in enumerate(lines) if "-> StandAlone" in line)
    assert find_split_brain("\n".join(lines[: standalone + 1]), {0: "r0"}) == {"r0"}


CHECKS_84 = {
    "proc-drbd-initial-sync-samples.txt": check_initial_sync_samples_84,
    "proc-drbd-sb-recovery-samples.txt": check_sb_recovery_samples_84,
    "initial-sync-experiments.txt": check_experiments_84,
    "dmesg-splitbrain-node1.txt": check_dmesg_84_split,
    "dmesg-splitbrain-node2.txt": check_dmesg_84_split,
    "dmesg-sb-recovery-node1.txt": check_dmesg_84_recovery,
    "dmesg-sb-recovery-node2.txt": check_dmesg_84_recovery,
}


@pytest.mark.parametrize("name", sorted(os.listdir(DRBD84)))
def test_drbd84_fixture(name: str) -> None:
    path = DRBD84 / name
    if name in EXPECT_84_STATES:
        check_state_84(path, EXPECT_84_STATES[name])
    elif name in CHECKS_84:
        CHECKS_84[name](path)
    else:
        pytest.fail(f"new fixture {name}: write down the state it must read as")


def test_drbd84_expectations_name_existing_files() -> None:
    listed = set(os.listdir(DRBD84))
    assert set(EXPECT_84_STATES) | set(CHECKS_84) == listed


# ============================================================================================
# DRBD 9: every file of tests/fixtures/drbd92
# ============================================================================================


@dataclass(frozen=True)
class State9:
    role: str
    peer_role: str
    connection: str
    disk: str
    peer_disk: str
    oos_kib: int
    progress: float
    eta: Optional[float]
    # what `drbdadm role|cstate|dstate r0` printed (captured a moment later than the JSON)
    adm: Tuple[str, str, str]


def _synced(role: str, peer: str) -> State9:
    return State9(
        role,
        peer,
        "Connected",
        "UpToDate",
        "UpToDate",
        0,
        1.0,
        None,
        (role, "Connected", "UpToDate/UpToDate"),
    )


_STANDALONE_64 = State9(
    "Primary",
    "Unknown",
    "StandAlone",
    "UpToDate",
    "DUnknown",
    64,
    0.9998,
    None,
    ("Primary", "StandAlone", "UpToDate/DUnknown"),
)
_INCONSISTENT_9 = State9(
    "Secondary",
    "Secondary",
    "Connected",
    "Inconsistent",
    "Inconsistent",
    262100,
    0.0,
    None,
    ("Secondary", "Connected", "Inconsistent/Inconsistent"),
)

EXPECT_92_STATES: Dict[str, State9] = {
    "01-node1-up-peer-absent-node1.txt": State9(
        "Secondary",
        "Unknown",
        "Connecting",
        "Inconsistent",
        "DUnknown",
        262100,
        0.0,
        None,
        ("Secondary", "Connecting", "Inconsistent/DUnknown"),
    ),
    "02-up-connected-inconsistent-node1.txt": _INCONSISTENT_9,
    "02-up-connected-inconsistent-node2.txt": _INCONSISTENT_9,
    # Connected, replication WFBitMapS: the replication state is what we report.
    "04-initial-sync-sample01-node1.txt": State9(
        "Primary",
        "Secondary",
        "WFBitMapS",
        "UpToDate",
        "Inconsistent",
        262100,
        0.0,
        None,
        ("Primary", "Connected", "UpToDate/Inconsistent"),
    ),
    "05-synced-node1-primary-node1.txt": _synced("Primary", "Secondary"),
    "05-synced-node1-primary-node2.txt": _synced("Secondary", "Primary"),
    "07-after-switchover-node2-primary-node1.txt": _synced("Secondary", "Primary"),
    "07-after-switchover-node2-primary-node2.txt": _synced("Primary", "Secondary"),
    "09-disconnected-node1.txt": State9(
        "Secondary",
        "Unknown",
        "StandAlone",
        "Outdated",
        "DUnknown",
        0,
        1.0,
        None,
        ("Secondary", "StandAlone", "Outdated/DUnknown"),
    ),
    "09-disconnected-node2.txt": State9(
        "Primary",
        "Unknown",
        "StandAlone",
        "UpToDate",
        "DUnknown",
        0,
        1.0,
        None,
        ("Primary", "StandAlone", "UpToDate/DUnknown"),
    ),
    "10-both-primary-disconnected-node1.txt": _STANDALONE_64,
    "10-both-primary-disconnected-node2.txt": _STANDALONE_64,
    "11-after-connect-splitbrain-node1.txt": _STANDALONE_64,
    "11-after-connect-splitbrain-node2.txt": _STANDALONE_64,
    "12-sb-recovery-sample01-node1.txt": State9(
        "Secondary",
        "Unknown",
        "Connecting",
        "UpToDate",
        "DUnknown",
        64,
        0.9998,
        None,
        ("Secondary", "Connected", "Inconsistent/UpToDate"),
    ),
    "12-sb-recovery-sample01-node2.txt": State9(
        "Primary",
        "Secondary",
        "SyncSource",
        "UpToDate",
        "Inconsistent",
        0,
        1.0,
        None,
        ("Primary", "Connected", "UpToDate/UpToDate"),
    ),
    "13-sb-recovered-node1.txt": _synced("Secondary", "Primary"),
    "13-sb-recovered-node2.txt": _synced("Primary", "Secondary"),
    "18-quorum-majority-connected-node1.txt": _synced("Secondary", "Primary"),
    "18-quorum-majority-connected-node2.txt": _synced("Primary", "Secondary"),
}

# Initial sync, one sample a second: (out-of-sync KiB, percent done, estimated seconds left).
_SYNC_NODE1 = [  # SyncSource, Primary
    (241364, 7.91, 35),
    (212820, 18.8, 25),
    (187732, 28.37, 23),
    (166996, 36.29, 25),
    (142548, 45.61, 18),
    (114516, 56.31, 15),
    (92244, 64.81, 12),
    (74068, 71.74, 11),
    (49108, 81.26, 7),
    (27732, 89.42, 4),
    (5076, 98.06, 1),
]
_SYNC_NODE2 = [  # SyncTarget, Secondary
    (259668, 0.93, 77),
    (234708, 10.45, 34),
    (207316, 20.9, 26),
    (183892, 29.84, 25),
    (160596, 38.73, 25),
    (136788, 47.81, 19),
    (107092, 59.14, 15),
    (88404, 66.27, 13),
    (67668, 74.18, 10),
    (41812, 84.05, 6),
    (22740, 91.32, 3),
    (468, 99.82, 0),
]
for _i, (_oos, _pct, _eta) in enumerate(_SYNC_NODE1, start=2):
    EXPECT_92_STATES[f"04-initial-sync-sample{_i:02d}-node1.txt"] = State9(
        "Primary",
        "Secondary",
        "SyncSource",
        "UpToDate",
        "Inconsistent",
        _oos,
        _pct / 100,
        _eta,
        ("Primary", "Connected", "UpToDate/Inconsistent"),
    )
for _i, (_oos, _pct, _eta) in enumerate(_SYNC_NODE2, start=1):
    EXPECT_92_STATES[f"04-initial-sync-sample{_i:02d}-node2.txt"] = State9(
        "Secondary",
        "Primary",
        "SyncTarget",
        "Inconsistent",
        "UpToDate",
        _oos,
        _pct / 100,
        _eta,
        (
            "Secondary",
            "Connected",
            "UpToDate/UpToDate" if _i == 12 else "Inconsistent/UpToDate",
        ),  # synced meanwhile
    )

# Not up: no JSON entry; `drbdadm role|cstate` rc 10 "Unknown resource"; `dstate` answers from
# the meta data (or finds none).
EXPECT_92_DOWN: Dict[str, Tuple[int, Optional[LocalPeer]]] = {
    "00-unconfigured-node1.txt": (1, None),  # "No valid meta data found"
    "00-unconfigured-node2.txt": (1, None),
    "01-node1-up-peer-absent-node2.txt": (0, LocalPeer("Inconsistent")),
    "22-down-node1.txt": (0, LocalPeer("Consistent")),
    "22-down-node2.txt": (0, LocalPeer("Consistent")),
}

# One drbdadm command per file: (method, ok, refused, reason).
EXPECT_92_ACTIONS = {
    "01a-up-node1.txt": ("up", True, False, None),
    "01a-up-node2.txt": ("up", True, False, None),
    "03-primary-refused-inconsistent-node1.txt": ("primary", False, True, "no_uptodate_data"),
    "06-primary-refused-node2-while-node1-primary-node2.txt": (
        "primary",
        False,
        True,
        "multiple_primaries",
    ),
    "07a-primary-node2.txt": ("primary", True, False, None),
    "07a-secondary-node1.txt": ("secondary", True, False, None),
    "08-primary-refused-node1-while-node2-primary-node1.txt": (
        "primary",
        False,
        True,
        "multiple_primaries",
    ),
    "10a-primary-refused-outdated-while-disconnected-node1.txt": (
        "primary",
        False,
        True,
        "no_uptodate_data",
    ),
    "12a-victim-secondary-node1.txt": ("secondary", True, False, None),
    "22a-secondary-node2.txt": ("secondary", True, False, None),
}

EXPECT_92_DMESG = {
    "dmesg-00-to-10-node1.txt": frozenset(),  # disconnects, no split brain
    "dmesg-00-to-10-node2.txt": frozenset(),
    "dmesg-11-splitbrain-node1.txt": frozenset({"r0"}),
    "dmesg-11-splitbrain-node2.txt": frozenset({"r0"}),
    "dmesg-12-sb-recovery-node1.txt": frozenset(),
    "dmesg-12-sb-recovery-node2.txt": frozenset(),
    "dmesg-22-teardown-node1.txt": frozenset(),
    "dmesg-22-teardown-node2.txt": frozenset(),
}

# Captures of other DRBD commands, read by the test file of their own parser.
READ_ELSEWHERE_92 = {
    "02b-drbdsetup-show-node1.txt": "test_audit.py",  # drbdsetup show: the data-safety audit
}


def check_proc_92(cap: Dict[str, Tuple[int, str, str]]) -> None:
    rc, out, _ = cap[PROC_DRBD]
    assert rc == 0 and parse_proc_version(out) == "9.2.18"
    assert parse_proc_drbd(out) == {}  # 9's /proc/drbd holds only the version


def check_state_92(path: Path, exp: State9) -> None:
    cap = load_capture(path)
    check_proc_92(cap)
    status = parse_status_json(cap["drbdsetup status --json"][1])
    assert set(status) == {"r0"}
    got = resource_from_status(status["r0"])
    assert got == DrbdResource(
        name="r0",
        role=exp.role,
        peer_role=exp.peer_role,
        connection=exp.connection,
        disk=exp.disk,
        peer_disk=exp.peer_disk,
        out_of_sync_bytes=exp.oos_kib * KIB,
        sync_progress=pytest.approx(exp.progress),
        sync_eta_seconds=exp.eta,
    )
    role, cstate, dstate = exp.adm
    assert parse_role(cap["drbdadm role r0"][1]) == LocalPeer(role)  # local only on 9
    assert parse_cstate(cap["drbdadm cstate r0"][1]) == cstate
    assert parse_dstate(cap["drbdadm dstate r0"][1]) == LocalPeer(*dstate.split("/"))


def check_down_92(path: Path, dstate: Tuple[int, Optional[LocalPeer]]) -> None:
    cap = load_capture(path)
    check_proc_92(cap)
    assert parse_status_json(cap["drbdsetup status --json"][1]) == {}
    for command in ("drbdadm role r0", "drbdadm cstate r0"):
        rc, out, err = cap[command]
        assert is_unknown_resource(rc, out + err), command
    rc, out, err = cap["drbdadm dstate r0"]
    assert rc == dstate[0]
    if rc == 0:
        assert parse_dstate(out) == dstate[1]
    # Forced to the 8.4 way (9's /proc/drbd lists no minor, so drbdadm is asked): "not up" too.
    fake = FakeRunner()
    install(fake, cap)
    fake.answer(("drbdadm", "sh-minor", "r0"), stdout="0\n")
    assert Drbd(fake, version="8.4").observe(["r0"]) == (DrbdResource(name="r0", configured=False),)
    assert fake.calls[-1] == ("drbdadm", "cstate", "r0")


def check_action_92(path: Path, exp: Tuple[str, bool, bool, Optional[str]]) -> None:
    method, ok, refused, reason = exp
    cap = load_capture(path)
    assert list(cap) == [f"drbdadm {method} r0"]
    fake = FakeRunner()
    install(fake, cap)
    step = getattr(Drbd(fake), method)("r0")
    assert (step.ok, step.refused, step.reason) == (ok, refused, reason)
    assert fake.calls == [("drbdadm", method, "r0")]
    if refused:
        rc, _, err = cap[f"drbdadm {method} r0"]
        words = err.split("State change failed: ")[1].splitlines()[0]
        assert step.message == f"`drbdadm {method} r0` refused by DRBD (rc {rc}): {words}"


@pytest.mark.parametrize("name", sorted(os.listdir(DRBD92)))
def test_drbd92_fixture(name: str) -> None:
    path = DRBD92 / name
    if name in EXPECT_92_STATES:
        check_state_92(path, EXPECT_92_STATES[name])
    elif name in EXPECT_92_DOWN:
        check_down_92(path, EXPECT_92_DOWN[name])
    elif name in EXPECT_92_ACTIONS:
        check_action_92(path, EXPECT_92_ACTIONS[name])
    elif name in EXPECT_92_DMESG:
        assert find_split_brain(text(path)) == EXPECT_92_DMESG[name]
    elif name in READ_ELSEWHERE_92:
        reader = os.path.join(os.path.dirname(os.path.abspath(__file__)), READ_ELSEWHERE_92[name])
        with open(reader) as f:
            assert name in f.read(), f"{name} is read by no test in {READ_ELSEWHERE_92[name]}"
    else:
        pytest.fail(f"new fixture {name}: write down the state it must read as")


def test_drbd92_expectations_name_existing_files() -> None:
    tables = (
        EXPECT_92_STATES,
        EXPECT_92_DOWN,
        EXPECT_92_ACTIONS,
        EXPECT_92_DMESG,
        READ_ELSEWHERE_92,
    )
    assert set().union(*tables) == set(os.listdir(DRBD92))


@pytest.mark.parametrize("node,samples", [("node1", range(1, 13)), ("node2", range(1, 13))])
def test_drbd92_initial_sync_progress_is_monotone(node: str, samples: range) -> None:
    got = []
    for i in samples:
        cap = load_capture(DRBD92 / f"04-initial-sync-sample{i:02d}-{node}.txt")
        got.append(resource_from_status(parse_status_json(cap["drbdsetup status --json"][1])["r0"]))
    progress = [r.sync_progress for r in got]
    oos = [r.out_of_sync_bytes for r in got]
    assert progress == sorted(progress) and progress[0] < 0.01 and progress[-1] > 0.98
    assert oos == sorted(oos, reverse=True)
    syncing = [r for r in got if r.connection in ("SyncSource", "SyncTarget")]
    assert len(syncing) >= 11 and all(r.sync_eta_seconds is not None for r in syncing)


def test_drbd92_split_brain_then_recovery_clears_it() -> None:
    split = text(DRBD92 / "dmesg-11-splitbrain-node1.txt")
    recovery = text(DRBD92 / "dmesg-12-sb-recovery-node1.txt")
    before = text(DRBD92 / "dmesg-00-to-10-node1.txt")
    assert find_split_brain(before + split) == {"r0"}
    assert find_split_brain(before + split + recovery) == frozenset()
    # the split brain happening again after a recovery is reported again
    assert find_split_brain(split + recovery + split) == {"r0"}


# ============================================================================================
# Hand-written DRBD 9 JSON (states the lab did not capture)
# ============================================================================================


def test_json_quorum_lost() -> None:
    status = parse_status_json(text(DRBD92_JSON / "quorum-lost-primary.json"))
    assert status["r0"].suspended_quorum is True
    assert resource_from_status(status["r0"]) == DrbdResource(
        name="r0",
        role="Primary",
        peer_role="Unknown",
        connection="Connecting",
        disk="UpToDate",
        peer_disk="DUnknown",
        out_of_sync_bytes=0,
        sync_progress=1.0,
        quorum=False,
    )


def test_json_two_volumes_one_syncing_and_unknown_keys() -> None:
    status = parse_status_json(text(DRBD92_JSON / "two-volumes-one-syncing.json"))
    assert [d.minor for d in status["iscsi1"].devices] == [1, 2]
    assert resource_from_status(status["iscsi1"]) == DrbdResource(
        name="iscsi1",
        role="Secondary",
        peer_role="Primary",
        connection="SyncTarget",
        disk="Inconsistent",
        peer_disk="UpToDate",
        out_of_sync_bytes=160596 * KIB,
        sync_progress=pytest.approx(0.3873),
        sync_eta_seconds=25.0,
    )
    assert resource_from_status(status["iscsi2"]).connection == "Connected"


def test_several_peers_report_the_primary_and_the_least_healthy_link() -> None:
    # Not a two-host setup, but DRBD 9 allows it: a Primary on any peer must show (never two
    # Primaries), and a broken link must not hide behind a healthy one.
    def peer(name: str, state: str, role: str, repl: str, disk: str, oos: int) -> Drbd9Connection:
        pd = Drbd9PeerDevice(0, repl, disk, oos * KIB, 100.0 if oos == 0 else 50.0)
        return Drbd9Connection(name, None, state, role, (pd,))

    healthy = peer("a", "Connected", "Secondary", "Established", "UpToDate", 0)
    broken = peer("b", "Connecting", "Primary", "Off", "DUnknown", 64)
    for conns in ((healthy, broken), (broken, healthy)):
        res = Drbd9Resource("r0", "Secondary", False, (Drbd9Device(0, 0, "UpToDate"),), conns)
        got = resource_from_status(res)
        assert (got.peer_role, got.connection, got.peer_disk) == (
            "Primary",
            "Connecting",
            "DUnknown",
        )
        assert got.out_of_sync_bytes == 64 * KIB and got.sync_progress == 0.5


# ============================================================================================
# Parsers on edge cases and garbage
# ============================================================================================


def test_role_cstate_dstate_forms() -> None:
    assert parse_role("Primary/Unknown\n") == LocalPeer("Primary", "Unknown")
    assert parse_role("Secondary\n") == LocalPeer("Secondary", None)
    assert parse_role("Unconfigured\n") is None
    assert parse_cstate("Unconfigured\n") is None
    assert parse_dstate("Unconfigured\n") is None
    # a two-volume 8.4 resource: one line per volume
    assert parse_role("Primary/Secondary\nPrimary/Secondary\n") == LocalPeer("Primary", "Secondary")
    assert parse_cstate("Connected\nSyncSource\n") == "SyncSource"
    assert parse_dstate("UpToDate/UpToDate\nUpToDate/Inconsistent\n") == LocalPeer(
        "UpToDate", "Inconsistent"
    )
    # a state a newer DRBD invents is carried through
    assert parse_cstate("Frobnicating\n") == "Frobnicating"


@pytest.mark.parametrize(
    "parser,bad",
    [
        (parse_role, ""),
        (parse_role, "Segmentation fault"),
        (parse_role, "Primary/Secondary/Unknown"),
        (parse_role, "Primary/Secondary\nSecondary/Primary"),
        (parse_cstate, "drbdadm: command not found"),
        (parse_dstate, "UpToDate/DUnknown\nConsistent"),
        (parse_sh_minor, "minor zero"),
        (parse_proc_version, "hello"),
        (parse_proc_drbd, "hello"),
        (parse_proc_drbd, "version: 8.4.11 (api:1/proto:86-101)\n 0: cs:Connected ro:??? ds:x\n"),
        (parse_proc_drbd, "version: 8.4.11\n 0: cs:Connected ro:Primary/Secondary\n"),
        (
            parse_proc_drbd,
            "version: 8.4.11\n 0: cs:SyncSource ro:Primary/Secondary "
            "ds:UpToDate/Inconsistent\n\t[>..] sync'ed: lots\n",
        ),
        (
            parse_proc_drbd,
            "version: 8.4.11\n 0: cs:SyncSource ro:Primary/Secondary "
            "ds:UpToDate/Inconsistent\n\tfinish: 0:00:01 speed: 1 (1) K/sec\n",
        ),
        (parse_status_json, "not json"),
        (parse_status_json, '{"name": "r0"}'),
        (parse_status_json, '[{"name": "r0"}]'),
        (parse_status_json, '[{"name": "r0", "role": "Primary", "devices": [{"volume": true}]}]'),
        (parse_status_json, '[{"name": "r0", "role": "Primary", "connections": [3]}]'),
        (parse_status_json, '[{"name": "r0", "role": "Primary", "devices": 3}]'),
        (parse_status_json, '[{"name": "r0", "role": "Primary", "connections": [{}]}]'),
    ],
)
def test_garbage_raises_a_parse_error_quoting_it(parser, bad: str) -> None:
    with pytest.raises(DrbdParseError) as err:
        parser(bad)
    assert err.value.text == bad
    assert str(err.value).startswith("cannot read `")
    assert repr(bad.strip())[1:40] in str(err.value)  # quoted, whatever the quote character


def test_proc_drbd_units_and_thousands() -> None:
    # Above 4 GiB DRBD prints the amounts in MiB ("(...)M"); speeds group thousands with commas.
    proc = (
        "version: 8.4.11 (api:1/proto:86-101)\n"
        " 3: cs:SyncTarget ro:Secondary/Primary ds:Inconsistent/UpToDate C r-----\n"
        "    ns:0 nr:1048576 dw:1048576 dr:0 al:8 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:9437184\n"
        "\t[===>................] sync'ed: 10.0% (9216/10240)M\n"
        "\tfinish: 1:02:03 speed: 1,234,567 (1,000 -- 999) want: 2,000 K/sec\n"
        " 4: cs:Unconfigured\n"
    )
    table = parse_proc_drbd(proc)
    m = table[3]
    assert m.resync is not None
    assert (m.resync.left_bytes, m.resync.total_bytes) == (9216 * 1024 * KIB, 10240 * 1024 * KIB)
    assert m.resync.eta_seconds == 3723.0 and m.resync.speed_bytes_per_second == 1234567 * KIB
    assert m.sync_progress == pytest.approx(0.1)
    assert table[4].configured is False and table[4].role is None


def test_refusal_words() -> None:
    held = (
        "0: State change failed: (-12) Device is held open by someone\n"
        "Command 'drbdsetup-84 secondary 0' terminated with exit code 11\n"
    )
    assert parse_refusal(held) == (-12, "held_open", "(-12) Device is held open by someone")
    quorum = (
        "r0: State change failed: (-25) No quorum\n"
        "Command 'drbdsetup primary r0' terminated with exit code 11\n"
    )
    assert parse_refusal(quorum) == (-25, "no_quorum", "(-25) No quorum")
    assert parse_refusal("Failure: (161) Minor or volume exists already") is None
    assert drbd_words(held) == "0: State change failed: (-12) Device is held open by someone"


# ============================================================================================
# observe() over a FakeRunner answering real captures
# ============================================================================================


def fake_from(*paths: Path, rename=None) -> FakeRunner:
    fake = FakeRunner()
    for path in paths:
        install(fake, load_capture(path, rename))
    return fake


def answer_84(fake: FakeRunner, minors: Dict[str, int]) -> None:
    # `drbdadm sh-minor` prints one minor per volume (format checked against real drbdadm in
    # test_real_drbdadm_sh_minor_and_real_cat).
    for name, minor in minors.items():
        fake.answer(("drbdadm", "sh-minor", name), stdout=f"{minor}\n")


def test_observe_84_master_then_cached_minor() -> None:
    fake = fake_from(DRBD84 / "state-02-synced-n1primary-node1.txt")
    answer_84(fake, {"r0": 0})
    drbd = Drbd(fake)
    expected = (
        DrbdResource(
            name="r0",
            role="Primary",
            peer_role="Secondary",
            connection="Connected",
            disk="UpToDate",
            peer_disk="UpToDate",
            out_of_sync_bytes=0,
            sync_progress=1.0,
        ),
    )
    assert drbd.observe(["r0"]) == expected
    assert fake.calls == [("cat", "/proc/drbd"), ("drbdadm", "sh-minor", "r0")]
    fake.calls.clear()
    assert drbd.observe(["r0"]) == expected
    assert fake.calls == [("cat", "/proc/drbd")]  # one command per cycle from now on
    assert drbd.version() == "8.4.11" and fake.calls == [("cat", "/proc/drbd")]


def test_observe_84_slave() -> None:
    fake = fake_from(DRBD84 / "state-02-synced-n1primary-node2.txt")
    answer_84(fake, {"r0": 0})
    (r0,) = Drbd(fake).observe(["r0"])
    assert (r0.role, r0.peer_role, r0.connection, r0.split_brain) == (
        "Secondary",
        "Primary",
        "Connected",
        False,
    )
    assert not r0.error and r0.peer_reachable


def test_observe_84_disconnect_is_not_split_brain() -> None:
    # StandAlone after an operator's disconnect; the kernel log shows an older split brain that
    # was resolved, so it is not one now.
    fake = fake_from(DRBD84 / "state-04-disconnected-node2.txt")
    answer_84(fake, {"r0": 0})
    fake.answer(("dmesg",), stdout=text(DRBD84 / "dmesg-sb-recovery-node2.txt"))
    (r0,) = Drbd(fake).observe(["r0"])
    assert (r0.role, r0.peer_role, r0.connection, r0.disk) == (
        "Primary",
        "Unknown",
        "StandAlone",
        "UpToDate",
    )
    assert r0.split_brain is False and r0.error is None
    assert fake.ran("dmesg") == [("dmesg",)]


def test_observe_84_split_brain() -> None:
    fake = fake_from(DRBD84 / "state-06-after-reconnect-splitbrain-node1.txt")
    answer_84(fake, {"r0": 0})
    fake.answer(("dmesg",), stdout=text(DRBD84 / "dmesg-splitbrain-node1.txt"))
    (r0,) = Drbd(fake).observe(["r0"])
    assert r0 == DrbdResource(
        name="r0",
        role="Primary",
        peer_role="Unknown",
        connection="StandAlone",
        disk="UpToDate",
        peer_disk="DUnknown",
        out_of_sync_bytes=64 * KIB,
        split_brain=True,
    )


def test_observe_84_connected_never_reads_the_kernel_log() -> None:
    fake = fake_from(DRBD84 / "state-07-after-sb-recovery-node2.txt")
    answer_84(fake, {"r0": 0})
    fake.answer(("dmesg",), stdout=text(DRBD84 / "dmesg-splitbrain-node2.txt"))
    (r0,) = Drbd(fake).observe(["r0"])
    assert (r0.connection, r0.split_brain) == ("Connected", False)
    assert fake.ran("dmesg") == []


def test_observe_84_unconfigured() -> None:
    # Before `up`: /proc/drbd lists no minor, and drbdadm prints "Unconfigured" with rc 0 (the
    # documented 8.4 behaviour; the /proc/drbd header is the real one).
    header = "".join(text(DRBD84 / "state-02-synced-n1primary-node1.txt").splitlines(True)[2:4])
    assert header.startswith("version: 8.4.11")
    fake = FakeRunner()
    fake.answer(("cat", "/proc/drbd"), stdout=header)
    answer_84(fake, {"r0": 0})
    fake.answer(("drbdadm", "cstate", "r0"), stdout="Unconfigured\n")
    assert Drbd(fake).observe(["r0"]) == (DrbdResource(name="r0", configured=False),)
    assert fake.calls[-1] == ("drbdadm", "cstate", "r0")
    assert fake.ran("drbdadm", "role") == [] and fake.ran("dmesg") == []


def test_observe_84_minor_not_allocated_after_boot() -> None:
    # Real DRBD 8.4.11 in the VM lab, freshly booted (module loaded, resource never up): cstate
    # answers rc 10 "(127) Device minor not allocated". That is "not up", so the controller runs
    # `drbdadm up` instead of holding on an unreadable output.
    header = "".join(text(DRBD84 / "state-02-synced-n1primary-node1.txt").splitlines(True)[2:4])
    fake = FakeRunner()
    fake.answer(("cat", "/proc/drbd"), stdout=header)
    answer_84(fake, {"r0": 0})
    fake.answer(
        ("drbdadm", "cstate", "r0"),
        rc=10,
        stderr="0: Failure: (127) Device minor not allocated\nadditional info from kernel:\n"
        "unknown minor\nCommand 'drbdsetup-84 cstate 0' terminated with exit code 10\n",
    )
    assert Drbd(fake).observe(["r0"]) == (DrbdResource(name="r0", configured=False),)


def test_observe_84_missing_minor_that_is_up_after_all() -> None:
    # /proc/drbd was read before `up` finished; drbdadm then sees it up: read it from drbdadm.
    fake = fake_from(DRBD84 / "state-04-disconnected-node1.txt")
    answer_84(fake, {"r0": 7})
    fake.answer(("dmesg",), stdout="")
    (r0,) = Drbd(fake).observe(["r0"])
    assert r0 == DrbdResource(
        name="r0",
        role="Secondary",
        peer_role="Unknown",
        connection="StandAlone",
        disk="UpToDate",
        peer_disk="DUnknown",
    )
    assert [c[1] for c in fake.ran("drbdadm")] == ["sh-minor", "cstate", "role", "dstate"]


def test_observe_9_master_auto_detected_then_one_command() -> None:
    fake = fake_from(DRBD92 / "05-synced-node1-primary-node1.txt")
    drbd = Drbd(fake)
    expected = (
        DrbdResource(
            name="r0",
            role="Primary",
            peer_role="Secondary",
            connection="Connected",
            disk="UpToDate",
            peer_disk="UpToDate",
            out_of_sync_bytes=0,
            sync_progress=1.0,
        ),
    )
    assert drbd.observe(["r0"]) == expected
    assert fake.calls == [("cat", "/proc/drbd"), ("drbdsetup", "status", "--json")]
    fake.calls.clear()
    assert drbd.observe(["r0"]) == expected
    assert fake.calls == [("drbdsetup", "status", "--json")]
    assert drbd.version() == "9.2.18"


def test_observe_9_slave_and_syncing() -> None:
    (slave,) = Drbd(fake_from(DRBD92 / "05-synced-node1-primary-node2.txt")).observe(["r0"])
    assert (slave.role, slave.peer_role, slave.connection) == ("Secondary", "Primary", "Connected")
    (sync,) = Drbd(fake_from(DRBD92 / "04-initial-sync-sample05-node2.txt")).observe(["r0"])
    assert (sync.connection, sync.disk, sync.peer_disk) == (
        "SyncTarget",
        "Inconsistent",
        "UpToDate",
    )
    assert sync.sync_progress == pytest.approx(0.3873) and sync.sync_eta_seconds == 25.0
    assert sync.out_of_sync_bytes == 160596 * KIB and sync.peer_reachable


def test_observe_9_disconnected_is_not_split_brain() -> None:
    fake = fake_from(DRBD92 / "09-disconnected-node2.txt")
    fake.answer(("dmesg",), stdout=text(DRBD92 / "dmesg-00-to-10-node2.txt"))
    (r0,) = Drbd(fake, version="9").observe(["r0"])
    assert (r0.role, r0.connection, r0.split_brain, r0.error) == (
        "Primary",
        "StandAlone",
        False,
        None,
    )
    assert fake.calls == [("drbdsetup", "status", "--json"), ("dmesg",)]


def test_observe_9_split_brain_and_its_recovery() -> None:
    fake = fake_from(DRBD92 / "11-after-connect-splitbrain-node1.txt")
    split = text(DRBD92 / "dmesg-11-splitbrain-node1.txt")
    fake.answer(("dmesg",), stdout=split)
    drbd = Drbd(fake, kernel_log=("dmesg",))
    (r0,) = drbd.observe(["r0"])
    assert (r0.role, r0.peer_role, r0.connection, r0.split_brain) == (
        "Primary",
        "Unknown",
        "StandAlone",
        True,
    )
    # Resolved later in the log (then disconnected by hand): StandAlone, no split brain.
    fake.answer(("dmesg",), stdout=split + text(DRBD92 / "dmesg-12-sb-recovery-node1.txt"))
    (r0,) = drbd.observe(["r0"])
    assert (r0.connection, r0.split_brain) == ("StandAlone", False)


def test_observe_9_unconfigured_and_renamed_capture() -> None:
    fake = fake_from(DRBD92 / "00-unconfigured-node1.txt")
    assert Drbd(fake).observe(["r0"]) == (DrbdResource(name="r0", configured=False),)
    fake = fake_from(DRBD92 / "13-sb-recovered-node2.txt", rename={"r0": "iscsi1"})
    (a, b) = Drbd(fake).observe(["iscsi1", "r0"])
    assert (a.name, a.role, a.connection) == ("iscsi1", "Primary", "Connected")
    assert b == DrbdResource(name="r0", configured=False)


def _proc_84_with(minors: range) -> str:
    lines = text(DRBD84 / "state-02-synced-n1primary-node1.txt").splitlines(True)
    header, minor = "".join(lines[2:4]), "".join(lines[4:6])
    assert minor.startswith(" 0: cs:")
    return header + "".join(minor.replace(" 0: cs:", f" {i}: cs:", 1) for i in minors)


def test_observe_64_resources_84_costs_one_command_per_cycle() -> None:
    names = [f"iscsi{i}" for i in range(64)]
    fake = FakeRunner()
    fake.answer(("cat", "/proc/drbd"), stdout=_proc_84_with(range(64)))
    fake.answer_with(
        ("drbdadm", "sh-minor"),
        lambda argv: CommandResult(argv, 0, f"{int(argv[2][5:])}\n", "", 0.001),
    )
    drbd = Drbd(fake)
    first = drbd.observe(names)
    assert len(fake.calls) == 1 + 64
    assert [r.name for r in first] == names and all(r.role == "Primary" for r in first)
    fake.calls.clear()
    assert drbd.observe(names) == first
    assert fake.calls == [("cat", "/proc/drbd")]


def test_observe_64_resources_9_costs_one_command_per_cycle() -> None:
    cap = load_capture(DRBD92 / "05-synced-node1-primary-node2.txt")
    (one,) = json.loads(cap["drbdsetup status --json"][1])
    many = [dict(one, name=f"iscsi{i}") for i in range(64)]
    fake = FakeRunner()
    fake.answer(("drbdsetup", "status", "--json"), stdout=json.dumps(many))
    names = [f"iscsi{i}" for i in range(64)]
    got = Drbd(fake, version="9").observe(names)
    assert [r.name for r in got] == names and all(r.peer_role == "Primary" for r in got)
    assert fake.calls == [("drbdsetup", "status", "--json")]


# -- what cannot be read -----------------------------------------------------------------------


def test_garbage_proc_drbd_is_an_error_not_an_exception() -> None:
    fake = FakeRunner()
    fake.answer(("cat", "/proc/drbd"), stdout="Segmentation fault\n")
    got = Drbd(fake).observe(["iscsi1", "iscsi2"])
    assert [r.error for r in got] == ["cannot read `cat /proc/drbd`: 'Segmentation fault'"] * 2


def test_garbage_cstate_is_quoted() -> None:
    fake = FakeRunner()
    fake.answer(("cat", "/proc/drbd"), stdout=_proc_84_with(range(1)))
    answer_84(fake, {"iscsi1": 5})
    fake.answer(("drbdadm", "cstate", "iscsi1"), stdout="<html>oops</html>\n")
    (r,) = Drbd(fake).observe(["iscsi1"])
    assert r.error == "cannot read `drbdadm cstate iscsi1`: '<html>oops</html>'"


def test_garbage_status_json_and_failing_commands() -> None:
    fake = FakeRunner()
    bad = '[{"name": "iscsi1", "role": 7}]'
    fake.answer(("drbdsetup", "status", "--json"), stdout=bad)
    (r,) = Drbd(fake, version="9").observe(["iscsi1"])
    assert r.error == f"cannot read `drbdsetup status --json`: {bad!r}"

    fake = FakeRunner()
    fake.answer(
        ("drbdsetup", "status", "--json"),
        rc=20,
        stderr="Could not connect to 'drbd' generic netlink family\n",
    )
    (r,) = Drbd(fake, version="9").observe(["iscsi1"])
    assert r.error == (
        "cannot read `drbdsetup status --json`: "
        "\"Could not connect to 'drbd' generic netlink family\" (rc 20)"
    )


def test_unknown_resource_in_config_spoils_only_itself() -> None:
    fake = fake_from(DRBD84 / "state-02-synced-n1primary-node1.txt")
    answer_84(fake, {"r0": 0})
    fake.answer(
        ("drbdadm", "sh-minor", "nope"),
        rc=1,
        stderr="'nope' not defined in your config (for this host).\n",
    )
    r0, nope = Drbd(fake).observe(["r0", "nope"])
    assert r0.error is None and r0.role == "Primary"
    assert nope.error == (
        "cannot read `drbdadm sh-minor nope`: "
        "\"'nope' not defined in your config (for this host).\" (rc 1)"
    )


def test_unreadable_kernel_log_makes_standalone_unreadable() -> None:
    fake = fake_from(DRBD92 / "11-after-connect-splitbrain-node1.txt")
    denied = "dmesg: read kernel buffer failed: Operation not permitted"
    fake.answer(("dmesg",), rc=1, stderr=denied)
    (r0,) = Drbd(fake).observe(["r0"])
    assert r0.split_brain is False
    assert r0.error == (
        "cannot read `dmesg`: 'dmesg: read kernel buffer failed: Operation not permitted' (rc 1)"
    )


def test_timeouts() -> None:
    def hang(argv):
        return CommandResult(tuple(argv), 124, "", "", 10.0, True)

    fake = FakeRunner()
    fake.answer_with(("drbdsetup",), hang)
    fake.answer_with(("drbdadm",), hang)
    drbd = Drbd(fake, version="9", timeout=3.0)
    (r,) = drbd.observe(["iscsi1"])
    assert r.error == "`drbdsetup status --json` timed out after 10.0s"
    for step in (drbd.primary("iscsi1"), drbd.secondary("iscsi1"), drbd.up("iscsi1")):
        assert (step.ok, step.refused, step.reason) == (False, False, "timeout")
        assert "timed out" in step.message


def test_missing_proc_drbd_means_module_not_loaded() -> None:
    fake = FakeRunner()
    fake.answer(("cat", "/proc/drbd"), rc=1, stderr="cat: /proc/drbd: No such file or directory\n")
    drbd = Drbd(fake)
    assert drbd.observe(["iscsi1"]) == (DrbdResource(name="iscsi1", configured=False),)
    assert drbd.version() == ""
    # ... but `cat` that cannot start at all is an error, not "nothing is up".
    fake = FakeRunner()
    fake.answer(("cat",), rc=127, stderr="cannot run cat: No such file or directory")
    (r,) = Drbd(fake).observe(["iscsi1"])
    assert r.error and "rc 127" in r.error


def test_unsupported_version_is_an_error() -> None:
    fake = FakeRunner()
    fake.answer(("cat", "/proc/drbd"), stdout="version: 10.0.1 (api:3)\n")
    (r,) = Drbd(fake).observe(["iscsi1"])
    assert r.error == "unsupported DRBD version '10.0.1' in `cat /proc/drbd`"
    with pytest.raises(ValueError):
        Drbd(fake, version="8.3")


# ============================================================================================
# Actions: up / primary / secondary
# ============================================================================================


@pytest.mark.parametrize(
    "stderr,reason",
    [
        # 8.4 wording (drbdsetup-84 names the minor); the -1 and -12 texts are the documented ones
        (
            "0: State change failed: (-1) Multiple primaries not allowed by config\n"
            "Command 'drbdsetup-84 primary 0' terminated with exit code 11\n",
            "multiple_primaries",
        ),
        (
            "0: State change failed: (-2) Need access to UpToDate data\n"
            "Command 'drbdsetup-84 primary 0' terminated with exit code 17\n",
            "no_uptodate_data",
        ),
        (
            "0: State change failed: (-12) Device is held open by someone\n"
            "Command 'drbdsetup-84 secondary 0' terminated with exit code 11\n",
            "held_open",
        ),
        # DRBD 9 (documented, not captured)
        (
            "r0: State change failed: (-25) No quorum\n"
            "Command 'drbdsetup primary r0' terminated with exit code 11\n",
            "no_quorum",
        ),
    ],
)
def test_refusals_are_typed(stderr: str, reason: str) -> None:
    rc = 17 if "(-2)" in stderr else 11
    fake = FakeRunner()
    fake.answer(("drbdadm",), rc=rc, stderr=stderr)
    drbd = Drbd(fake)
    for step in (drbd.primary("r0"), drbd.secondary("r0")):
        assert (step.ok, step.refused, step.reason) == (False, True, reason)
        words = stderr.split("failed: ")[1].splitlines()[0]
        assert step.message.endswith(f"refused by DRBD (rc {rc}): {words}")


def test_up_is_idempotent() -> None:
    fake = FakeRunner()
    fake.answer(
        ("drbdadm", "up"),
        rc=10,
        stderr=(
            "0: Failure: (161) Minor or volume exists already (delete it first)\n"
            "Command 'drbdsetup-84 new-minor r0 0 0' terminated with exit code 10\n"
        ),
    )
    step = Drbd(fake).up("r0")
    assert (step.ok, step.refused) == (True, False)
    assert "already up" in step.message and "(161)" in step.message


def test_other_failures_are_failures_with_drbds_words() -> None:
    fake = FakeRunner()
    fake.answer(
        ("drbdadm", "up"),
        rc=10,
        stderr=(
            "0: Failure: (114) Lower device is already claimed. This usually means it is mounted.\n"
            "Command 'drbdsetup-84 attach 0 /dev/vda /dev/vda internal' terminated with "
            "exit code 10\n"
        ),
    )
    step = Drbd(fake).up("r0")
    assert (step.ok, step.refused, step.reason) == (False, False, "failed")
    assert step.message == (
        "`drbdadm up r0` failed (rc 10): 0: Failure: (114) Lower device is "
        "already claimed. This usually means it is mounted."
    )


def test_up_forgets_the_cached_minor() -> None:
    fake = fake_from(DRBD84 / "state-02-synced-n1primary-node1.txt")
    answer_84(fake, {"r0": 0})
    fake.answer(("drbdadm", "up", "r0"))
    drbd = Drbd(fake)
    drbd.observe(["r0"])
    drbd.up("r0")
    fake.calls.clear()
    drbd.observe(["r0"])
    assert fake.ran("drbdadm", "sh-minor") == [("drbdadm", "sh-minor", "r0")]


# ============================================================================================
# Real processes: drbdadm's own configuration parser and cat, through the real runner
# ============================================================================================


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("drbdadm") is None, reason="drbd-utils is not installed")
def test_real_drbdadm_sh_minor_and_real_cat(tmp_path: Path) -> None:
    host = socket.gethostname()
    conf = tmp_path / "drbd.conf"
    conf.write_text(
        "global { usage-count no; }\n"
        "resource r0 {\n"
        "  protocol C;\n"
        f"  on {host} {{ device /dev/drbd0; disk /dev/vda; address 10.0.0.1:7789;"
        " meta-disk internal; }\n"
        "  on peer { device /dev/drbd0; disk /dev/vda; address 10.0.0.2:7789;"
        " meta-disk internal; }\n"
        "}\n"
        "resource iscsi2 {\n"
        "  volume 0 { device minor 3; disk /dev/vdb; meta-disk internal; }\n"
        "  volume 1 { device minor 4; disk /dev/vdc; meta-disk internal; }\n"
        f"  on {host} {{ address 10.0.0.1:7790; }}\n"
        "  on peer { address 10.0.0.2:7790; }\n"
        "}\n"
    )
    wrapper = tmp_path / "drbdadm"
    wrapper.write_text(f'#!/bin/sh\nexec drbdadm -c {conf} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    runner = ProcessRunner(default_timeout=20.0)

    res = runner.run([str(wrapper), "sh-minor", "iscsi2"])
    assert res.rc == 0 and parse_sh_minor(res.stdout) == (3, 4)

    proc = tmp_path / "proc-drbd"
    proc.write_text(load_capture(DRBD84 / "state-02-synced-n1primary-node2.txt")[PROC_DRBD][1])
    drbd = Drbd(runner, drbdadm=str(wrapper), proc_drbd=str(proc))
    r0, iscsi2 = drbd.observe(["r0", "iscsi2"])
    assert (r0.role, r0.peer_role, r0.connection, r0.error) == (
        "Secondary",
        "Primary",
        "Connected",
        None,
    )
    # iscsi2's minors are not in /proc/drbd; drbdadm then asks the kernel, which has no DRBD here.
    assert iscsi2.error and iscsi2.error.startswith("cannot read `" + str(wrapper) + " cstate")
    assert drbd.version() == "8.4.11"

    # No /proc/drbd at all (the module is not loaded): nothing is up.
    gone = Drbd(runner, drbdadm=str(wrapper), proc_drbd=str(tmp_path / "absent"))
    assert gone.observe(["r0"]) == (DrbdResource(name="r0", configured=False),)
    assert gone.version() == ""


def test_the_worst_first_disk_order_ranks_every_disk_state_once():
    # Built from model.DRBD_DISK_STATES: a state added or moved there must keep this a ranking.
    from iscsi_ha.controller.model import DRBD_DISK_STATES
    from iscsi_ha.controller.systems.drbd.common import _DISK_ORDER

    assert sorted(_DISK_ORDER) == sorted(DRBD_DISK_STATES)
    assert _DISK_ORDER[0] == "Failed" and _DISK_ORDER[-1] == "UpToDate"
