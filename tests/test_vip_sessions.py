"""vip_sessions: this host's own connections to the VIP, ended when a reconnect finds the target.

Parsed from real ``ss`` captures (``tests/fixtures/ss/``); the adapter is driven on the FakeRunner
with a fake clock and a fake "served" probe, its watcher run inline. The same code against the
real kernel (SOCK_DESTROY) and a real move of the VIP is in ``test_vip_sessions_real.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import pytest
from fakes import FakeRunner
from iscsi_ha.controller.systems.vip import Vip
from iscsi_ha.controller.systems.vip_sessions import (
    SsParseError,
    VipSessions,
    parse_ss,
    unanswered,
)

SS = Path(__file__).parent / "fixtures" / "ss"
VIP = "10.98.0.3"
LIST = ("ss", "-tnH", "dst", VIP, "dport", "=", ":3260")
BOTH_SIDES = (
    "ss",
    "-tnH",
    "(",
    *LIST[2:],
    ")",
    "or",
    "(",
    "src",
    VIP,
    "and",
    "sport",
    "=",
    ":3260",
    ")",
)
TWO = ("and", "(", "sport", "=", ":59484", "or", "sport", "=", ":59494", ")")


def fixture(name: str) -> str:
    return (SS / name).read_text()


def test_parse_lists_every_connection_with_its_state():
    conns = parse_ss(fixture("list-three.txt"))
    assert [c.local for c in conns] == ["10.98.0.2:59484", "10.98.0.2:59494", "10.98.0.2:59508"]
    assert {c.peer for c in conns} == {"10.98.0.3:3260"}
    assert [c.state for c in conns] == ["ESTAB", "ESTAB", "CLOSE-WAIT"]


def test_parse_kill_output_and_detail_lines():
    assert len(parse_ss(fixture("kill-two.txt"))) == 2
    assert parse_ss(fixture("after-kill.txt")) == ()
    (one,) = parse_ss(fixture("list-info.txt"))  # -i's indented detail line is skipped
    assert one.local == "10.98.0.2:59508"


@pytest.mark.parametrize("line", ["State Recv-Q Send-Q", "ESTAB x 0 a:1 b:2", "ESTAB 0 0 a b"])
def test_parse_refuses_what_is_not_a_connection(line):
    with pytest.raises(SsParseError, match="unexpected ss line"):
        parse_ss(line + "\n")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def sessions(runner: FakeRunner, served=lambda: True, wait: float = 30.0, clock=None):
    clock = clock or Clock()
    return VipSessions(
        runner,
        VIP,
        3260,
        wait=wait,
        served=served,
        clock=clock,
        sleep=clock.sleep,
        start=lambda fn: fn(),  # the watcher runs inline
    )


def test_unanswered_are_the_connections_whose_target_side_is_elsewhere():
    # The new holder right after a move: 47450 was made while the other host held the VIP,
    # 47466 after (its target side, 10.98.0.3:3260 -> 10.98.0.2:47466, is here).
    conns = parse_ss(fixture("list-both-sides.txt"))
    assert len(conns) == 3
    (old,) = unanswered(conns, VIP, 3260)
    assert old.local == "10.98.0.2:47450"
    assert unanswered(conns, VIP, 860) == ()  # another port: nothing of ours
    # A dual-stack listener's side prints as [::ffff:10.98.0.3]:3260: still this connection's.
    assert unanswered(parse_ss(fixture("list-both-sides-dual-stack.txt")), VIP, 3260) == ()


def answering(listed: str, killed: str = "", after: str = "") -> FakeRunner:
    runner = FakeRunner()
    runner.answer(LIST, stdout=listed)
    runner.answer(BOTH_SIDES, stdout=listed)
    runner.answer(LIST + TWO, stdout=after)
    runner.answer(("ss", "-K", "-tnH", "dst", VIP, "dport", "=", ":3260") + TWO, stdout=killed)
    return runner


def test_release_waits_until_the_vip_answers_then_ends_only_those_connections():
    runner = answering(
        fixture("list-three.txt").replace(
            "CLOSE-WAIT 1      0      10.98.0.2:59508 10.98.0.3:3260\n", ""
        ),
        fixture("kill-two.txt"),
    )
    clock = Clock()
    polls: List[float] = []

    def served() -> bool:  # the new holder binds the VIP 1.3 s after the release
        polls.append(clock.now)
        # No kill may come while nobody serves: the reconnect would fail (3 s more).
        assert not runner.ran("ss", "-K")
        return clock.now - 100.0 >= 1.3

    sessions(runner, served, clock=clock).after_release()
    assert len(polls) > 10 and clock.now - 100.0 == pytest.approx(1.3, abs=0.05)
    (kill,) = runner.ran("ss", "-K")
    assert kill[-len(TWO) :] == TWO  # by local port: a reconnect made meanwhile is not touched
    assert runner.unexpected == []


def test_release_gives_up_waiting_after_wait_and_ends_them_anyway():
    runner = answering(fixture("kill-two.txt"), fixture("kill-two.txt"))
    clock = Clock()
    sessions(runner, served=lambda: False, wait=5.0, clock=clock).after_release()
    assert 5.0 <= clock.now - 100.0 < 5.1
    assert len(runner.ran("ss", "-K")) == 1


def test_bind_ends_them_at_once_without_probing():
    runner = answering(fixture("kill-two.txt"), fixture("kill-two.txt"))

    def served() -> bool:
        raise AssertionError("the target here serves already: nothing to wait for")

    sessions(runner, served).after_bind()
    assert len(runner.ran("ss", "-K")) == 1


def test_bind_leaves_a_reconnect_made_meanwhile_alone():
    # Listed after the initiator already reconnected to the target here: only the old one ends.
    runner = answering(fixture("list-both-sides.txt"))
    one = ("and", "(", "sport", "=", ":47450", ")")
    runner.answer(LIST + one, stdout="")
    runner.answer(
        ("ss", "-K", "-tnH", *LIST[2:], *one), stdout=fixture("list-both-sides.txt").splitlines()[1]
    )
    sessions(runner).after_bind()
    assert len(runner.ran("ss", "-K")) == 1
    assert runner.unexpected == []


def test_a_connect_under_way_is_left_alone():
    # SYN-SENT: a reconnect waiting for the VIP; ending it would cost open-iscsi 3 s.
    runner = answering(fixture("list-syn-sent.txt"))
    sessions(runner).after_bind()
    sessions(runner).after_release()
    assert runner.ran("ss", "-K") == []


def test_nothing_happens_without_connections_or_when_off():
    runner = answering("")
    sessions(runner).after_release()
    sessions(runner).after_bind()
    assert runner.ran("ss", "-K") == [] and len(runner.ran("ss")) == 2
    off = answering(fixture("list-three.txt"))
    sessions(off, wait=0).after_release()
    assert off.calls == []


def test_a_kernel_without_sock_destroy_is_said_once(caplog):
    # ss -K prints nothing for a socket it could not end; they are still there afterwards.
    runner = answering(fixture("kill-two.txt"), killed="", after=fixture("kill-two.txt"))
    s = sessions(runner)
    with caplog.at_level(logging.WARNING):
        s.after_bind()
        s.after_bind()
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "CONFIG_INET_DIAG_DESTROY" in warned[0]


def test_ss_missing_never_fails_the_move(caplog):
    runner = FakeRunner()  # answers rc 127 to everything
    vip = Vip(
        runner, address=VIP + "/24", interface="eth0", on_released=sessions(runner).after_release
    )
    runner.answer(("ip", "addr", "del"), rc=0)
    with caplog.at_level(logging.WARNING):
        assert vip.unbind().ok
    assert any("cannot list" in r.message for r in caplog.records)


def test_a_second_event_while_a_watcher_runs_starts_none():
    runner = answering(fixture("kill-two.txt"), fixture("kill-two.txt"))
    started = []
    s = VipSessions(runner, VIP, 3260, start=started.append)
    s.after_release()
    s.after_bind()  # the first watcher still runs: it ends the same connections
    assert len(started) == 1
    started[0]()
    s.after_bind()
    assert len(started) == 2


def test_the_vip_adapter_calls_the_hooks_only_when_the_address_moved():
    runner = FakeRunner()
    events: List[str] = []
    vip = Vip(
        runner,
        address=VIP + "/24",
        interface="eth0",
        on_released=lambda: events.append("released"),
        on_bound=lambda: events.append("bound"),
    )
    runner.answer(("ip", "addr", "add"), rc=0)
    runner.answer(("ip", "addr", "del"), rc=0)
    assert vip.bind().ok and vip.unbind().ok
    runner.answer(("ip", "addr", "add"), rc=2, stderr="Error: ipv4: Address already assigned.")
    assert vip.bind().ok  # already there: nothing moved
    assert events == ["bound", "released"]


def test_a_watcher_that_cannot_start_leaves_the_next_move_free():
    runner = answering(fixture("kill-two.txt"), fixture("kill-two.txt"))
    attempts = []

    def start(fn):
        attempts.append(fn)
        if len(attempts) == 1:
            raise RuntimeError("can't start new thread")
        fn()

    s = VipSessions(runner, VIP, 3260, start=start)
    s.after_bind()  # logged, not raised
    s.after_bind()
    assert len(attempts) == 2 and len(runner.ran("ss", "-K")) == 1
