"""``iscsi-cfg switchover`` (controller/switchover.py): the check as a table, and the protocol
between two real ``cycle.Controller``s over fake worlds whose DRBD roles are linked (a role change
on one host is the peer role on the other, and wakes the other's cycle the way DRBD's event does).

The real thing — two controllers, the real peer channel, real tgtd, ``ip``, the DRBD simulator and
a client — is tests/test_switchover_lab.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from iscsi_ha.controller.cycle import Controller, CycleSettings
from iscsi_ha.controller.model import (
    Demote,
    LunInfo,
    ManualMode,
    PoolObservation,
    PoolRole,
    Promote,
    StorageRole,
)
from iscsi_ha.controller.peer import PeerError, Refused
from iscsi_ha.controller.state import ManualModeStore
from iscsi_ha.controller.switchover import (
    DONE,
    FAILED,
    PHASES,
    REFUSED,
    Side,
    Switchover,
    render,
    switchover_refusal,
)
from worlds import FakeSystems, res, world

# ------------------------------------------------------------------------------ the check, pure

UP = {
    "role": "Secondary",
    "peer_role": "Primary",
    "connection": "Connected",
    "disk": "UpToDate",
    "peer_disk": "UpToDate",
    "out_of_sync": 0,
}
HOLDER = Side(
    "node1",
    {"iscsi1": {**UP, "role": "Primary", "peer_role": "Secondary"}},
    serving=True,
    vip_local=True,
    luns=((1, "beaf11", "naa.60014051"),),
)
STANDBY = Side("node2", {"iscsi1": dict(UP)}, luns=((1, "beaf11", "naa.60014051"),))


def with_res(side: Side, **kw) -> Side:
    return replace(side, resources={"iscsi1": {**side.resources["iscsi1"], **kw}})


def test_the_holder_is_found_from_either_side():
    assert switchover_refusal(HOLDER, STANDBY) == (None, True)
    assert switchover_refusal(STANDBY, HOLDER) == (None, False)


@pytest.mark.parametrize(
    "me,peer,words",
    [
        (
            HOLDER,
            with_res(STANDBY, connection="SyncTarget", sync_progress=0.45),
            "a resync is running on iscsi1 (node2: SyncTarget, 45 % done)",
        ),
        (
            HOLDER,
            with_res(STANDBY, connection="WFConnection"),
            "the peer is not Connected for iscsi1 (node2 sees WFConnection)",
        ),
        (
            with_res(HOLDER, peer_disk="Outdated"),
            STANDBY,
            "iscsi1 is not UpToDate on both hosts (node1 sees UpToDate/Outdated)",
        ),
        (HOLDER, with_res(STANDBY, out_of_sync=4096), "iscsi1 has 4096 bytes out of sync"),
        (
            HOLDER,
            replace(STANDBY, luns=((1, "other", "naa.6001405ff"),)),
            "the LUN identities differ (node1 presents LUN 1 serial beaf11",
        ),
        (
            HOLDER,
            replace(STANDBY, running="abc (new, started 3 s ago)"),
            "another switchover is running on node2: abc",
        ),
        (HOLDER, replace(STANDBY, error="cannot read `drbdadm`"), "cannot read node2's state"),
        (HOLDER, replace(HOLDER, host="node2"), "the storage is not held by exactly one host"),
        (STANDBY, replace(STANDBY, host="node1"), "the storage is not held by exactly one host"),
        (HOLDER, replace(STANDBY, resources={"iscsi2": dict(UP)}), "different resources"),
        (replace(HOLDER, vip_local=False), STANDBY, "not held by exactly one host"),
    ],
)
def test_refusals_say_why(me, peer, words):
    why, holder = switchover_refusal(me, peer)
    assert holder is None and why is not None and words in why, why


def test_a_garbled_peer_answer_is_a_refusal_not_a_crash():
    side = Side.from_dict({"host": "node2", "resources": "nonsense", "luns": [[1]]})
    assert side.error
    assert switchover_refusal(HOLDER, side)[0].startswith("cannot read node2's state")


def test_the_report_prints_every_phase_in_order():
    text = render(
        {"message": "switchover done", "phases": {p: 0.01 for p in PHASES}, "after": "manual mode"}
    )
    lines = text.splitlines()
    assert lines[0] == "switchover done" and lines[-1] == "manual mode"
    assert [line.split()[0] for line in lines[1:-1]] == list(PHASES)


# ------------------------------------------------------------------------------ two controllers


class Pair:
    """node1 holds the storage (pool master), node2 stands by; their DRBD roles are linked."""

    def __init__(self, tmp_path, takeover_timeout=5.0, arm_timeout=30.0, drbd_events=True):
        self.drbd_events = drbd_events
        self.fakes = {
            "node1": FakeSystems(
                world(
                    PoolRole.MASTER,
                    resources=(res(role="Primary", peer_role="Secondary"),),
                    serving=True,
                    vip_local=True,
                )
            ),
            "node2": FakeSystems(
                world(PoolRole.SLAVE, resources=(res(role="Secondary", peer_role="Primary"),))
            ),
        }
        self.threads = []
        self.ctl, self.sw = {}, {}
        for name, pool in (("node1", PoolRole.MASTER), ("node2", PoolRole.SLAVE)):
            fake = self.fakes[name]
            self._link(name, fake)
            ctl = Controller(
                CycleSettings(resources=("iscsi1",)),
                fake.systems,
                lambda p=pool: PoolObservation(p),
                ManualModeStore(str(tmp_path / name)),
                probe_vip=fake.probe,
                hostname=name,
            )
            self.ctl[name] = ctl
            self.sw[name] = Switchover(
                ctl,
                lambda why, n=name: self.kick(n),
                arm_timeout=arm_timeout,
                takeover_timeout=takeover_timeout,
            )
        for ctl in self.ctl.values():
            ctl.run_cycle()

    def _link(self, name, fake):
        other = "node2" if name == "node1" else "node1"
        apply = fake.world.apply

        def linked(action):
            ok = apply(action)
            if ok and isinstance(action, (Promote, Demote)):
                role = "Primary" if isinstance(action, Promote) else "Secondary"
                w = self.fakes[other].world
                w._set_res(action.resource, peer_role=role)
                if self.drbd_events:
                    self.kick(other)  # DRBD's event on the other host
            return ok

        fake.world.apply = linked

    def kick(self, name):
        t = threading.Thread(target=self.ctl[name].run_cycle, daemon=True)
        self.threads.append(t)
        t.start()

    def call(self, name, down=False):
        """The peer channel to ``name``, with the real client's error mapping."""

        def call(op, args, timeout):
            if down:
                raise PeerError("unreachable", "cannot connect to 10.99.0.2:19857: refused")
            try:
                return self.sw[name].handlers()[op](dict(args))
            except Refused as exc:
                raise PeerError(exc.code, str(exc)) from None

        return call

    def settle(self):
        for _ in range(50):
            alive = [t for t in self.threads if t.is_alive()]
            for t in alive:
                t.join(5)
            if not alive:
                return
        raise AssertionError("cycles did not settle")

    def state(self, name):
        o = self.fakes[name].world.obs
        return (o.resources[0].role, o.target.serving, o.vip.local)

    def manual(self, name):
        return self.ctl[name].load_manual()


