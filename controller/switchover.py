"""``iscsi-cfg switchover``: move the storage to the other host in one command, both controllers
coordinating over the peer channel (``peer.py``), with the least outage the order of steps allows.

Run on either host. The controller that gets the command orchestrates; the two controllers play
the parts of the **old** holder (Primary, target serving, VIP bound) and the **new** one:

1. **check** — both hosts describe themselves, fresh (``switchover-facts``); ``switchover_refusal``
   (pure, below) refuses with a reason unless exactly one host holds the storage, every resource is
   Connected and UpToDate on both sides with nothing out of sync, both present the same LUN
   identities and no other switchover runs on either host. Nothing has changed yet.
2. **arm** — the new holder is put in manual mode asking for primary (``switchover-arm``). Its
   cycle holds on "peer is Primary" and waits for DRBD's next event (``systems/drbd/events.py``);
   its tgtd is already running (a standby keeps an empty one). Still nothing has moved.
3. **release** — the old holder is put in manual mode asking for secondary and runs its cycle at
   once (``switchover-release``): VIP removed, target stopped, DRBD Secondary, in that order.
4. **takeover** — DRBD tells the new holder that its peer is Secondary; its cycle promotes, serves
   the target, binds the VIP and announces it (the duplicate-address probe is skipped: the peer is
   known to have let go). The orchestrator waits for that cycle (``switchover-wait``).
5. Both hosts record the phase times (``switchover-end``), exported as
   ``iscsi_ha_switchover_duration_seconds{phase}`` and printed by ``iscsi-cfg``.

**The state it leaves**: manual mode on both hosts with the roles swapped (new: primary, old:
secondary), so the pool master does not take the storage back on its next cycle. That is the
maintenance state (storage on the slave while the master reboots). Afterwards either run
``iscsi-cfg switchover`` again and ``manual-mode-disable`` on both hosts, or designate the new
holder pool master (``xe pool-designate-new-master``) and then ``manual-mode-disable`` on both
(docs/runbook.md, "Planned switchover").

**Interrupted** (either controller killed, the peer lost half way): never two hosts serving. The
new holder promotes only when DRBD reports its peer Secondary, and DRBD itself refuses a second
Primary while connected; the VIP is bound only after the target serves. What can be left is the
old holder still serving (the release never happened) or nobody serving (released, the new
controller gone): the orchestrator then moves the storage back to the old holder (``abort``), and
an armed host that hears nothing more disarms itself after ``ARM_TIMEOUT`` seconds (its previous
mode restored). The command says which of these happened.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .model import (
    AnnounceVip,
    BindVip,
    CycleResult,
    ManualMode,
    Outcome,
    Promote,
    ServeTarget,
    StartTargetDaemon,
    StorageRole,
)
from .peer import PeerError, Refused

log = logging.getLogger("iscsi_ha.switchover")

# The phases, in order, as printed and exported (iscsi_ha_switchover_duration_seconds{phase}).
PHASES = ("check", "arm", "release", "react", "promote", "serve", "vip", "total")
PHASE_TEXT = {
    "check": "both hosts checked (Connected, UpToDate, same LUN identities)",
    "arm": "new holder armed (manual mode, waiting for DRBD's event)",
    "release": "old holder: VIP removed, target stopped, DRBD Secondary",
    "react": "new holder saw its peer Secondary (DRBD's event) and started its cycle",
    "promote": "new holder: DRBD Primary",
    "serve": "new holder: target serving",
    "vip": "new holder: VIP bound and announced",
    "total": "from the command to the new holder serving",
}
ARM_TIMEOUT = 60.0  # an armed host that hears nothing more restores its previous mode
TAKEOVER_TIMEOUT = 20.0  # release done -> new holder serving, before moving the storage back
SILENT_NEW_HOLDER = 3.0  # the new holder's controller silent this long: take the storage back
WAIT_SLICE = 1.0  # one switchover-wait call blocks at most this long (the peer call's deadline)
RELEASE_TIMEOUT = 60.0  # a release is one cycle: bounded by its commands' timeouts
MARKER_FILE = "switchover-armed.json"  # in the state directory, while armed
RECOVER_GRACE = 5.0  # a controller restarted armed looks this long before disarming
TAKE_BACK_WAIT = 15.0  # the old holder serving again after an abort (the new one demotes first)

# Exit codes of the command (iscsi-cfg prints the message).
DONE, REFUSED, FAILED = 0, 1, 4
RESYNC_STATES = (
    "SyncSource",
    "SyncTarget",
    "PausedSyncS",
    "PausedSyncT",
    "StartingSyncS",
    "StartingSyncT",
    "WFBitMapS",
    "WFBitMapT",
    "WFSyncUUID",
    "VerifyS",
    "VerifyT",
)


# ------------------------------------------------------------------------------ pure: the check


@dataclass(frozen=True)
class Side:
    """What one host says about itself for a switchover (``switchover-facts``)."""

    host: str
    resources: Mapping[str, Mapping[str, Any]]  # name -> role, peer_role, connection, disk, ...
    serving: bool = False
    vip_local: bool = False
    luns: Tuple[Tuple[int, str, str], ...] = ()  # (number, serial, wwn) it presents or would
    running: Optional[str] = None  # a switchover in progress here: "<id> (<part>, N s ago)"
    error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "host": self.host,
            "resources": {k: dict(v) for k, v in self.resources.items()},
            "serving": self.serving,
            "vip_local": self.vip_local,
            "luns": [list(lun) for lun in self.luns],
            "running": self.running,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Side":
        """A peer's answer; anything malformed becomes an ``error`` (and so a refusal)."""
        try:
            resources = {str(k): dict(v) for k, v in dict(d.get("resources") or {}).items()}
            luns = tuple((int(n), str(s), str(w)) for n, s, w in (d.get("luns") or ()))
            return cls(
                host=str(d.get("host") or "the peer"),
                resources=resources,
                serving=bool(d.get("serving")),
                vip_local=bool(d.get("vip_local")),
                luns=luns,
                running=d.get("running") or None,
                error=d.get("error") or None,
            )
        except (TypeError, ValueError, AttributeError) as exc:
            return cls(
                host=str(d.get("host") or "the peer") if isinstance(d, Mapping) else "the peer",
                resources={},
                error=f"unreadable answer: {exc}",
            )

    def holds(self) -> bool:
        """Primary for every resource, serving and holding the VIP."""
        return (
            bool(self.resources)
            and self.serving
            and self.vip_local
            and all(r.get("role") == "Primary" for r in self.resources.values())
        )

    def stands_by(self) -> bool:
        """Secondary for every resource, not serving, no VIP."""
        return (
            bool(self.resources)
            and not self.serving
            and not self.vip_local
            and all(r.get("role") == "Secondary" for r in self.resources.values())
        )

    def describe(self) -> str:
        roles = ", ".join(f"{n} {r.get('role')}" for n, r in sorted(self.resources.items()))
        return (
            f"{self.host}: {roles or 'no resources'}, target "
            f"{'serving' if self.serving else 'not serving'}, VIP "
            f"{'here' if self.vip_local else 'not here'}"
        )


