"""The ledger (controller/ledger.py): what counts as watching without a gap, and what never does.

Properties (Hypothesis): whatever sequence of observations, clock readings, restarts and reboots,
the ledger proves a resource only if this very run saw it Connected and complete, then the peer
vanish, with no look further apart than the allowed gap; and a damaged, foreign, future or missing
ledger file is never proof. Plus: decide() never promotes alone (peer unreachable) without proof.
"""

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from iscsi_ha.controller import ledger as L
from iscsi_ha.controller.decide import decide
from iscsi_ha.controller.model import (
    DRBD_CONNECTION_STATES,
    DRBD_DISK_STATES,
    DRBD_PEER_REACHABLE,
    Evidence,
    ManualMode,
    PeerObservation,
    PoolRole,
    Promote,
)
from worlds import res, world

HOST = "node1"
GAP = 20.0
CONNECTED_TO_PRIMARY = res(peer_role="Primary")
GONE = res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown")


def step(led, r, mono, boot="b1", run="r1", wall=None):
    return L.advance(led, (r,), mono, wall if wall is not None else 1e9 + mono, boot, run, GAP)


def proof(led, mono, boot="b1", run="r1"):
    return L.evidence(led, "iscsi1", mono, boot, run, GAP)


def test_watched_loss_is_proof():
    led = step(L.Ledger(HOST), CONNECTED_TO_PRIMARY, 0)
    led = step(led, GONE, 5)
    ev = proof(led, 5)
    assert ev.watched and ev.last_peer_role == "Primary" and ev.last_connected == 1e9


@pytest.mark.parametrize(
    "boot, run, mono, reason",
    [
        ("b2", "r1", 6, "rebooted"),
        ("b1", "r2", 6, "restarted"),
        ("b1", "r1", 5 + GAP + 0.1, "gap"),
        ("b1", "r1", 4, "gap"),  # monotonic time going back: not this boot's clock
    ],
)
def test_reboot_restart_or_gap_breaks_the_proof(boot, run, mono, reason):
    led = step(step(L.Ledger(HOST), CONNECTED_TO_PRIMARY, 0), GONE, 5)
    ev = proof(led, mono, boot, run)
    assert not ev.watched and ev.reason == reason
    led = step(led, GONE, mono, boot, run)
    assert not proof(led, mono, boot, run).watched
    # ... and stays broken until the peer is seen Connected again.
    assert not proof(step(led, GONE, mono + 1, boot, run), mono + 1, boot, run).watched


def test_gap_before_the_loss_is_no_proof():
    led = step(L.Ledger(HOST), CONNECTED_TO_PRIMARY, 0)
    led = step(led, GONE, GAP + 1)
    assert proof(led, GAP + 1).reason == "gap"


@pytest.mark.parametrize(
    "before",
    [
        res(peer_role="Primary", disk="Inconsistent", connection="Connected"),
        res(peer_role="Primary", connection="SyncTarget", disk="Inconsistent"),
    ],
)
def test_loss_while_not_in_sync_is_no_proof(before):
    led = step(step(L.Ledger(HOST), before, 0), GONE, 5)
    ev = proof(led, 5)
    assert not ev.watched and ev.reason == "not_in_sync"


def test_an_unobserved_cycle_breaks_the_watch():
    led = step(L.Ledger(HOST), CONNECTED_TO_PRIMARY, 0)
    led = step(led, res(error="cannot read `cat /proc/drbd`: ''"), 5)
    led = step(led, GONE, 10)
    assert not proof(led, 10).watched


def test_file_round_trip_keeps_the_report_but_never_the_proof(tmp_path):
    store = L.LedgerStore(str(tmp_path), HOST, 1e9, boot_id="b1", run_id="r1")
    store.ledger = step(step(store.ledger, CONNECTED_TO_PRIMARY, 0), GONE, 5)
    store.save_if_changed(1e9 + 5)
    assert oct(os.stat(tmp_path / L.LEDGER_FILE).st_mode & 0o777) == "0o600"
    again = L.LedgerStore(str(tmp_path), HOST, 1e9 + 6, boot_id="b1", run_id="r2")
    assert again.ledger.entries == store.ledger.entries
    ev = proof(again.ledger, 6, run="r2")
    assert not ev.watched and ev.last_peer_role == "Primary" and ev.reason == "restarted"


def _valid_text():
    led = step(step(L.Ledger(HOST), CONNECTED_TO_PRIMARY, 0), GONE, 5)
    return L.render(led, 1e9 + 5)


