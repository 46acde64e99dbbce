"""The cycle: one sentence per cycle, counters, status file, back-off, probes, manual commands."""

import os
import sys
import textwrap
import time
from dataclasses import replace

from iscsi_ha.controller.cycle import Controller, CycleSettings
from iscsi_ha.controller.execute import Systems
from iscsi_ha.controller.model import ManualMode, Outcome, PoolObservation, PoolRole, StorageRole
from iscsi_ha.controller.state import ManualModeStore
from iscsi_ha.controller.systems.drbd import Drbd
from iscsi_ha.controller.systems.runner import CommandStats, ProcessRunner
from worlds import FakeSystems, res, world


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(tmp_path, obs, pool=PoolRole.MASTER, **settings):
    fake = FakeSystems(obs)
    pool_obs = {"value": PoolObservation(pool, "10.99.0.1" if pool is PoolRole.SLAVE else None)}
    mono = Clock()
    ctl = Controller(
        CycleSettings(
            resources=tuple(r.name for r in obs.resources),
            status_file=str(tmp_path / "status"),
            **settings,
        ),
        fake.systems,
        lambda: pool_obs["value"],
        ManualModeStore(str(tmp_path / "state")),
        probe_vip=fake.probe,
        monotonic=mono,
    )
    return ctl, fake, pool_obs, mono


def test_master_converges_in_one_cycle_and_says_so(tmp_path):
    ctl, fake, _, _ = make(tmp_path, world(daemon=True))
    r = ctl.run_cycle()
    assert r.outcome is Outcome.OK
    assert r.message == "promoted iscsi1, target serving, VIP bound: host is pool master"
    assert fake.calls == ["primary", "serve", "bind", "announce"]
    assert fake.probes == 0  # the connected Secondary peer released the VIP: no 2 s probe
    r = ctl.run_cycle()
    assert r.message == "no action: host is pool master"
    snap = ctl.snapshot()
    assert snap.last is r and snap.counters.cycles == {"ok": 2}
    assert snap.counters.actions[("promote", "ok")] == 1
    assert snap.counters.cycle_duration.count == 2
    status = (tmp_path / "status").read_text()
    for line in (
        "HOST ROLE: MASTER",
        "DRBD ROLE: iscsi1=Primary",
        "DRBD CONNECTION: iscsi1 in Connected state",
        "VIRTUAL IP: 10.99.0.3 is local",
    ):
        assert line in status.splitlines()


def test_slave_demotes_in_order(tmp_path):
    obs = world(PoolRole.SLAVE, resources=(res(role="Primary"),), serving=True, vip_local=True)
    ctl, fake, _, _ = make(tmp_path, obs, pool=PoolRole.SLAVE)
    r = ctl.run_cycle()
    assert fake.calls == ["unbind", "stop_serving", "secondary"]
    assert r.message == (
        "VIP removed, target stopped, demoted iscsi1: host is pool slave (master is 10.99.0.1)"
    )


def test_peer_primary_holds_and_asks_for_a_quick_retry(tmp_path):
    ctl, fake, _, _ = make(tmp_path, world(resources=(res(peer_role="Primary"),)))
    r = ctl.run_cycle()
    assert r.outcome is Outcome.HELD and r.plan.retry_soon
    assert r.message == "not promoting iscsi1: peer is Primary (host is pool master)"
    assert fake.calls == []


def test_failed_step_stops_the_plan(tmp_path):
    ctl, fake, _, _ = make(tmp_path, world())
    fake.serve_fails = True
    r = ctl.run_cycle()
    assert r.outcome is Outcome.ERROR
    assert fake.calls == ["primary", "serve"]  # no VIP without a target
    assert r.message.startswith("target_serve failed: tgtadm: can't find the target")
    assert "(done first: promoted iscsi1)" in r.message
    assert ctl.snapshot().counters.actions[("target_serve", "error")] == 1