def switchover_refusal(me: Side, peer: Side) -> Tuple[Optional[str], Optional[bool]]:
    """(why not, None), or (None, True when ``me`` is the current holder / False when the peer
    is). Pure: the two sides' facts in, one decision out."""
    for side in (me, peer):
        if side.error:
            return f"cannot read {side.host}'s state: {side.error}", None
    for side in (me, peer):
        if side.running:
            return f"another switchover is running on {side.host}: {side.running}", None
    if set(me.resources) != set(peer.resources):
        return (
            f"the hosts have different resources ({me.host}: "
            f"{', '.join(sorted(me.resources))}; {peer.host}: "
            f"{', '.join(sorted(peer.resources))}): fix the configuration first"
        ), None
    if me.holds() and peer.stands_by():
        holder: Optional[bool] = True
    elif peer.holds() and me.stands_by():
        holder = False
    else:
        return (
            "the storage is not held by exactly one host ("
            + me.describe()
            + "; "
            + peer.describe()
            + "): let the controllers converge first"
        ), None
    for side in (me, peer):
        for name, r in sorted(side.resources.items()):
            conn = str(r.get("connection"))
            oos = r.get("out_of_sync")
            if conn in RESYNC_STATES:
                progress = r.get("sync_progress")
                shown = f", {float(progress) * 100:.0f} % done" if progress is not None else ""
                return (
                    f"a resync is running on {name} ({side.host}: {conn}{shown}): wait "
                    "until it is Connected and UpToDate on both hosts"
                ), None
            if conn != "Connected":
                return (
                    f"the peer is not Connected for {name} ({side.host} sees {conn}): the "
                    "new holder must have every acknowledged write"
                ), None
            if r.get("split_brain"):
                return f"{name} is in split brain on {side.host}: see the runbook", None
            if r.get("disk") != "UpToDate" or r.get("peer_disk") != "UpToDate":
                return (
                    f"{name} is not UpToDate on both hosts ({side.host} sees "
                    f"{r.get('disk')}/{r.get('peer_disk')})"
                ), None
            if oos:
                return (
                    f"{name} has {oos} bytes out of sync ({side.host}): wait for the resync"
                ), None
    if me.luns != peer.luns:
        return (
            f"the LUN identities differ ({me.host} presents {_luns(me.luns)}, {peer.host} "
            f"would present {_luns(peer.luns)}): XenServer's SR would not find its LUN; "
            "pin the same target.luns[].serial on both hosts"
        ), None
    return None, holder