@pytest.mark.parametrize("orchestrator", ["node1", "node2"])
def test_switchover_moves_the_storage_and_leaves_both_in_manual_mode(tmp_path, orchestrator):
    pair = Pair(tmp_path)
    other = "node2" if orchestrator == "node1" else "node1"
    report = pair.sw[orchestrator].run(pair.call(other))
    pair.settle()
    assert report["code"] == DONE, report
    assert "node2 serves the storage, node1 stands by" in report["message"]
    assert pair.state("node2") == ("Primary", True, True)
    assert pair.state("node1") == ("Secondary", False, False)
    assert pair.manual("node2") == ManualMode(True, StorageRole.PRIMARY, pair.manual("node2").since)
    assert pair.manual("node1").requested is StorageRole.SECONDARY
    assert set(report["phases"]) == set(PHASES), report["phases"]
    # The old holder released in order: VIP, target, DRBD; the new one promoted before serving.
    assert pair.fakes["node1"].calls[-3:] == ["unbind", "stop_serving", "secondary"]
    assert pair.fakes["node2"].calls[:3] == ["primary", "serve", "bind"]
    # Both hosts export the phases, and neither thinks a switchover still runs.
    for name in ("node1", "node2"):
        assert dict(pair.ctl[name].snapshot().switchover_phases) == report["phases"]
        assert pair.sw[name].active is None
    # ... and the next one goes back.
    back = pair.sw["node1"].run(pair.call("node2"))
    pair.settle()
    assert back["code"] == DONE, back
    assert pair.state("node1") == ("Primary", True, True)