def test_drbd_refusal_is_reported_as_a_refusal(tmp_path):
    ctl, fake, _, _ = make(tmp_path, world())
    # The peer turned Primary between observe and act: DRBD itself refuses.
    fake.world.obs = fake.world.obs  # observe sees Secondary peer ...
    orig = fake.world.apply

    def racing(action):
        fake.world.obs = world(resources=(res(peer_role="Primary"),))
        return orig(action)

    fake.world.apply = racing
    r = ctl.run_cycle()
    assert r.outcome is Outcome.HELD
    assert "promote refused: (-1) Multiple primaries not allowed by config" in r.message
    assert ctl.snapshot().counters.actions[("promote", "refused")] == 1
    # The adapter's machine-readable kind reaches the result and the status answer.
    assert [a.reason for a in r.results] == ["multiple_primaries"]
    assert r.to_dict()["results"][0]["reason"] == "multiple_primaries"


def test_adapter_exception_is_a_failed_step_and_the_loop_goes_on(tmp_path):
    ctl, fake, _, _ = make(tmp_path, world())
    fake.raise_in = "primary"
    r = ctl.run_cycle()
    assert r.outcome is Outcome.ERROR and "primary exploded" in r.message
    fake.raise_in = "observe"
    r = ctl.run_cycle()
    assert r.outcome is Outcome.ERROR and r.message.startswith("cycle failed: RuntimeError")
    fake.raise_in = ""
    assert ctl.run_cycle().outcome is Outcome.OK
    assert ctl.snapshot().counters.cycles == {"error": 2, "ok": 1}


def test_overrun_is_reported_and_counted(tmp_path):
    ctl, fake, _, mono = make(tmp_path, world(), deadline=1.0)
    orig = fake.systems.drbd.primary

    def slow(name):
        mono.t += 3.0
        return orig(name)

    fake.systems.drbd.primary = slow
    r = ctl.run_cycle()
    assert r.overran and "overran its 1s deadline: 3.0s" in r.message
    assert ctl.snapshot().counters.cycle_overruns == 1


def test_tgtd_that_keeps_dying_is_restarted_with_back_off(tmp_path):
    obs = world(PoolRole.SLAVE, daemon=True)
    ctl, fake, _, mono = make(tmp_path, obs, pool=PoolRole.SLAVE, restart_backoff=2.0)
    assert ctl.run_cycle().message == "no action: host is pool slave (master is 10.99.0.1)"
    fake.daemon_dies = True
    fake.world.obs = world(PoolRole.SLAVE, daemon=False)
    ctl.run_cycle()
    assert fake.calls == ["start_daemon"]
    r = ctl.run_cycle()  # died again at once: wait 2 s
    assert r.outcome is Outcome.HELD and "back-off" in r.message
    mono.t += 2.1
    ctl.run_cycle()
    assert fake.calls == ["start_daemon", "start_daemon"]
    mono.t += 2.1  # the back-off doubled to 4 s
    assert "back-off" in ctl.run_cycle().message
    assert ctl.snapshot().counters.target_daemon_restarts == 2


def test_dry_run_changes_nothing(tmp_path):
    ctl, fake, _, _ = make(tmp_path, world())
    r = ctl.run_cycle(dry_run=True)
    assert fake.calls == [] and r.dry_run
    assert r.message == (
        "dry run, would do: promote, target_serve, vip_add, vip_announce: host is pool master"
    )
    assert not (tmp_path / "status").exists()


def test_vip_probe_runs_only_when_the_peer_release_is_unknown(tmp_path):
    gone = res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown")
    ctl, fake, pool, mono = make(
        tmp_path, world(resources=(res(peer_role="Primary"),)), pool=PoolRole.SLAVE
    )
    ctl.run_cycle()  # watched: Connected, UpToDate, Secondary to a Primary
    fake.world.obs = replace(fake.world.obs, resources=(gone,))
    pool["value"] = PoolObservation(PoolRole.MASTER)
    mono.t += 1
    fake.probe_answer = True
    r = ctl.run_cycle()
    assert fake.probes == 1
    # The answerer may be the old holder behind a partition: nothing is promoted or served.
    assert "another host answers for VIP 10.99.0.3/24 and the peer is unreachable" in r.message
    assert "bind" not in fake.calls and "serve" not in fake.calls