def _luns(luns: Sequence[Tuple[int, str, str]]) -> str:
    return "; ".join(f"LUN {n} serial {s or '?'} wwn {w or '?'}" for n, s, w in luns) or "none"


def phases_of(result: CycleResult) -> Dict[str, float]:
    """promote / serve / vip seconds from the new holder's promoting cycle."""
    sums = {"promote": 0.0, "serve": 0.0, "vip": 0.0}
    for r in result.results:
        if isinstance(r.action, Promote):
            sums["promote"] += r.duration
        elif isinstance(r.action, (ServeTarget, StartTargetDaemon)):
            sums["serve"] += r.duration
        elif isinstance(r.action, (BindVip, AnnounceVip)):
            sums["vip"] += r.duration
    return sums


def serving_as_primary(result: CycleResult) -> bool:
    """The cycle left this host Primary, serving, with the VIP: it wanted primary, nothing was
    refused and every step it took succeeded."""
    plan = result.plan
    return (
        not result.dry_run
        and result.outcome is Outcome.OK
        and plan is not None
        and plan.desired is StorageRole.PRIMARY
        and not plan.refusals
        and plan.held is None
    )


def released(result: CycleResult) -> bool:
    plan = result.plan
    return (
        not result.dry_run
        and result.outcome is Outcome.OK
        and plan is not None
        and plan.desired is StorageRole.SECONDARY
        and not plan.refusals
        and plan.held is None
    )


def render(report: Mapping[str, Any]) -> str:
    """What iscsi-cfg prints: the sentence, then one line per phase."""
    lines = [str(report.get("message", ""))]
    phases = report.get("phases") or {}
    for name in PHASES:
        if name in phases:
            lines.append(f"  {name:<8} {float(phases[name]) * 1000:7.0f} ms  {PHASE_TEXT[name]}")
    after = report.get("after")
    if after:
        lines.append(str(after))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the parts


@dataclass
class Active:
    """A switchover this host takes part in."""

    sid: str
    part: str  # "old" | "new" | "orchestrator"
    started: float  # monotonic
    previous: Optional[ManualMode] = None  # the mode to restore on abort
    serving: threading.Event = field(default_factory=threading.Event)
    cycle_started: Optional[float] = None  # unix time the promoting cycle started
    phases: Dict[str, float] = field(default_factory=dict)
    looked: bool = False  # the new holder ran a cycle on the first switchover-wait


Call = Callable[[str, Dict[str, Any], float], Dict[str, Any]]


@dataclass(frozen=True)
class _Roles:
    """Who releases (old) and who takes over (new) in one switchover, and how to reach them."""

    old: Call
    new: Call
    old_name: str
    new_name: str