def test_the_new_holder_takes_over_even_when_drbds_event_does_not_come(tmp_path):
    # No event stream wakes node2 (the event lost or late): the orchestrator's
    # first wait makes it look, and it promotes because DRBD shows node1 Secondary by then.
    pair = Pair(tmp_path, takeover_timeout=3.0, drbd_events=False)
    report = pair.sw["node1"].run(pair.call("node2"))
    pair.settle()
    assert report["code"] == DONE, report
    assert pair.state("node2") == ("Primary", True, True)
    assert pair.state("node1") == ("Secondary", False, False)


def test_refused_when_the_peer_is_unreachable_and_nothing_changes(tmp_path):
    pair = Pair(tmp_path)
    report = pair.sw["node1"].run(pair.call("node2", down=True))
    assert report["code"] == REFUSED
    assert "the peer is unreachable over the peer channel" in report["message"]
    assert "nothing was changed" in report["message"]
    assert pair.state("node1") == ("Primary", True, True)
    assert not pair.manual("node1").enabled


def test_refused_without_a_peer_channel(tmp_path):
    pair = Pair(tmp_path)
    report = pair.sw["node1"].run(None)
    assert report["code"] == REFUSED and "needs the peer channel" in report["message"]


def test_refused_while_another_switchover_runs_on_either_host(tmp_path):
    pair = Pair(tmp_path)
    pair.sw["node2"].handlers()["switchover-arm"]({"id": "first"})
    report = pair.sw["node1"].run(pair.call("node2"))
    assert report["code"] == REFUSED
    assert "another switchover is running on node2: first (new" in report["message"]
    # The first one's armed host did not promote: its peer is still Primary.
    pair.settle()
    assert pair.state("node2") == ("Secondary", False, False)
    assert pair.state("node1") == ("Primary", True, True)


def test_refused_during_a_resync(tmp_path):
    pair = Pair(tmp_path)
    w = pair.fakes["node2"].world
    w._set_res(
        "iscsi1",
        connection="SyncTarget",
        disk="Inconsistent",
        sync_progress=0.3,
        out_of_sync_bytes=1 << 20,
    )
    report = pair.sw["node1"].run(pair.call("node2"))
    assert report["code"] == REFUSED and "a resync is running on iscsi1" in report["message"]
    assert not pair.manual("node2").enabled and not pair.manual("node1").enabled


def test_refused_when_the_lun_identities_differ(tmp_path):
    pair = Pair(tmp_path)
    w = pair.fakes["node2"].world
    w.obs = replace(
        w.obs,
        target=replace(
            w.obs.target, lun_info=(LunInfo(1, serial="deadbeef", wwn="naa.6001405deadbeef"),)
        ),
    )
    report = pair.sw["node1"].run(pair.call("node2"))
    assert report["code"] == REFUSED and "LUN identities differ" in report["message"]


def test_a_release_that_fails_serves_again_and_disarms_the_new_holder(tmp_path):
    pair = Pair(tmp_path)
    pair.fakes["node1"].raise_in = "stop_serving"  # the VIP is already gone when this fails
    report = pair.sw["node2"].run(pair.call("node1"))
    pair.settle()
    assert report["code"] == REFUSED, report
    assert "node1 could not release the storage" in report["message"]
    assert "the storage stays on node1" in report["message"]
    pair.fakes["node1"].raise_in = ""
    pair.ctl["node1"].run_cycle()
    assert pair.state("node1") == ("Primary", True, True)
    assert pair.state("node2") == ("Secondary", False, False)
    assert not pair.manual("node2").enabled and not pair.manual("node1").enabled