def test_background_probe_only_while_local_and_void_across_a_move(tmp_path):
    ctl, fake, _, _ = make(tmp_path, world())
    ctl.run_vip_probe()
    assert fake.probes == 0  # not local: the standby does not probe
    ctl.run_cycle()  # binds the VIP
    fake.probe_answer = True
    ctl.run_vip_probe()
    assert ctl.run_cycle().observation.vip.conflict is True

    # A probe that straddles an unbind must not be kept.
    def straddling():
        ctl._vip_generation += 1
        return True

    ctl._probe = None
    ctl.probe_vip_now = straddling
    ctl.run_vip_probe()
    assert ctl._probe is None


def test_unreadable_output_holds(tmp_path):
    bad = res(error="cannot read `drbdadm cstate iscsi1`: 'bogus'")
    ctl, fake, _, _ = make(tmp_path, world(resources=(bad,)))
    r = ctl.run_cycle()
    assert r.outcome is Outcome.HELD and fake.calls == []
    assert r.message == "cannot read `drbdadm cstate iscsi1`: 'bogus'"


# ----------------------------------------------------------------- manual mode


def test_manual_commands_and_refusals(tmp_path):
    converged = world(resources=(res(role="Primary"),), serving=True, vip_local=True)
    ctl, fake, pool, _ = make(tmp_path, converged)
    code, msg = ctl.command("become-secondary")
    assert code == 1 and "manual-mode-enable" in msg
    assert ctl.command("manual-mode-enable") == (
        0,
        "manual mode enabled: automatic role changes are stopped on this host",
    )
    # The pool master moves away: in manual mode nothing follows.
    pool["value"] = PoolObservation(PoolRole.SLAVE, "10.99.0.2")
    assert ctl.run_cycle().message == "no action: manual mode: keeping the current role (primary)"
    assert fake.calls == ["announce"]  # a holder re-announces the VIP once after it starts
    code, msg = ctl.command("become-secondary")
    assert code == 0 and fake.calls[1:] == ["unbind", "stop_serving", "secondary"]
    # Roles are native now (slave <-> secondary): leaving manual mode is allowed.
    pool["value"] = PoolObservation(PoolRole.MASTER)
    code, msg = ctl.command("manual-mode-disable")
    assert code == 1 and "run `iscsi-cfg become-primary` first" in msg
    fake.world.obs = world(resources=(res(peer_role="Primary"),))
    code, msg = ctl.command("become-primary")
    assert code == 1 and "peer is Primary for iscsi1" in msg
    assert ctl.manual_store.load()[0].requested is StorageRole.SECONDARY  # unchanged on refusal


def test_manual_mode_survives_a_restart(tmp_path):
    ctl, fake, _, _ = make(tmp_path, world())
    ctl.command("manual-mode-enable")
    again, fake2, _, _ = make(tmp_path, world())
    r = again.run_cycle()
    assert r.message == "no action: manual mode: keeping the current role (secondary)"
    assert again.snapshot().manual.enabled


def test_damaged_manual_mode_file_means_manual(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "manual-mode.json").write_text("{not json")
    ctl, fake, _, _ = make(tmp_path, world())
    r = ctl.run_cycle()
    assert fake.calls == [] and "damaged" in r.message
    assert ManualModeStore(str(tmp_path / "state")).load()[0] == ManualMode(enabled=True)


# ----------------------------------------------------------------- a real hung command