class Switchover:
    """This controller's part in switchovers: the peer-channel operations (``handlers()``) and
    the orchestration (``run()``). ``controller`` is the ``cycle.Controller``; ``trigger`` asks
    the daemon for a cycle now."""

    def __init__(
        self,
        controller: Any,
        trigger: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        arm_timeout: float = ARM_TIMEOUT,
        takeover_timeout: float = TAKEOVER_TIMEOUT,
    ) -> None:
        self.controller = controller
        self.trigger = trigger
        self.clock, self.monotonic = clock, monotonic
        self.arm_timeout = arm_timeout
        self.takeover_timeout = takeover_timeout
        self._lock = threading.Lock()
        self.active: Optional[Active] = None
        self._timer: Optional[threading.Timer] = None
        controller.listeners.append(self._on_cycle)

    # -- facts

    def facts(self) -> Side:
        """This host now: DRBD, target and VIP read fresh (three commands, no decision)."""
        c = self.controller
        running = self._running()
        try:
            with c.lock:  # not in the middle of a cycle's actions
                s = c.systems
                resources = s.drbd.observe(c.settings.resources)
                target = s.target.observe()
                vip = s.vip.observe()
        except Exception as exc:  # an adapter bug: refuse, never half-act
            log.exception("switchover: reading this host failed")
            return Side(c.hostname, {}, error=f"{type(exc).__name__}: {exc}")
        errors = [r.error for r in resources if r.error] + [
            e for e in (target.error, vip.error) if e
        ]
        return Side(
            host=c.hostname,
            resources={
                r.name: {
                    "role": r.role if r.configured else "Unconfigured",
                    "peer_role": r.peer_role,
                    "connection": r.connection,
                    "disk": r.disk,
                    "peer_disk": r.peer_disk,
                    "out_of_sync": r.out_of_sync_bytes or 0,
                    "sync_progress": r.sync_progress,
                    "split_brain": r.split_brain,
                }
                for r in resources
            },
            serving=target.serving,
            vip_local=vip.local,
            luns=tuple((i.number, i.serial, i.wwn) for i in target.lun_info),
            running=running,
            error="; ".join(errors) or None,
        )

    def _running(self) -> Optional[str]:
        a = self.active
        if a is None:
            return None
        return f"{a.sid} ({a.part}, started {self.monotonic() - a.started:.0f} s ago)"

    # -- the operations a peer (or this host's own orchestrator) calls

    def handlers(self) -> Dict[str, Callable[[Mapping[str, Any]], Dict[str, Any]]]:
        return {
            "switchover-facts": lambda args: self.facts().to_dict(),
            "switchover-arm": lambda args: self.arm(_sid(args)),
            "switchover-release": lambda args: self.release(_sid(args)),
            "switchover-wait": lambda args: self.wait(_sid(args), _seconds(args, "wait")),
            "switchover-abort": lambda args: self.abort(_sid(args)),
            "switchover-end": lambda args: self.end(_sid(args), args.get("phases") or {}),
        }

    def _take(self, sid: str, part: str) -> Optional[ManualMode]:
        """Become ``part`` of switchover ``sid``; Refused while another one runs here."""
        with self._lock:
            a = self.active
            if a is not None and not (a.sid == sid and a.part == "orchestrator"):
                raise Refused(
                    f"another switchover is running on {self.controller.hostname}: "
                    f"{self._running()}",
                    "busy",
                )
            previous = self.controller.load_manual()
            self.active = Active(sid, part, self.monotonic(), previous)
            return previous

    def arm(self, sid: str) -> Dict[str, Any]:
        """Make this standby the new holder: manual mode asking for primary. Its cycle holds
        while the peer is Primary and promotes on DRBD's event once it is Secondary."""
        side = self.facts()
        if side.error or not side.stands_by():
            raise Refused(
                f"{side.host} cannot take over: {side.error or side.describe()}", "not_standby"
            )
        previous = self._take(sid, "new")
        self._write_marker(sid, previous)
        self.controller.save_manual(ManualMode(True, StorageRole.PRIMARY, self.clock()))
        self._arm_timer(sid)
        log.warning(
            "switchover %s: armed as the new holder: manual mode, primary requested; "
            "promoting when DRBD reports the peer Secondary",
            sid,
        )
        self.trigger(f"switchover {sid}: armed")
        return {"host": self.controller.hostname, "armed": True}

    def release(self, sid: str) -> Dict[str, Any]:
        """Hand the storage over: manual mode asking for secondary, and the demoting cycle now.
        If it does not complete, the previous mode is restored and served again (Refused)."""
        side = self.facts()
        if side.error or not side.holds():
            raise Refused(
                f"{side.host} does not hold the storage: {side.error or side.describe()}",
                "not_holder",
            )
        previous = self._take(sid, "old")
        self._arm_timer(sid)  # forgotten if the orchestrator never ends it
        log.warning("switchover %s: releasing the storage (VIP, target, DRBD Secondary)", sid)
        secondary = ManualMode(True, StorageRole.SECONDARY, self.clock())
        # Persisted only once released: a controller killed in the middle restarts in the mode
        # it had and serves again (or holds, if the new holder got DRBD first): one host serves.
        result = self.controller.run_with_manual(secondary, persist_if=released)
        if released(result):
            at = result.started + result.duration  # DRBD Secondary by then, before the fsync
            return {
                "host": self.controller.hostname,
                "released_at": at,
                "duration": result.duration,
                "message": result.message,
            }
        log.error("switchover %s: release failed (%s); serving again", sid, result.message)
        back = self.controller.run_with_manual(previous or ManualMode())
        self._clear(sid)
        raise Refused(
            f"{self.controller.hostname} could not release the storage: "
            f"{result.message}; previous mode restored: {back.message}",
            "release",
        )

    def wait(self, sid: str, seconds: float) -> Dict[str, Any]:
        """Wait up to ``seconds`` for the armed host's promoting cycle to finish."""
        a = self.active
        if a is None or a.sid != sid or a.part != "new":
            raise Refused(
                f"switchover {sid[:20]!r} is not armed on {self.controller.hostname}", "not_armed"
            )
        if not a.looked:
            # Asked only once the old holder has answered the release (or could not): look now,
            # not only on DRBD's event, which can be lost or late (the cycle still promotes
            # only when DRBD shows the peer Secondary).
            a.looked = True
            self.trigger(f"switchover {sid}: the old holder released")
        serving = a.serving.wait(max(0.0, min(seconds, WAIT_SLICE)))
        return {
            "host": self.controller.hostname,
            "serving": serving,
            "cycle_started": a.cycle_started,
            "phases": dict(a.phases),
        }

    def abort(self, sid: str) -> Dict[str, Any]:
        """Undo this host's part: an armed host that does not serve yet restores its previous
        mode; an old holder restores its previous mode and serves again at once."""
        with self._lock:
            a = self.active
            if a is None or a.sid != sid or a.part == "orchestrator":
                return {"host": self.controller.hostname, "aborted": False}
            self.active = None
            self._cancel_timer()
        previous = a.previous or ManualMode()
        if a.part == "new":
            if a.serving.is_set():
                return {"host": self.controller.hostname, "aborted": False, "serving": True}
            self.controller.save_manual(previous)
            self._remove_marker()
            log.warning("switchover %s: disarmed; previous mode restored", sid)
            self.trigger(f"switchover {sid}: disarmed")
            return {"host": self.controller.hostname, "aborted": True}
        served = threading.Event()
        last: List[CycleResult] = []

        def watch(result: CycleResult) -> None:
            last[:] = [result]
            if serving_as_primary(result):
                served.set()

        # The new holder may have promoted before it was disarmed: this host then promotes on
        # DRBD's event once that one is Secondary again, in a later cycle. Wait for it.
        self.controller.listeners.append(watch)
        try:
            self.controller.run_with_manual(previous)
            self.trigger(f"switchover {sid}: taking the storage back")
            served.wait(TAKE_BACK_WAIT)
        finally:
            self.controller.listeners.remove(watch)
        message = last[0].message if last else "no cycle ran"
        log.warning("switchover %s: taking the storage back: %s", sid, message)
        return {
            "host": self.controller.hostname,
            "aborted": True,
            "serving": served.is_set(),
            "message": message,
        }

    def end(self, sid: str, phases: Mapping[str, Any]) -> Dict[str, Any]:
        """The switchover is over: forget it and export its phase times."""
        self._clear(sid)
        clean = {
            str(k): float(v)
            for k, v in dict(phases).items()
            if k in PHASES and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.controller.set_switchover_phases(clean)
        return {"host": self.controller.hostname}

    def _clear(self, sid: str) -> None:
        with self._lock:
            a = self.active
            if a is None or a.sid != sid:
                return
            self.active = None
            self._cancel_timer()
        if a.part == "new":
            self._remove_marker()

    # -- an armed host that restarts: the marker file

    @property
    def marker_path(self) -> str:
        return os.path.join(self.controller.manual_store.state_dir, MARKER_FILE)

    def _write_marker(self, sid: str, previous: Optional[ManualMode]) -> None:
        """Persisted with the armed mode: a controller restarted while armed still disarms on
        time (its previous mode restored) instead of waiting for a peer that never releases."""
        from .state import atomic_write, render_manual_mode

        prev = json.loads(render_manual_mode(previous or ManualMode()))
        atomic_write(
            self.marker_path,
            json.dumps({"format": 1, "id": sid, "armed_at": self.clock(), "previous": prev}) + "\n",
            mode=0o600,
        )

    def _remove_marker(self) -> None:
        try:
            os.unlink(self.marker_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("switchover: cannot remove %s: %s", self.marker_path, exc)

    def recover(self, peer: Optional[Call] = None) -> Optional[str]:
        """At start: re-arm from the marker an earlier run left, with what is left of its
        time (at least a moment, so the first cycle can show it serves). With the peer channel,
        after that moment: if the peer still holds the storage and runs no such switchover any
        more, disarm at once instead of waiting out the time. Returns the id."""
        from .files import STATE_LIMIT, read_capped
        from .state import parse_manual_mode

        try:
            data = json.loads(read_capped(self.marker_path, STATE_LIMIT).decode("utf-8"))
            sid = str(data["id"])[:64]
            armed_at = float(data["armed_at"])
            previous = parse_manual_mode(json.dumps(data["previous"]))
        except FileNotFoundError:
            return None
        except Exception as exc:  # damaged: nothing to recover, and nothing to trust
            log.error("switchover: ignoring the damaged marker %s (%s)", self.marker_path, exc)
            self._remove_marker()
            return None
        left = self.arm_timeout - max(0.0, self.clock() - armed_at)
        with self._lock:
            self.active = Active(sid, "new", self.monotonic(), previous)
        log.warning(
            "switchover %s: restarted while armed as the new holder; disarming in %.0f s "
            "unless the peer releases",
            sid,
            max(left, RECOVER_GRACE),
        )
        if peer is None or left <= RECOVER_GRACE:
            self._arm_timer(sid, max(left, RECOVER_GRACE))
            return sid
        with self._lock:
            self._cancel_timer()
            self._timer = threading.Timer(
                RECOVER_GRACE, self._ask_peer, (sid, peer, self.monotonic() + left)
            )
            self._timer.daemon = True
            self._timer.start()
        return sid

    def _ask_peer(self, sid: str, peer: Call, until: float) -> None:
        a = self.active
        if a is None or a.sid != sid or a.serving.is_set():
            return
        try:
            theirs = Side.from_dict(peer("switchover-facts", {}, 5.0))
        except PeerError as exc:
            log.info("switchover %s: cannot ask the peer (%s); keeping the deadline", sid, exc)
            theirs = None
        if (
            theirs is not None
            and not theirs.error
            and theirs.holds()
            and not (theirs.running or "").startswith(sid)
        ):
            log.warning(
                "switchover %s: the peer still holds the storage and no longer runs "
                "this switchover; disarming",
                sid,
            )
            self.abort(sid)
            return
        self._arm_timer(sid, max(0.1, until - self.monotonic()))

    # -- the armed host's clock

    def _arm_timer(self, sid: str, seconds: Optional[float] = None) -> None:
        with self._lock:
            self._cancel_timer()
            delay = self.arm_timeout if seconds is None else seconds
            self._timer = threading.Timer(delay, self._expire, (sid,))
            self._timer.daemon = True
            self._timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, sid: str) -> None:
        a = self.active
        if a is None or a.sid != sid:
            return
        if a.part == "new" and not a.serving.is_set():
            log.error("switchover %s: nothing heard for %.0f s; disarming", sid, self.arm_timeout)
            self.abort(sid)
        else:
            self._clear(sid)

    def _on_cycle(self, result: CycleResult) -> None:
        a = self.active
        if a is None or a.part != "new" or a.serving.is_set():
            return
        if serving_as_primary(result):
            a.cycle_started = result.started
            a.phases = phases_of(result)
            a.serving.set()
            with self._lock:
                self._cancel_timer()
            self._remove_marker()

    # -- the orchestration

    def run(self, peer: Optional[Call]) -> Dict[str, Any]:
        """The whole switchover, from this host; returns {code, message, phases, ...}."""
        t0 = self.monotonic()
        if peer is None:
            return _report(
                REFUSED,
                "refused: a switchover needs the peer channel (peer.address, "
                "see `iscsi-cfg peer-cert --help`); nothing was changed",
            )
        sid = uuid.uuid4().hex[:12]
        with self._lock:
            if self.active is not None:
                return _report(
                    REFUSED,
                    f"refused: another switchover is running on "
                    f"{self.controller.hostname}: {self._running()}",
                )
            self.active = Active(sid, "orchestrator", t0)
        try:
            return self._run(sid, peer, t0)
        finally:
            with self._lock:
                if (
                    self.active is not None
                    and self.active.sid == sid
                    and self.active.part == "orchestrator"
                ):
                    self.active = None

    def _run(self, sid: str, peer: Call, t0: float) -> Dict[str, Any]:
        roles = self._roles(sid, peer)
        if not isinstance(roles, _Roles):
            return roles  # refused: nothing was changed
        phases: Dict[str, float] = {"check": self.monotonic() - t0}
        refused = self._arm(sid, roles, phases)
        if refused:
            return refused
        refused, rel = self._release(sid, roles, phases)
        if refused:
            return refused
        done, problem = self._await_takeover(sid, roles)
        if done is None:
            return self._take_back(
                sid, roles.old, roles.new, roles.old_name, roles.new_name, problem
            )
        return self._finish(sid, roles, phases, rel, done, t0)

    def _roles(self, sid: str, peer: Call) -> Any:
        """Both sides' facts and the refusal check: who releases, who takes over (a _Roles),
        or the refusal's report."""
        try:
            theirs = Side.from_dict(peer("switchover-facts", {}, 5.0))
        except PeerError as exc:
            return _report(
                REFUSED,
                f"refused: the peer is unreachable over the peer channel "
                f"({exc.kind}: {exc}); nothing was changed",
            )
        mine = self.facts()
        if mine.running and mine.running.startswith(sid):  # our own orchestration
            mine = replace(mine, running=None)
        why, here = switchover_refusal(mine, theirs)
        if why:
            return _report(REFUSED, f"refused: {why}; nothing was changed")
        local: Call = self._local_call
        if here:
            return _Roles(local, peer, mine.host, theirs.host)
        return _Roles(peer, local, theirs.host, mine.host)

    def _arm(self, sid: str, r: "_Roles", phases: Dict[str, float]) -> Optional[Dict[str, Any]]:
        t = self.monotonic()
        try:
            r.new("switchover-arm", {"id": sid}, 10.0)
        except (PeerError, Refused) as exc:
            self._quiet_abort(r.new, sid)
            return _report(
                REFUSED, f"refused: {r.new_name} could not be armed: {exc}; nothing was changed"
            )
        phases["arm"] = self.monotonic() - t
        return None

    def _release(
        self, sid: str, r: "_Roles", phases: Dict[str, float]
    ) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
        """(refusal report or None, the old holder's answer: {} when it did not answer)."""
        try:
            rel = r.old("switchover-release", {"id": sid}, RELEASE_TIMEOUT)
        except Refused as exc:
            self._quiet_abort(r.new, sid)
            return _report(
                REFUSED,
                f"refused: {exc}; {r.new_name} disarmed, the storage stays on {r.old_name}",
            ), {}
        except PeerError as exc:
            if exc.kind not in ("timeout", "unreachable", "tls", "bad_answer"):
                self._quiet_abort(r.new, sid)
                return _report(
                    REFUSED,
                    f"refused: {r.old_name} could not release the storage: "
                    f"{exc}; {r.new_name} disarmed, the storage stays on {r.old_name}",
                ), {}
            # The old holder may or may not have released: the new one takes over only if DRBD
            # says it did. Wait for that (the caller), then move back if it does not come.
            log.warning(
                "switchover %s: no answer from %s to release (%s); waiting for DRBD",
                sid,
                r.old_name,
                exc,
            )
            return None, {}
        if rel.get("duration") is not None:
            phases["release"] = float(rel["duration"])
        return None, rel

    def _await_takeover(self, sid: str, r: "_Roles") -> Tuple[Optional[Dict[str, Any]], str]:
        """(the new holder's "serving" answer, or None with what went wrong)."""
        deadline = self.monotonic() + self.takeover_timeout
        problem = ""
        silent_since: Optional[float] = None
        while self.monotonic() < deadline:
            try:
                answer = r.new("switchover-wait", {"id": sid, "wait": WAIT_SLICE}, WAIT_SLICE + 5.0)
            except (PeerError, Refused) as exc:
                # A controller that does not answer does not promote either: give the storage
                # back soon instead of leaving it nowhere for the whole takeover time.
                now = self.monotonic()
                silent_since = now if silent_since is None else silent_since
                problem = f"{r.new_name} stopped answering ({exc})"
                if now - silent_since >= SILENT_NEW_HOLDER:
                    break
                time.sleep(0.2)
                continue
            silent_since = None
            if answer.get("serving"):
                return answer, ""
        return None, problem

    def _finish(
        self,
        sid: str,
        r: "_Roles",
        phases: Dict[str, float],
        rel: Mapping[str, Any],
        done: Mapping[str, Any],
        t0: float,
    ) -> Dict[str, Any]:
        started, released_at = done.get("cycle_started"), rel.get("released_at")
        if isinstance(started, (int, float)) and isinstance(released_at, (int, float)):
            phases["react"] = max(0.0, float(started) - float(released_at))
        for name, value in dict(done.get("phases") or {}).items():
            if name in PHASES and isinstance(value, (int, float)):
                phases[name] = float(value)
        phases["total"] = self.monotonic() - t0
        report = _report(
            DONE,
            f"switchover done: {r.new_name} serves the storage, {r.old_name} "
            f"stands by ({phases['total'] * 1000:.0f} ms)",
            phases,
        )
        report["after"] = (
            f"Both hosts are now in manual mode ({r.new_name} primary, {r.old_name} "
            "secondary). Afterwards: `iscsi-cfg switchover` back, or designate "
            f"{r.new_name} pool master; then `iscsi-cfg manual-mode-disable` on both "
            "(docs/runbook.md)."
        )
        for call in (r.new, r.old):
            try:
                call("switchover-end", {"id": sid, "phases": phases}, 5.0)
            except (PeerError, Refused) as exc:
                log.warning("switchover %s: could not record the end: %s", sid, exc)
        log.warning("switchover %s: %s", sid, report["message"])
        return report

    def _take_back(
        self, sid: str, old: Call, new: Call, old_name: str, new_name: str, problem: str
    ) -> Dict[str, Any]:
        """The new holder did not take over in time: disarm it, serve from the old one again."""
        why = problem or f"{new_name} did not serve within {self.takeover_timeout:.0f} s"
        disarmed = self._quiet_abort(new, sid)
        if disarmed.get("serving"):
            return _report(
                DONE, f"switchover done late: {new_name} serves the storage ({why} first)"
            )
        try:
            back = old("switchover-abort", {"id": sid}, RELEASE_TIMEOUT + TAKE_BACK_WAIT)
        except (PeerError, Refused) as exc:
            return _report(
                FAILED,
                f"failed: {why}; moving the storage back to {old_name} failed "
                f"too ({exc}): no host may be serving; run `iscsi-cfg status` on both",
            )
        if back.get("serving"):
            return _report(FAILED, f"failed: {why}; the storage is back on {old_name}")
        return _report(
            FAILED,
            f"failed: {why}; {old_name} could not serve again "
            f"({back.get('message', 'no answer')}): no host may be serving; run "
            "`iscsi-cfg status` on both",
        )

    def _quiet_abort(self, call: Call, sid: str) -> Dict[str, Any]:
        try:
            return call("switchover-abort", {"id": sid}, 10.0)
        except (PeerError, Refused) as exc:
            log.warning("switchover %s: abort not confirmed: %s", sid, exc)
            return {}

    def _local_call(self, op: str, args: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        return self.handlers()[op](args)


def _report(code: int, message: str, phases: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    return {"code": code, "ok": code == DONE, "message": message, "phases": dict(phases or {})}


def _sid(args: Mapping[str, Any]) -> str:
    sid = args.get("id")
    if not isinstance(sid, str) or not sid or len(sid) > 64:
        raise Refused("a switchover id is required", "bad_request")
    return sid


def _seconds(args: Mapping[str, Any], key: str) -> float:
    value = args.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)


def peer_call(client: Any) -> Call:
    """A ``Call`` over the peer channel (``peer.PeerClient``)."""

    def call(op: str, args: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        return dict(client.call(op, args, timeout=timeout))

    return call


__all__: List[str] = ["Switchover", "Side", "switchover_refusal", "render", "peer_call", "PHASES"]