def test_a_new_holder_that_cannot_serve_gives_the_storage_back(tmp_path):
    pair = Pair(tmp_path, takeover_timeout=1.0)
    pair.fakes["node2"].serve_fails = True
    report = pair.sw["node1"].run(pair.call("node2"))
    pair.settle()
    assert report["code"] == FAILED, report
    assert "the storage is back on node1" in report["message"], report["message"]
    assert pair.state("node1") == ("Primary", True, True)
    assert pair.state("node2")[0] == "Secondary"
    assert not pair.manual("node2").enabled


def test_an_armed_host_that_hears_nothing_disarms_itself(tmp_path):
    pair = Pair(tmp_path, arm_timeout=0.3)
    pair.sw["node2"].handlers()["switchover-arm"]({"id": "lost"})
    assert pair.manual("node2").requested is StorageRole.PRIMARY
    deadline = time.monotonic() + 5
    while pair.manual("node2").enabled and time.monotonic() < deadline:
        time.sleep(0.05)
    pair.settle()
    assert pair.sw["node2"].active is None
    assert not pair.manual("node2").enabled
    assert pair.state("node2") == ("Secondary", False, False)


def test_never_two_primaries_at_any_step(tmp_path):
    """Every action either host runs is checked against the other's state at that moment."""
    pair = Pair(tmp_path)
    seen = []
    for name in ("node1", "node2"):
        other = "node2" if name == "node1" else "node1"
        fake = pair.fakes[name]
        apply = fake.world.apply

        def checked(action, fake=fake, other=other, apply=apply):
            ok = apply(action)
            mine = fake.world.obs
            theirs = pair.fakes[other].world.obs
            both_primary = mine.resources[0].role == theirs.resources[0].role == "Primary"
            both_serving = mine.target.serving and theirs.target.serving
            both_vip = mine.vip.local and theirs.vip.local
            seen.append(both_primary or both_serving or both_vip)
            return ok

        fake.world.apply = checked
    for orchestrator, other in (("node1", "node2"), ("node2", "node1"), ("node1", "node2")):
        report = pair.sw[orchestrator].run(pair.call(other))
        pair.settle()
        assert report["code"] == DONE, report
    assert seen and not any(seen)


def test_no_cycle_runs_on_the_old_mode_between_the_release_and_its_save(tmp_path):
    # The VM lab's logs: the old holder's daemon cycle, woken by DRBD's event of its own
    # demotion, ran between the release's cycle and the save of "manual secondary", read the old
    # mode (pool master) and promoted again; the new holder's promotion was refused by DRBD and
    # the storage came back to the old holder for 2 s in the middle of the switchover.
    pair = Pair(tmp_path, drbd_events=False)
    ctl = pair.ctl["node1"]
    woken, done, extra = threading.Event(), threading.Event(), []

    def daemon_wakes(result):  # inside the release's cycle, as the daemon's trigger would
        if "demoted" in result.message and not woken.is_set():
            woken.set()
            threading.Thread(target=lambda: (extra.append(ctl.run_cycle()), done.set())).start()

    save_manual = ctl.save_manual

    def slow_save(mode):  # widens the gap a save outside the release's hold of the lock leaves
        if woken.is_set():
            done.wait(1.0)
        save_manual(mode)

    ctl.listeners.append(daemon_wakes)
    ctl.save_manual = slow_save
    report = pair.sw["node1"].run(pair.call("node2"))
    pair.settle()
    assert done.wait(5) and "promoted" not in extra[0].message, extra[0].message
    assert report["code"] == DONE, report
    assert pair.state("node1") == ("Secondary", False, False)
    assert pair.state("node2") == ("Primary", True, True)


