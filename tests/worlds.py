"""Builders of observations for decide() tests, and a small fake *world* that actions change.

``world(...)`` builds an Observation from a handful of keyword arguments with sensible defaults (a
healthy, connected pair). ``FakeWorld`` applies actions the way the real systems would (a Promote
makes the resource Primary unless the peer is Primary, and so on), so a convergence test can apply a
plan step by step and decide again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Tuple

from iscsi_ha.controller.model import (  # noqa: F401
    Action,
    AnnounceVip,
    BindVip,
    Demote,
    DrbdResource,
    Observation,
    PbdState,
    PlugPbds,
    PoolObservation,
    PoolRole,
    Promote,
    ServeTarget,
    SrObservation,
    SrState,
    StartTargetDaemon,
    StopServingTarget,
    TargetObservation,
    UnbindVip,
    UpResource,
    VipObservation,
)

VIP = "10.99.0.3/24"


def res(name: str = "iscsi1", **kw) -> DrbdResource:
    base = dict(
        name=name,
        configured=True,
        role="Secondary",
        peer_role="Secondary",
        connection="Connected",
        disk="UpToDate",
        peer_disk="UpToDate",
        out_of_sync_bytes=0,
        sync_progress=1.0,
    )
    base.update(kw)
    return DrbdResource(**base)


def world(
    pool: PoolRole = PoolRole.MASTER,
    resources: Tuple[DrbdResource, ...] = None,
    daemon: bool = True,
    serving: bool = False,
    target_present: bool = None,
    vip_local: bool = False,
    conflict=False,
    announce_due: bool = False,
    srs: SrObservation = None,
    **extra,
) -> Observation:
    if resources is None:
        resources = (res(),)
    master_address = "10.99.0.1" if pool is PoolRole.SLAVE else None
    detail = "pool.conf says 'broken'" if pool is PoolRole.UNKNOWN else ""
    return Observation(
        pool=PoolObservation(pool, master_address, detail),
        resources=tuple(resources),
        target=TargetObservation(
            daemon_running=daemon,
            target_present=serving if target_present is None else target_present,
            serving=serving,
            luns=len(resources) if serving else 0,
        ),
        vip=VipObservation(VIP, "eth0", vip_local, conflict, announce_due),
        srs=srs,
        **extra,
    )


def sr_with(attached: bool) -> SrObservation:
    return SrObservation(
        srs=(
            SrState(
                "sr-1",
                "iSCSI-HA",
                "lvmoiscsi",
                (PbdState("pbd-1", "node1", attached), PbdState("pbd-2", "node2", True)),
            ),
        ),
    )


class FakeWorld:
    """One host's systems as plain state; apply() mimics what the real commands do."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs

    def apply(self, action: Action) -> bool:
        o = self.obs
        if isinstance(action, UpResource):
            self._set_res(action.resource, configured=True, role="Secondary")
        elif isinstance(action, Promote):
            r = o.resource(action.resource)
            if r.peer_role == "Primary":
                return False  # DRBD's rc 11
            self._set_res(action.resource, role="Primary")
        elif isinstance(action, Demote):
            self._set_res(action.resource, role="Secondary")
        elif isinstance(action, StartTargetDaemon):
            self.obs = replace(o, target=replace(o.target, daemon_running=True))
        elif isinstance(action, ServeTarget):
            if not all(r.role == "Primary" for r in o.resources):
                raise AssertionError("target served without Primary")
            self.obs = replace(o, target=replace(o.target, serving=True, target_present=True))
        elif isinstance(action, StopServingTarget):
            self.obs = replace(o, target=replace(o.target, serving=False, target_present=False))
        elif isinstance(action, BindVip):
            if not o.target.serving:
                raise AssertionError("VIP bound without a serving target")
            # Not announced yet: the cycle will see the gratuitous ARP as due.
            self.obs = replace(o, vip=replace(o.vip, local=True, announce_due=True))
        elif isinstance(action, UnbindVip):
            self.obs = replace(o, vip=replace(o.vip, local=False))
        elif isinstance(action, AnnounceVip):
            self.obs = replace(o, vip=replace(o.vip, announce_due=False))
        elif isinstance(action, PlugPbds):
            srs = o.srs
            new = tuple(
                replace(sr, pbds=tuple(replace(p, attached=True) for p in sr.pbds))
                for sr in srs.srs
            )
            self.obs = replace(o, srs=replace(srs, srs=new))
        return True

    def _set_res(self, name: str, **kw) -> None:
        self.obs = replace(
            self.obs,
            resources=tuple(replace(r, **kw) if r.name == name else r for r in self.obs.resources),
        )


class FakeSystems:
    """The adapters' interface over a FakeWorld, with DRBD's and tgt's real refusal words.

    Knobs make a system misbehave the way real ones do: ``serve_fails`` (tgtadm error),
    ``daemon_dies`` (tgtd exits right after each start), ``raise_in`` (an adapter bug).
    """

    def __init__(self, obs: Observation) -> None:
        from iscsi_ha.controller.execute import Systems

        self.world = FakeWorld(obs)
        self.calls: list = []
        self.serve_fails = False
        self.daemon_dies = False
        self.raise_in: str = ""
        self.probe_answer = False
        self.probes = 0
        w = self
        self.systems = Systems(drbd=_Drbd(w), target=_Target(w), vip=_Vip(w))

    def probe(self):
        self.probes += 1
        return self.probe_answer

    def step(self, name, action):
        from iscsi_ha.controller.model import StepResult

        self.calls.append(name)
        if self.raise_in == name:
            raise RuntimeError(f"{name} exploded")
        if not self.world.apply(action):
            return StepResult(
                False, "(-1) Multiple primaries not allowed by config", True, "multiple_primaries"
            )
        return StepResult(True, "")


class _Drbd:
    def __init__(self, w):
        self.w = w

    def generation_ids(self, name):
        return None  # DRBD's meta-data flags: not part of the fake world

    def observe(self, names):
        if self.w.raise_in == "observe":
            raise RuntimeError("observe exploded")
        return tuple(r for r in self.w.world.obs.resources if r.name in names)

    def up(self, res):
        return self.w.step("up", UpResource(res))

    def primary(self, res):
        return self.w.step("primary", Promote(res))

    def secondary(self, res):
        return self.w.step("secondary", Demote(res))


class _Target:
    def __init__(self, w):
        self.w = w

    def observe(self):
        return self.w.world.obs.target

    def start_daemon(self):
        result = self.w.step("start_daemon", StartTargetDaemon())
        if self.w.daemon_dies:
            o = self.w.world.obs
            self.w.world.obs = replace(o, target=replace(o.target, daemon_running=False))
        return result

    def serve(self):
        from iscsi_ha.controller.model import StepResult

        if self.w.serve_fails:
            self.w.calls.append("serve")
            return StepResult(False, "tgtadm: can't find the target")
        return self.w.step("serve", ServeTarget())

    def stop_serving(self):
        return self.w.step("stop_serving", StopServingTarget())


class _Vip:
    def __init__(self, w):
        self.w = w

    def observe(self):
        return replace(self.w.world.obs.vip, conflict=None, announce_due=False)

    def bind(self):
        return self.w.step("bind", BindVip())

    def unbind(self):
        return self.w.step("unbind", UnbindVip())

    def announce(self):
        from iscsi_ha.controller.model import StepResult

        self.w.calls.append("announce")
        return StepResult(True, "gratuitous ARP started")
