"""DRBD's event streams, parsed from real 8.4.11 captures (``fixtures/drbd84-events``: both
``drbdsetup events all`` and drbd-utils 9's ``events2 all`` over one VM-lab run), and the follower
run against a real process that prints them."""

import threading
import time
from pathlib import Path

from iscsi_ha.controller.systems.drbd.events import (
    DrbdEventSource,
    events_argv,
    parse_events2,
    parse_events84,
    wakes,
)

CAPTURES = Path(__file__).parent / "fixtures" / "drbd84-events"


def lines(name):
    return (CAPTURES / name).read_text().splitlines()


def test_84_state_lines_become_events_and_nothing_else_does():
    text = lines("events-node2.txt")
    events = [parse_events84(line) for line in text]
    states = [e for e in events if e is not None]
    assert len(states) == sum(1 for line in text if line.split()[1:2] == ["ST"])
    assert all(e.resource == "r0" and e.obj == "state" for e in states)
    assert {e.fields["minor"] for e in states} == {"0"}
    # R, UH, UH-post, ST-prev and ST-new carry nothing new
    assert parse_events84("48 R - r0") is None
    assert parse_events84("28 UH 0,r0[0] before-resync-source") is None


def test_84_stream_shows_the_peer_becoming_secondary_during_a_switchover():
    roles = [e.fields["ro"] for e in map(parse_events84, lines("events-node2.txt")) if e]
    # node2 watches node1 demote, then promotes itself: the moment the controller waits for.
    i = roles.index("Secondary/Primary")
    assert "Secondary/Secondary" in roles[i:]
    assert "Primary/Secondary" in roles[roles.index("Secondary/Secondary", i) :]
    conns = [e.fields["cs"] for e in map(parse_events84, lines("events-node2.txt")) if e]
    assert {"WFConnection", "Connected", "StandAlone"} <= set(conns)


def test_events2_lines_from_drbd_utils_9_on_the_84_kernel():
    events = [e for e in map(parse_events2, lines("events2-node1.txt")) if e]
    assert {e.verb for e in events} == {"create", "change", "destroy"}
    peer_roles = [
        e.fields["role"]
        for e in events
        if e.obj == "connection" and e.verb == "change" and "role" in e.fields
    ]
    assert "Primary" in peer_roles and "Secondary" in peer_roles
    assert parse_events2("exists -") is None
    assert parse_events2("call helper name:r0 peer-node-id:0 helper:before-resync-source") is None


def test_the_92_start_dump_is_parsed_but_wakes_nobody():
    dump = [
        line
        for line in (
            Path(__file__).parent / "fixtures" / "drbd92" / "05-synced-node1-primary-node1.txt"
        )
        .read_text()
        .splitlines()
        if line.startswith("exists ")
    ]
    events = [e for e in map(parse_events2, dump) if e]
    assert {e.obj for e in events} == {"resource", "connection", "device", "peer-device", "path"}
    assert not any(wakes(e, ["r0"]) for e in events)
    assert events[1].fields["role"] == "Secondary"  # the peer, in the connection object


def test_only_configured_resources_wake():
    event = parse_events2("change resource name:r7 role:Primary")
    assert wakes(event, ["r7"]) and not wakes(event, ["r0"])


def test_argv_per_generation():
    assert events_argv("8.4", "/usr/sbin/drbdsetup") == ["/usr/sbin/drbdsetup", "events", "all"]
    assert events_argv("9") == ["drbdsetup", "events2", "all"]
    assert events_argv(None) is None


def _fake_drbdsetup(tmp_path, capture, tail="exit 3"):
    script = tmp_path / "drbdsetup"
    script.write_text(f"#!/bin/sh\ncat '{CAPTURES / capture}'\n{tail}\n")
    script.chmod(0o755)
    return str(script)


def test_follower_reads_a_real_process_and_restarts_it(tmp_path):
    drbdsetup = _fake_drbdsetup(tmp_path, "events-node1.txt")
    got, starts = [], []
    done = threading.Event()

    def on_restart(why):
        starts.append(why)
        if len(starts) == 2:
            done.set()

    source = DrbdEventSource(
        lambda: events_argv("8.4", drbdsetup),
        ["r0"],
        got.append,
        on_restart=on_restart,
        delays=(0.05,),
    )
    source.start()
    try:
        assert done.wait(10), starts
    finally:
        source.stop()
    expected = sum(1 for line in lines("events-node1.txt") if line.split()[1:2] == ["ST"])
    assert len(got) >= expected  # the whole first run, and (maybe part of) the second
    assert starts[:2] == ["DRBD event stream started", "DRBD event stream restarted"]
    assert source.state == "stopped"


def test_follower_waits_while_the_generation_is_unknown_and_stops_a_live_stream(tmp_path):
    drbdsetup = _fake_drbdsetup(tmp_path, "events2-node1.txt", tail="exec sleep 30")
    known = threading.Event()
    got = []
    source = DrbdEventSource(
        lambda: events_argv("9" if known.is_set() else None, drbdsetup),
        ["r0"],
        got.append,
        delays=(0.05,),
    )
    source.start()
    try:
        time.sleep(0.2)
        assert source.state == "waiting" and not got
        known.set()
        deadline = time.monotonic() + 10
        while len(got) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert source.state == "following"
        t0 = time.monotonic()
    finally:
        source.stop()
    assert time.monotonic() - t0 < 3  # the sleeping stream was killed, not waited for
    assert any(e.obj == "connection" and e.fields.get("role") == "Secondary" for e in got)


def test_a_missing_drbdsetup_is_retried_not_fatal(tmp_path):
    source = DrbdEventSource(
        lambda: [str(tmp_path / "nope"), "events", "all"], ["r0"], lambda e: None, delays=(0.05,)
    )
    source.start()
    time.sleep(0.3)
    source.stop()
    assert source.starts == 0 and source.state == "stopped"