def test_the_release_is_persisted_only_once_released(tmp_path):
    """A controller killed during its release restarts in the mode it had (and serves again),
    not in a half-done manual secondary that nobody would ever end."""
    pair = Pair(tmp_path)
    store = pair.ctl["node1"].manual_store
    during = []
    step = pair.fakes["node1"].step

    def spy(name, action):
        if name == "secondary":
            during.append(store.load()[0])
        return step(name, action)

    pair.fakes["node1"].step = spy
    report = pair.sw["node2"].run(pair.call("node1"))
    pair.settle()
    assert report["code"] == DONE, report
    assert during == [ManualMode()], during  # still automatic on disk while it demoted
    assert store.load()[0].requested is StorageRole.SECONDARY  # persisted once released


def test_an_armed_host_restarted_keeps_its_deadline_and_disarms(tmp_path):
    pair = Pair(tmp_path)
    pair.sw["node2"].handlers()["switchover-arm"]({"id": "before-restart"})
    assert pair.manual("node2").requested is StorageRole.PRIMARY
    # The controller restarts: a new Switchover over the same state directory, armed 1 s ago.
    ctl = pair.ctl["node2"]
    ctl.listeners.clear()
    again = Switchover(
        ctl, lambda why: pair.kick("node2"), arm_timeout=0.2, clock=lambda: time.time() + 1.0
    )
    assert again.recover() == "before-restart"
    assert again.active is not None and again.active.part == "new"
    deadline = time.monotonic() + 10
    while pair.manual("node2").enabled and time.monotonic() < deadline:
        time.sleep(0.05)
    pair.settle()
    assert again.active is None and not pair.manual("node2").enabled
    assert not (tmp_path / "node2" / "switchover-armed.json").exists()
    assert again.recover() is None  # nothing left to recover


def test_a_damaged_marker_is_ignored_and_removed(tmp_path):
    pair = Pair(tmp_path)
    marker = tmp_path / "node2" / "switchover-armed.json"
    marker.write_bytes(b"\xff{not json")
    assert pair.sw["node2"].recover() is None
    assert not marker.exists() and pair.sw["node2"].active is None


def test_an_armed_host_restarted_asks_the_peer_and_disarms_when_it_still_holds(
    tmp_path, monkeypatch
):
    from iscsi_ha.controller import switchover

    monkeypatch.setattr(switchover, "RECOVER_GRACE", 0.1)
    pair = Pair(tmp_path)
    pair.sw["node2"].handlers()["switchover-arm"]({"id": "orphaned"})
    ctl = pair.ctl["node2"]
    ctl.listeners.clear()
    again = Switchover(ctl, lambda why: pair.kick("node2"), arm_timeout=600)
    assert again.recover(pair.call("node1")) == "orphaned"
    deadline = time.monotonic() + 5  # far less than the 600 s left of its time
    while pair.manual("node2").enabled and time.monotonic() < deadline:
        time.sleep(0.05)
    pair.settle()
    assert again.active is None and not pair.manual("node2").enabled
    assert pair.state("node1") == ("Primary", True, True)


def test_an_armed_host_restarted_stays_armed_when_the_peer_released(tmp_path, monkeypatch):
    """The orchestrator died after the release: the new holder must take over, not disarm."""
    from iscsi_ha.controller import switchover

    monkeypatch.setattr(switchover, "RECOVER_GRACE", 0.1)
    pair = Pair(tmp_path)
    pair.sw["node2"].handlers()["switchover-arm"]({"id": "half"})
    ctl = pair.ctl["node2"]
    ctl.listeners.clear()
    again = Switchover(ctl, lambda why: pair.kick("node2"), arm_timeout=600)
    pair.sw["node1"].handlers()["switchover-release"]({"id": "half"})
    pair.sw["node1"].handlers()["switchover-end"]({"id": "half"})  # node1 forgets it
    assert again.recover(pair.call("node1")) == "half"
    pair.settle()
    time.sleep(0.5)
    pair.settle()
    assert pair.state("node2") == ("Primary", True, True)
    assert pair.manual("node2").requested is StorageRole.PRIMARY