@pytest.mark.parametrize(
    "mangle, words",
    [
        (lambda t: t[: len(t) // 2], "damaged"),
        (lambda t: "", "damaged"),
        (lambda t: "[]", "damaged"),
        (lambda t: t.replace('"node1"', '"node2"'), "written by host 'node2'"),
        (lambda t: t.replace('"format": 1', '"format": 2'), "format 2"),
        (lambda t: json.dumps({**json.loads(t), "written": 9e9}), "in the future"),
        (
            lambda t: t.replace('"last_seen": 1000000005.0', '"last_seen": 9000000000.0'),
            "from the future",
        ),
        (
            lambda t: t.replace('"boot_id": "b1"', '"boot_id": 7, "x": {}').replace(
                '"proof": true', '"proof": "yes"'
            ),
            None,
        ),
        (
            lambda t: t.replace('"watching": true', '"watching": null').replace(
                '"run_id": "r1"', '"run_id": null'
            ),
            None,
        ),
    ],
)
def test_damaged_foreign_or_future_file_is_not_trusted(mangle, words):
    led = L.parse(mangle(_valid_text()), HOST, 1e9 + 10)
    if words is not None:
        assert led.problem and words in led.problem and not led.entries
        assert proof(led, 6).reason == "untrusted_record"
    assert not proof(led, 6).watched
    assert not proof(step(led, GONE, 6), 6).watched


@pytest.mark.parametrize(
    "content, words",
    [
        (b'{"format": 1, "host": "\xff\xfe"}', "written by host"),  # not UTF-8
        (b"[" * 100000, "damaged"),  # nested past the recursion limit
        (b" " * (L.LEDGER_LIMIT + 1), "cannot read the ledger"),  # larger than any real ledger
    ],
)
def test_hostile_ledger_file_is_not_trusted_and_never_raises(tmp_path, content, words):
    (tmp_path / L.LEDGER_FILE).write_bytes(content)
    store = L.LedgerStore(str(tmp_path), HOST, 1e9, boot_id="b1", run_id="r1")
    assert store.ledger.problem and words in store.ledger.problem
    assert not store.ledger.entries


def test_a_fifo_as_the_ledger_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / L.LEDGER_FILE)
    store = L.LedgerStore(str(tmp_path), HOST, 1e9, boot_id="b1", run_id="r1")
    assert store.ledger.problem and "cannot read the ledger" in store.ledger.problem


# ------------------------------------------------------------------ properties

observations = st.builds(
    res,
    role=st.sampled_from(["Primary", "Secondary", "Unknown"]),
    peer_role=st.sampled_from(["Primary", "Secondary", "Unknown"]),
    connection=st.sampled_from(DRBD_CONNECTION_STATES),
    disk=st.sampled_from(DRBD_DISK_STATES),
    peer_disk=st.sampled_from(DRBD_DISK_STATES),
    error=st.sampled_from([None, None, None, "unreadable"]),
)
events = st.lists(
    st.tuples(
        observations,
        st.floats(0, 3 * GAP, allow_nan=False),  # time since the previous look
        st.sampled_from(["same", "same", "same", "restart", "reboot"]),
    ),
    min_size=1,
    max_size=12,
)


def _oracle(history):
    """Proof by the rule's words: a complete Connected look, then only unreachable looks, all in
    the last run and boot, each within GAP of the previous one."""
    if not history or history[-1][0].peer_reachable:
        return False
    last_run = history[-1][2]
    i = len(history) - 1
    while i >= 0 and not history[i][0].peer_reachable:
        if history[i][0].error or history[i][2] != last_run:
            return False
        i -= 1
    if i < 0:
        return False
    seen, _, run = history[i][:3]
    if run != last_run or seen.connection not in ("Connected", "Established") or seen.error:
        return False
    complete = seen.disk == "UpToDate" and (seen.role == "Primary" or seen.peer_disk == "UpToDate")
    gaps_ok = all(history[k][1] <= GAP for k in range(i + 1, len(history)))
    return complete and gaps_ok


@settings(max_examples=500, deadline=None)
@given(events)
def test_proof_only_for_an_unbroken_watch(evs):
    led, mono, run, boot, history = L.Ledger(HOST), 0.0, 0, 0, []
    for obs, dt, what in evs:
        mono += dt
        if what == "restart":
            run += 1
        if what == "reboot":
            boot, run, mono = boot + 1, run + 1, dt
        if obs.error is None and not obs.peer_reachable:
            pass
        led = L.advance(led, (obs,), mono, 1e9 + mono, f"b{boot}", f"r{run}", GAP)
        # A look that reads nothing useful (error) still counts as a look in the history.
        history.append((obs, dt if what == "same" else 0.0, (boot, run)))
    ev = L.evidence(led, "iscsi1", mono, f"b{boot}", f"r{run}", GAP)
    if ev.watched:
        assert _oracle(history), history


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_no_file_content_is_ever_proof(text):
    led = L.parse(text, HOST, 1e9)
    for run in ("r1", "other"):
        assert not L.evidence(led, "iscsi1", 5, "b1", run, GAP).watched
        assert not L.evidence(
            L.advance(led, (GONE,), 5, 1e9, "b1", run, GAP), "iscsi1", 5, "b1", run, GAP
        ).watched


unreachable = st.builds(
    res,
    role=st.just("Secondary"),
    peer_role=st.just("Unknown"),
    connection=st.sampled_from(sorted(set(DRBD_CONNECTION_STATES) - DRBD_PEER_REACHABLE)),
    disk=st.sampled_from(DRBD_DISK_STATES),
    peer_disk=st.sampled_from(DRBD_DISK_STATES),
)


@settings(max_examples=400, deadline=None)
@given(
    unreachable,
    st.sampled_from([ManualMode(), ManualMode(True, None)]),
    st.sampled_from(
        [
            Evidence("iscsi1"),
            Evidence("iscsi1", reason="gap", why_not="x"),
            Evidence("other", watched=True),
        ]
    ),
    st.sampled_from([None, PeerObservation(), PeerObservation(True, "slave", {})]),
)
def test_never_promotes_alone_without_proof(r, mode, ev, peer):
    from iscsi_ha.controller.model import StorageRole

    mode = ManualMode(True, StorageRole.PRIMARY) if mode.enabled else mode
    obs = world(PoolRole.MASTER, resources=(r,), conflict=False, evidence=(ev,), peer=peer)
    plan = decide(obs, mode)
    if Promote("iscsi1") in plan.actions:
        assert r.peer_disk in ("Outdated", "Inconsistent"), (r, plan)
    elif r.disk == "UpToDate" and r.peer_disk not in ("Outdated", "Inconsistent"):
        assert plan.blocked and "cannot prove" in plan.refusals[0]


# ------------------------------------------------------------------ DRBD's own meta data

from drbd_captures import FIXTURES, load_capture  # noqa: E402
from iscsi_ha.controller.systems.drbd import DrbdParseError, parse_get_gi  # noqa: E402

GI = FIXTURES / "drbd84-gi"


@pytest.mark.parametrize(
    "capture, flags",
    [
        # (consistent, was_uptodate, primary, connected, full_sync, peer_outdated, crashed_primary)
        ("gi-01-connected-node1.txt", (1, 1, 1, 1, 0, 0, 0)),
        ("gi-01-connected-node2.txt", (1, 1, 0, 1, 0, 0, 0)),
        ("gi-02-link-cut-node1.txt", (1, 1, 1, 0, 0, 0, 0)),  # Primary alone, no fence handler
        ("gi-02-link-cut-node2.txt", (1, 0, 0, 0, 0, 0, 0)),  # after `drbdadm outdate`
        ("gi-03-crashed-primary-up-alone-node1.txt", (1, 1, 0, 0, 0, 0, 1)),
        ("gi-04-healed-node1.txt", (1, 1, 0, 1, 0, 0, 1)),  # "crashed" survives the resync
    ],
)
def test_get_gi_parsed_from_real_drbd(capture, flags):
    out = load_capture(GI / capture)["drbdadm get-gi r0"][1]
    gi = parse_get_gi(out)
    names = (
        "consistent",
        "was_uptodate",
        "primary",
        "connected",
        "full_sync",
        "peer_outdated",
        "crashed_primary",
    )
    assert tuple(int(getattr(gi, n)) for n in names) == flags
    assert gi.text == out.strip() and len(gi.current) == 16
    # show-gi (kept in the same capture) prints the same line over its labels.
    assert gi.text in (GI / capture).read_text().split("$ drbdadm show-gi r0", 1)[1]


@pytest.mark.parametrize("text", ["", "garbage", "1E9F720B5884F3DD:0:1:1", "1:1:1:1:0:0:0"])
def test_get_gi_garbage_is_an_error_with_the_text(text):
    with pytest.raises(DrbdParseError) as err:
        parse_get_gi(text, "drbdadm get-gi r0")
    assert "drbdadm get-gi r0" in str(err.value)


def test_drbds_peer_outdated_flag_is_proof_and_crashed_primary_is_said():
    obs = world(
        PoolRole.MASTER,
        resources=(GONE,),
        conflict=False,
        evidence=(Evidence("iscsi1", drbd_peer_outdated=True),),
    )
    assert Promote("iscsi1") in decide(obs, ManualMode()).actions
    obs = world(
        PoolRole.MASTER,
        resources=(GONE,),
        conflict=False,
        evidence=(Evidence("iscsi1", drbd_crashed_primary=True),),
    )
    plan = decide(obs, ManualMode())
    assert Promote("iscsi1") not in plan.actions
    assert "crashed as Primary and has not seen its peer since" in plan.refusals[0]


def test_generation_ids_are_recorded_when_connected_and_kept_in_the_file(tmp_path):
    gi = parse_get_gi(load_capture(GI / "gi-01-connected-node2.txt")["drbdadm get-gi r0"][1])
    led = L.Ledger(HOST)
    assert L.gi_wanted(led, CONNECTED_TO_PRIMARY, 1e9)
    led = L.advance(led, (CONNECTED_TO_PRIMARY,), 0, 1e9, "b1", "r1", GAP, {"iscsi1": gi.text})
    assert led.entries["iscsi1"].connected.gi == gi.text
    # Not read again on every cycle of the same connection; again after GI_REFRESH.
    assert not L.gi_wanted(led, CONNECTED_TO_PRIMARY, 1e9 + 5)
    led = L.advance(led, (CONNECTED_TO_PRIMARY,), 5, 1e9 + 5, "b1", "r1", GAP)
    assert led.entries["iscsi1"].connected.gi == gi.text
    assert L.gi_wanted(led, CONNECTED_TO_PRIMARY, 1e9 + L.GI_REFRESH)
    assert not L.gi_wanted(led, GONE, 1e9 + L.GI_REFRESH)  # only while in sync
    led = L.advance(led, (GONE,), 10, 1e9 + 10, "b1", "r1", GAP)
    again = L.parse(L.render(led, 1e9 + 10), HOST, 1e9 + 11)
    assert again.entries["iscsi1"].connected.gi == gi.text


def test_an_unreadable_get_gi_is_not_retried_every_cycle():
    led = L.advance(
        L.Ledger(HOST), (CONNECTED_TO_PRIMARY,), 0, 1e9, "b1", "r1", GAP, {"iscsi1": ""}
    )
    assert led.entries["iscsi1"].connected.gi is None
    assert not L.gi_wanted(led, CONNECTED_TO_PRIMARY, 1e9 + 5)


def test_a_ledger_that_cannot_be_written_is_logged_once_and_again_when_it_recovers(
    tmp_path, caplog
):
    """A state directory that is not a directory (a real ENOTDIR from the file system) fails
    every cycle's write; the log says so once, and once more when writes work again."""
    state = tmp_path / "state"
    state.write_text("not a directory")
    store = L.LedgerStore(str(state), HOST, 1e9, boot_id="b1", run_id="r1")
    store.ledger = step(store.ledger, CONNECTED_TO_PRIMARY, 0)
    caplog.set_level("INFO", logger=L.log.name)
    for k in range(5):
        store.save_if_changed(1e9 + k)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(state) in errors[0].getMessage()
    assert store.write_problem and "Not a directory" in store.write_problem
    state.unlink()
    state.mkdir()
    for k in range(5, 8):
        store.save_if_changed(1e9 + k)
    again = [r.getMessage() for r in caplog.records if "written again" in r.getMessage()]
    assert len(again) == 1 and store.write_problem is None
    assert (state / L.LEDGER_FILE).exists()


def test_a_read_only_state_directory_is_logged_once_though_each_try_names_a_new_temp_file(
    tmp_path, caplog, monkeypatch
):
    """EROFS from mkstemp names the temporary file it tried, a new one each time: the log must
    not count that as a new problem (it did, once per cycle)."""
    tries = iter(range(1000))

    def read_only(directory, text, mode, prefix=".tmp-"):
        raise OSError(30, "Read-only file system", f"{directory}/.tmp-{next(tries)}")

    monkeypatch.setattr("iscsi_ha.controller.state.write_temp", read_only)
    store = L.LedgerStore(str(tmp_path), HOST, 1e9, boot_id="b1", run_id="r1")
    store.ledger = step(store.ledger, CONNECTED_TO_PRIMARY, 0)
    caplog.set_level("INFO", logger=L.log.name)
    for k in range(10):
        store.save_if_changed(1e9 + k)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Read-only file system" in errors[0], errors
    assert not (tmp_path / L.LEDGER_FILE).exists()