def test_hung_command_is_killed_and_the_next_cycle_runs_on_time(tmp_path):
    """A drbdadm that never returns: killed at its timeout, reported, counted; nothing hangs."""
    hang = tmp_path / "drbdadm"
    hang.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import sys, time
        if sys.argv[1:2] == ["sh-minor"]:
            print(0); sys.exit(0)
        time.sleep(60)
        """)
    )
    hang.chmod(0o755)
    proc = tmp_path / "proc_drbd"
    proc.write_text("version: 8.4.11 (api:1/proto:86-101)\n")  # module loaded, r0 not up
    stats = CommandStats()
    runner = ProcessRunner(default_timeout=0.5, stats=stats)
    drbd = Drbd(runner, version="8.4", drbdadm=str(hang), proc_drbd=str(proc), kernel_log=("true",))
    fake = FakeSystems(world(PoolRole.SLAVE))
    ctl = Controller(
        CycleSettings(resources=("r0",), deadline=5.0),
        Systems(drbd, fake.systems.target, fake.systems.vip),
        lambda: PoolObservation(PoolRole.SLAVE, "10.99.0.1"),
        ManualModeStore(str(tmp_path / "state")),
        stats=stats,
    )
    t0 = time.monotonic()
    r = ctl.run_cycle()
    first = time.monotonic() - t0
    assert "timed out" in r.message, r.message
    assert first < 5, first
    assert ctl.snapshot().counters.command_timeouts.get("drbdadm", 0) >= 1
    t0 = time.monotonic()
    ctl.run_cycle()
    assert time.monotonic() - t0 < 5
    assert not os.path.exists(str(tmp_path / "never"))


def test_become_primary_refused_by_the_cycle_does_not_linger(tmp_path):
    outdated = res(
        disk="Outdated", connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown"
    )
    ctl, fake, _, _ = make(tmp_path, world(resources=(outdated,)))
    ctl.command("manual-mode-enable")
    code, msg = ctl.command("become-primary")
    assert code == 1 and "no access to UpToDate data" in msg and "request not kept" in msg
    assert ctl.manual_store.load()[0] == ManualMode(
        enabled=True, requested=None, since=ctl.manual_store.load()[0].since
    )
    assert ctl.snapshot().manual.enabled  # published at once, not after the next cycle


def test_no_vip_probe_while_the_promotion_would_be_refused(tmp_path):
    """The old holder drops the VIP just before it demotes: probing then costs ~2 s for nothing."""
    still_primary = res(peer_role="Primary", connection="Connected")
    ctl, fake, _, _ = make(tmp_path, world(resources=(still_primary,)))
    ctl.run_cycle()
    assert fake.probes == 0
    gone = res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown")
    fake.world.obs = world(resources=(gone,))
    ctl.run_cycle()
    assert fake.probes == 1  # failover with the peer gone: now the probe is needed


# ------------------------------------------------------------------ never serve stale data


def test_failover_promotes_only_after_watching_the_primary_vanish(tmp_path):
    ctl, fake, pool, mono = make(
        tmp_path, world(resources=(res(peer_role="Primary"),)), pool=PoolRole.SLAVE
    )
    assert ctl.run_cycle().outcome is Outcome.OK
    fake.world.obs = replace(
        fake.world.obs,
        resources=(res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown"),),
    )
    pool["value"] = PoolObservation(PoolRole.MASTER)
    mono.t += 5
    r = ctl.run_cycle()
    assert "promoted iscsi1" in r.message, r.message
    assert r.plan.blocked == ()


def test_a_gap_in_watching_blocks_the_failover(tmp_path):
    ctl, fake, pool, mono = make(
        tmp_path, world(resources=(res(peer_role="Primary"),)), pool=PoolRole.SLAVE
    )
    ctl.run_cycle()
    fake.world.obs = replace(
        fake.world.obs,
        resources=(res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown"),),
    )
    pool["value"] = PoolObservation(PoolRole.MASTER)
    mono.t += ctl.settings.max_watch_gap + 1  # the controller did not look for too long
    r = ctl.run_cycle()
    assert r.outcome is Outcome.HELD and "primary" not in fake.calls
    assert "cannot prove this host has the newest data" in r.message
    assert "did not look for" in r.message
    assert r.plan.blocked == (("iscsi1", "gap"),)


def test_a_restarted_controller_holds_while_the_peer_is_gone(tmp_path):
    ctl, fake, pool, mono = make(
        tmp_path, world(resources=(res(peer_role="Primary"),)), pool=PoolRole.SLAVE
    )
    ctl.run_cycle()
    gone = res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown")
    fake.world.obs = replace(fake.world.obs, resources=(gone,))
    mono.t += 1
    ctl.run_cycle()  # still slave: watched the Primary vanish
    # The controller restarts (same state directory, same boot), then the pool master moves.
    ctl2 = Controller(
        ctl.settings,
        fake.systems,
        lambda: PoolObservation(PoolRole.MASTER),
        ManualModeStore(str(tmp_path / "state")),
        probe_vip=fake.probe,
        monotonic=mono,
    )
    mono.t += 1
    r = ctl2.run_cycle()
    assert r.outcome is Outcome.HELD and "primary" not in fake.calls
    assert "the peer was Primary (UpToDate) when last seen" in r.message
    assert "controller restarted" in r.message
    assert r.plan.blocked == (("iscsi1", "restarted"),)


def test_accept_stale_promotes_in_manual_mode_and_only_then(tmp_path):
    gone = res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown")
    ctl, fake, _, _ = make(tmp_path, world(resources=(gone,)))
    fake.probe_answer = False
    ctl.command("manual-mode-enable")
    code, msg = ctl.command("become-primary")
    assert code == 1 and "cannot prove this host has the newest data" in msg
    assert "primary" not in fake.calls
    code, msg = ctl.command("become-primary", accept_stale=("iscsi1",), who="uid 0 (alice)")
    assert code == 0 and "promoted iscsi1" in msg, msg


def test_two_masters_only_from_an_answer_given_after_this_host_became_master(tmp_path):
    from iscsi_ha.controller.model import PeerObservation

    ctl, fake, pool, mono = make(
        tmp_path, world(resources=(res(peer_role="Primary"),)), pool=PoolRole.SLAVE
    )
    answer = {"at": mono.t}
    ctl.peer_status = lambda: PeerObservation(True, "master", answered_at=answer["at"])
    ctl.run_cycle()
    # The master moves here; the peer's last answer (from before) still says master: that is
    # the old master a moment before it turned slave, not a split pool.
    fake.world.obs = replace(
        fake.world.obs,
        resources=(res(connection="WFConnection", peer_role="Unknown", peer_disk="DUnknown"),),
    )
    pool["value"] = PoolObservation(PoolRole.MASTER)
    mono.t += 1
    r = ctl.run_cycle()
    assert "both hosts" not in r.message and "promoted iscsi1" in r.message, r.message
    # A peer that keeps saying master a full interval after this host became master: hold.
    ctl2, fake2, pool2, mono2 = make(tmp_path / "b", world(), pool=PoolRole.MASTER)
    said = {"at": None}
    ctl2.peer_status = lambda: PeerObservation(True, "master", answered_at=said["at"])
    assert "both hosts" not in ctl2.run_cycle().message
    mono2.t += ctl2.settings.interval + 1
    said["at"] = mono2.t
    r = ctl2.run_cycle()
    assert r.outcome is Outcome.HELD and "both hosts' pool.conf say master" in r.message


def test_two_masters_the_holder_restarts_a_dead_tgtd_and_still_holds(tmp_path):
    """Chaos schedule 286 of seed 1: tgtd killed on the holder during a split pool; the hold
    kept the VIP without a target until the split ended. Now the holder serves again, still
    holding (and paging) for everything else."""
    from iscsi_ha.controller.model import PeerObservation

    holder = world(
        resources=(res(role="Primary", connection="StandAlone", peer_role="Unknown"),),
        vip_local=True,
        daemon=False,
        serving=False,
    )
    ctl, fake, pool, mono = make(tmp_path, holder, pool=PoolRole.MASTER)
    said = {"at": None}
    ctl.peer_status = lambda: PeerObservation(True, "master", answered_at=said["at"])
    ctl.run_cycle()  # serving; then the split pool, then tgtd dies
    mono.t += ctl.settings.interval + 1
    said["at"] = mono.t
    assert "both hosts' pool.conf say master" in ctl.run_cycle().message
    fake.world.obs = replace(fake.world.obs, target=holder.target)
    fake.calls.clear()
    mono.t += ctl.settings.interval
    r = ctl.run_cycle()
    assert r.outcome is Outcome.HELD and "both hosts' pool.conf say master" in r.message
    assert r.message.startswith("started tgtd, target serving; "), r.message
    assert fake.world.obs.target.serving and fake.world.obs.vip.local
    assert r.plan.blocked == (("iscsi1", "two_masters"),)
    assert "primary" not in fake.calls and "secondary" not in fake.calls
