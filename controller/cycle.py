"""One reconcile cycle: observe -> decide -> execute -> publish a snapshot -> one sentence.

``Controller`` owns what must live between cycles: the last snapshot (published by replacing one
reference, so the exporter and the control socket read it without a lock and never wait for a
cycle), cumulative counters, the time of the last gratuitous ARP, the duplicate-address probe's
latest answer and the tgtd restart back-off. Everything that *decides* is in ``decide.py``; this
module only gathers inputs and carries out the plan.

A lock serialises cycles with the operator's role commands (become-primary, ...), so a manual
change never runs beside a cycle. Every cycle ends in exactly one log line, e.g.::

    ok: promoted iscsi1, target serving, VIP bound: host is pool master
    held: pool role unknown: pool.conf says 'broken'; holding, nothing changed
    held: not promoting iscsi1: peer is Primary (host is pool master)
    error: promote failed: (-2) Need access to UpToDate data: host is pool master
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

from . import __version__
from .commands import Command
from .decide import (
    become_refusal,
    decide,
    desired_role,
    manual_disable_refusal,
    vip_probe_needed,
)
from .execute import Systems, execute
from .ledger import Ledger, LedgerStore, advance, evidence, gi_wanted
from .model import (
    ActionResult,
    AnnounceVip,
    BindVip,
    Counters,
    CycleResult,
    DrbdResource,
    Evidence,
    HistogramData,
    ManualMode,
    Observation,
    Outcome,
    PeerObservation,
    Plan,
    Policy,
    PoolObservation,
    PoolRole,
    Snapshot,
    SrObservation,
    StartTargetDaemon,
    StorageRole,
    TargetObservation,
    UnbindVip,
    VipObservation,
    action_name,
)
from .said_once import SaidOnce
from .state import ManualModeStore
from .statusfile import write_status
from .systems.drbd import GenerationIds
from .systems.runner import CommandStats

log = logging.getLogger("iscsi_ha.cycle")

CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_TGTD_BACKOFF = 300.0


@dataclass(frozen=True)
class CycleSettings:
    resources: Tuple[str, ...]
    interval: float = 5.0
    deadline: float = 10.0
    announce_interval: float = 60.0
    probe_interval: float = 10.0
    restart_backoff: float = 2.0
    status_file: Optional[str] = None
    observe_srs: bool = True
    policy: Policy = Policy()

    command_timeout: float = 10.0

    @property
    def max_watch_gap(self) -> float:
        """Longest time between two looks that still counts as watching without a gap: two
        intervals, a cycle that ran to its deadline, and one command that ran to its timeout
        (measured in the VM lab: `drbdadm primary` waits for DRBD's fence-peer handler, and a
        promotion must not break the very proof it relies on). A slower look breaks it."""
        return 2 * self.interval + self.deadline + self.command_timeout


class Controller:
    def __init__(
        self,
        settings: CycleSettings,
        systems: Systems,
        read_pool: Callable[[], PoolObservation],
        manual_store: ManualModeStore,
        stats: Optional[CommandStats] = None,
        probe_vip: Optional[Callable[[], Optional[bool]]] = None,
        drbd_version: str = "",
        hostname: Optional[str] = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        ledger: Optional[LedgerStore] = None,
        peer_status: Optional[Callable[[], Optional[PeerObservation]]] = None,
    ) -> None:
        self.settings = settings
        self.systems = systems
        self.read_pool = read_pool
        self.manual_store = manual_store
        self.stats = stats or CommandStats()
        self.probe_vip_now = probe_vip
        self.drbd_version = drbd_version
        self.hostname = hostname or socket.gethostname()
        self.clock = clock
        self.monotonic = monotonic
        self.lock = threading.RLock()  # held for a whole cycle or a role command
        self.started = clock()
        self.ledger = ledger or LedgerStore(manual_store.state_dir, self.hostname, clock())
        self.peer_status = peer_status

        self._snapshot: Optional[Snapshot] = None
        self._cycles: Dict[str, int] = {}
        self._actions: Dict[Tuple[str, str], int] = {}
        self._overruns = 0
        self._tgtd_restarts = 0
        self._hist_counts = [0] * (len(CYCLE_BUCKETS) + 1)
        self._hist_sum = 0.0
        self._hist_n = 0
        self._last_announce: Optional[float] = None
        self._probe: Optional[Tuple[float, Optional[bool]]] = None  # (monotonic, answer)
        # Bumped whenever this host binds or drops the VIP: a probe that ran across such a change
        # may have heard the peer that held the address a moment ago, so its answer is void.
        self._vip_generation = 0
        self._tgtd_seen_running = False
        self._tgtd_backoff = settings.restart_backoff
        self._tgtd_next_start = 0.0
        self._manual_problem: Optional[str] = None
        self._status_problem = SaidOnce(log)  # status-file write errors
        self._master_since: Optional[float] = None  # monotonic; while the pool role is master
        # The last cycle sentences, for `iscsi-cfg log` (the full log goes to syslog/journald).
        self.history: Deque[Tuple[float, str, str]] = collections.deque(maxlen=500)
        # Called with each cycle's result (not dry runs): the switchover's armed host waits
        # for the cycle that serves (switchover.py). A listener must not block.
        self.listeners: List[Callable[[CycleResult], None]] = []
        self._manual_override: Optional[ManualMode] = None  # run_with_manual(persist_if=...)
        # observe() reads the target and the VIP beside DRBD (each adapter in one thread at once).
        self._readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="observe")
        self.switchover_phases: Tuple[Tuple[str, float], ...] = ()  # the last switchover's
        self.publish(None, ManualMode())

    # ---------------------------------------------------------------- snapshot hand-over

    def snapshot(self) -> Optional[Snapshot]:
        """The latest snapshot; never blocks (a plain reference read)."""
        return self._snapshot

    def publish(self, last: Optional[CycleResult], manual: ManualMode) -> None:
        calls, seconds, timeouts = self.stats.copy()
        counters = Counters(
            cycles=dict(self._cycles),
            actions=dict(self._actions),
            command_timeouts=timeouts,
            command_calls=calls,
            command_seconds=seconds,
            target_daemon_restarts=self._tgtd_restarts,
            cycle_overruns=self._overruns,
            cycle_duration=HistogramData(
                CYCLE_BUCKETS, tuple(_cumulative(self._hist_counts)), self._hist_sum, self._hist_n
            ),
        )
        srs = last.observation.srs if last and last.observation else None
        self._snapshot = Snapshot(
            version=__version__,
            hostname=self.hostname,
            drbd_version=self.drbd_version,
            started=self.started,
            interval=self.settings.interval,
            last=last,
            manual=manual,
            counters=counters,
            xenapi_reachable=srs.reachable if srs is not None else None,
            switchover_phases=self.switchover_phases,
        )

    # ---------------------------------------------------------------- the cycle

    def run_cycle(self, dry_run: bool = False) -> CycleResult:
        with self.lock:
            return self._run_cycle(dry_run)

    def _run_cycle(self, dry_run: bool, accept_stale: Tuple[str, ...] = ()) -> CycleResult:
        started = self.clock()
        t0 = self.monotonic()
        manual = ManualMode()
        obs: Optional[Observation] = None
        plan: Optional[Plan] = None
        results: Tuple[ActionResult, ...] = ()
        try:
            manual = self.load_manual()
            obs = self.observe(manual, record=not dry_run, accept_stale=accept_stale, save=False)
            plan = self._with_backoff(decide(obs, manual, self.settings.policy))
            if not dry_run:
                results = execute(plan, self.systems)
                self._after_execute(results)
                # Written after acting, not before: its fsync (~30 ms on a busy disk) is not
                # on the path of a promotion. The record is in memory already, and the file
                # never proves anything by itself (ledger.py).
                self.ledger.save_if_changed(self.clock())
            outcome, message = summarise(plan, results, dry_run)
            if self._manual_problem:
                message += f" (warning: {self._manual_problem})"
        except Exception as exc:  # the catch-all that keeps the loop alive
            log.exception("cycle failed")
            outcome, message = Outcome.ERROR, f"cycle failed: {type(exc).__name__}: {exc}"
        duration = self.monotonic() - t0
        overran = duration > self.settings.deadline
        if overran:
            message += f" (cycle overran its {self.settings.deadline:g}s deadline: {duration:.1f}s)"
        result = CycleResult(
            started, duration, obs, plan, results, outcome, message, overran, dry_run
        )
        if not dry_run:
            self._count(result)
            if self.settings.status_file:
                self._write_status_file(self.settings.status_file, result, manual)
        self.publish(result, manual)
        if not dry_run:
            for listener in list(self.listeners):
                try:
                    listener(result)
                except Exception:  # a listener bug must not stop the loop
                    log.exception("cycle listener failed")
        return result

    def _write_status_file(self, path: str, result: CycleResult, manual: ManualMode) -> None:
        try:
            write_status(path, result, manual, self.clock())
        except OSError as exc:
            self._status_problem.failed(exc, f"status file {path}")
            return
        self._status_problem.worked(f"status file {path} written again")

    def load_manual(self) -> ManualMode:
        if self._manual_override is not None:
            return self._manual_override
        manual, problem = self.manual_store.load()
        if problem and problem != self._manual_problem:
            log.warning(problem)
        self._manual_problem = problem
        return manual

    def observe(
        self,
        manual: ManualMode,
        record: bool = True,
        accept_stale: Tuple[str, ...] = (),
        save: bool = True,
    ) -> Observation:
        """Look at everything once. ``record`` keeps what was seen in the ledger (not in a
        dry run, which must change nothing); ``save`` also writes it to disk now."""
        pool = self.read_pool()
        resources, target, vip = self._read_storage()
        self._tgtd_seen_running = self._tgtd_seen_running or target.daemon_running
        now_wall, now_mono = self.clock(), self.monotonic()
        proofs = self._remember(resources, target, now_wall, now_mono, record, save)
        if pool.role is PoolRole.MASTER:
            self._master_since = self._master_since if self._master_since is not None else now_mono
        else:
            self._master_since = None
        peer = self._confirmed(self.peer_status()) if self.peer_status else None
        obs = Observation(
            pool=pool,
            resources=resources,
            target=target,
            vip=vip,
            evidence=proofs,
            peer=peer,
            now=now_wall,
            accept_stale=accept_stale,
        )
        desired, _ = desired_role(obs, manual)
        vip = self._vip_checks(obs, desired)
        return replace(obs, vip=vip, srs=self._srs_if_holding(obs, vip, desired))

    def _read_storage(
        self,
    ) -> Tuple[Tuple[DrbdResource, ...], TargetObservation, VipObservation]:
        """DRBD, the target and the VIP. The target and the VIP are read while DRBD is: three
        commands cost the slowest one, not their sum, on every cycle (and so on the path of
        every promotion)."""
        s = self.systems
        target_f: Optional[concurrent.futures.Future[TargetObservation]] = None
        vip_f: Optional[concurrent.futures.Future[VipObservation]] = None
        try:
            target_f = self._readers.submit(s.target.observe)
            vip_f = self._readers.submit(s.vip.observe)
        except RuntimeError:  # the interpreter is shutting down: one after the other
            pass
        resources = s.drbd.observe(self.settings.resources)
        target = target_f.result() if target_f is not None else s.target.observe()
        vip = vip_f.result() if vip_f is not None else s.vip.observe()
        return resources, target, vip

    def _remember(
        self,
        resources: Tuple[DrbdResource, ...],
        target: TargetObservation,
        now_wall: float,
        now_mono: float,
        record: bool,
        save: bool,
    ) -> Tuple[Evidence, ...]:
        """The ledger advanced by what was seen (kept when ``record``), and each resource's
        evidence from it."""
        store = self.ledger
        gap = self.settings.max_watch_gap
        gis = {}
        # At most one get-gi per cycle: a cycle's cost must not grow with the number of
        # resources (they are read in turn; the identifiers are for the operator's report).
        wanted = next((r for r in resources if gi_wanted(store.ledger, r, now_wall)), None)
        if wanted is not None and record:
            gi = self.systems.drbd.generation_ids(wanted.name)
            gis[wanted.name] = gi.text if gi is not None else ""  # "": tried, not readable
        ledger = advance(
            store.ledger,
            resources,
            now_mono,
            now_wall,
            store.boot_id,
            store.run_id,
            gap,
            gis,
            sessions=target.sessions,
        )
        if record:
            store.ledger = ledger
            if save:
                store.save_if_changed(now_wall)
        return tuple(
            self._with_drbd_flags(
                evidence(ledger, r.name, now_mono, store.boot_id, store.run_id, gap), r
            )
            for r in resources
        )

    def _vip_checks(self, obs: Observation, desired: Optional[StorageRole]) -> VipObservation:
        """The VIP with the duplicate-address check (arping -D) and whether an announcement is
        due: the holder uses the periodic probe's answer; a host about to bind probes now unless
        the peer is known to have released the VIP."""
        vip = obs.vip
        now = self.monotonic()
        if vip.local:
            conflict = self._fresh_probe(now)
        elif desired is StorageRole.PRIMARY and vip_probe_needed(obs, self.settings.policy):
            conflict = self.probe_vip_now() if self.probe_vip_now else None
            self._probe = (now, conflict)
        else:
            conflict = None
        due = (
            vip.local
            and self.settings.announce_interval > 0
            and (
                self._last_announce is None
                or now - self._last_announce >= self.settings.announce_interval
            )
        )
        return replace(vip, conflict=conflict, announce_due=bool(due))

    def _srs_if_holding(
        self, obs: Observation, vip: VipObservation, desired: Optional[StorageRole]
    ) -> Optional[SrObservation]:
        """PBDs are plugged only once this host holds everything (the last step of a
        promotion); reading them before costs XenAPI round trips on the path of the promotion
        itself. The cycle after it (woken by its own DRBD role change) plugs them."""
        s = self.systems
        holding = (
            bool(obs.resources)
            and all(r.role == "Primary" for r in obs.resources)
            and obs.target.serving
            and vip.local
        )
        if (
            s.sr is not None
            and self.settings.observe_srs
            and obs.pool.role is PoolRole.MASTER
            and desired is StorageRole.PRIMARY
            and holding
        ):
            return s.sr.observe()
        return None

    def _confirmed(self, peer: Optional[PeerObservation]) -> Optional[PeerObservation]:
        """The peer's "master" counts only from an answer given a full interval after this
        host became master: an answer cached from before (the old master, a moment before it
        turned slave) must not make a pool-master move look like two masters (measured in the
        VM lab: it held a failover for 6 s)."""
        if peer is None or peer.pool_role != PoolRole.MASTER.value:
            return peer
        since = self._master_since
        if (
            since is None
            or peer.answered_at is None
            or peer.answered_at < since + self.settings.interval
        ):
            return replace(peer, pool_role=None)
        return peer

    def _with_drbd_flags(self, ev: Evidence, res: DrbdResource) -> Evidence:
        """Add DRBD's meta-data flags (get-gi) where the promotion rule may need them: the peer
        unreachable and this host not Primary. One command, only in that state."""
        if (
            ev.watched
            or res.peer_reachable
            or not res.configured
            or res.error
            or res.role == "Primary"
        ):
            return ev
        gi = self.systems.drbd.generation_ids(res.name)
        if gi is None:
            return ev
        return replace(
            ev, drbd_peer_outdated=gi.peer_outdated, drbd_crashed_primary=gi.crashed_primary
        )

    def _fresh_probe(self, now: float) -> Optional[bool]:
        if self._probe is None:
            return None
        at, answer = self._probe
        return answer if now - at <= 3 * self.settings.probe_interval else None

    def run_vip_probe(self) -> None:
        """Background job: while the VIP is local, check that nobody else answers for it."""
        if self.probe_vip_now is None:
            return
        try:
            generation = self._vip_generation
            if not self.systems.vip.observe().local:
                return
            answer = self.probe_vip_now()
            if generation == self._vip_generation and self.systems.vip.observe().local:
                self._probe = (self.monotonic(), answer)
        except Exception:
            log.exception("VIP probe failed")

    def _with_backoff(self, plan: Plan) -> Plan:
        """Hold a tgtd restart while its back-off runs (a daemon that keeps dying must not be
        restarted in a tight loop)."""
        if not any(isinstance(a, StartTargetDaemon) for a in plan.actions):
            return plan
        now = self.monotonic()
        if now < self._tgtd_next_start:
            wait = self._tgtd_next_start - now
            why = f"tgtd is not running; next start attempt in {wait:.0f}s (back-off)"
            return Plan(plan.desired, plan.reason, held=why)
        return plan

    def _after_execute(self, results: Sequence[ActionResult]) -> None:
        now = self.monotonic()
        for r in results:
            if isinstance(r.action, StartTargetDaemon):
                if self._tgtd_seen_running:
                    self._tgtd_restarts += 1
                self._tgtd_next_start = now + self._tgtd_backoff
                self._tgtd_backoff = min(self._tgtd_backoff * 2, MAX_TGTD_BACKOFF)
            if isinstance(r.action, (AnnounceVip, BindVip)) and r.ok:
                self._last_announce = now
            if isinstance(r.action, (BindVip, UnbindVip)):
                self._vip_generation += 1
                self._probe = None
        if (
            not any(isinstance(r.action, StartTargetDaemon) for r in results)
            and now >= self._tgtd_next_start + 60
        ):
            self._tgtd_backoff = self.settings.restart_backoff  # stable again: reset

    def _count(self, result: CycleResult) -> None:
        self._cycles[result.outcome.value] = self._cycles.get(result.outcome.value, 0) + 1
        for r in result.results:
            key = (action_name(r.action), r.result_label)
            self._actions[key] = self._actions.get(key, 0) + 1
        if result.overran:
            self._overruns += 1
        self._hist_sum += result.duration
        self._hist_n += 1
        for i, bound in enumerate(CYCLE_BUCKETS):
            if result.duration <= bound:
                self._hist_counts[i] += 1
                break
        else:
            self._hist_counts[-1] += 1
        self.history.append((result.started, result.outcome.value, result.message))
        log.log(
            logging.WARNING if result.outcome is Outcome.ERROR else logging.INFO,
            "%s: %s",
            result.outcome.value,
            result.message,
        )

    def reconfigure(
        self,
        settings: CycleSettings,
        systems: Systems,
        read_pool: Callable[[], PoolObservation],
        probe_vip: Optional[Callable[[], Optional[bool]]],
    ) -> None:
        """Swap in a reloaded configuration between two cycles (SIGHUP)."""
        with self.lock:
            self.settings, self.systems, self.read_pool = settings, systems, read_pool
            self.probe_vip_now = probe_vip

    # ---------------------------------------------------------------- switchover (switchover.py)

    def save_manual(self, mode: ManualMode) -> None:
        """Persist ``mode`` between two cycles and show it at once; the next cycle acts on it."""
        with self.lock:
            self._store_manual(mode)
            self.publish(self._snapshot.last if self._snapshot else None, mode)

    def run_with_manual(
        self, mode: ManualMode, persist_if: Optional[Callable[[CycleResult], bool]] = None
    ) -> CycleResult:
        """Run a cycle on ``mode`` now, in one hold of the lock. Without ``persist_if`` the
        mode is saved first. With it, the mode holds for this cycle only (a controller killed
        during it restarts in the mode it had: a switchover's release must not outlive a dead
        controller) and is saved after the cycle, still in the same hold, if
        ``persist_if(result)``: a cycle woken meanwhile (DRBD's event of the demotion) must not
        run on the old mode in between. The VM lab saw that one promote the old holder again in
        the middle of a switchover."""
        with self.lock:
            if persist_if is None:
                self._store_manual(mode)
                return self._run_cycle(dry_run=False)
            self._manual_override = mode
            try:
                result = self._run_cycle(dry_run=False)
            finally:
                self._manual_override = None
            if persist_if(result):
                self._store_manual(mode)
            return result

    def _store_manual(self, mode: ManualMode) -> None:
        self.manual_store.save(mode)
        self._manual_problem = None

    def set_switchover_phases(self, phases: Dict[str, float]) -> None:
        self.switchover_phases = tuple(phases.items())
        snap = self._snapshot
        if snap is not None:
            self._snapshot = replace(snap, switchover_phases=self.switchover_phases)

    # ---------------------------------------------------------------- operator commands

    def command(
        self, name: str, accept_stale: Tuple[str, ...] = (), who: str = ""
    ) -> Tuple[int, str]:
        """Run a manual-mode command; returns (exit code, message): 0 done, 1 refused.
        Whether a command is allowed is decided in ``decide.py``; this only runs it."""
        with self.lock:
            handlers: Dict[str, Callable[[], Tuple[int, str]]] = {
                Command.MANUAL_MODE_ENABLE: self._manual_enable,
                Command.MANUAL_MODE_DISABLE: self._manual_disable,
                Command.BECOME_PRIMARY: lambda: self._become(
                    StorageRole.PRIMARY, accept_stale, who
                ),
                Command.BECOME_SECONDARY: lambda: self._become(StorageRole.SECONDARY),
            }
            handler = handlers.get(name)
            if handler is None:
                return 2, f"unknown command {str(name)!r}"
            code, message = handler()
            # Show the new mode at once (metrics, status) instead of after the next cycle.
            last = self._snapshot.last if self._snapshot else None
            self.publish(last, self.load_manual())
            return code, message

    def _manual_enable(self) -> Tuple[int, str]:
        manual = self.load_manual()
        if manual.enabled and not self._manual_problem:
            return 0, "manual mode is already enabled"
        self._store_manual(ManualMode(enabled=True, requested=None, since=self.clock()))
        return 0, "manual mode enabled: automatic role changes are stopped on this host"

    def _manual_disable(self) -> Tuple[int, str]:
        manual = self.load_manual()
        if not manual.enabled:
            return 0, "manual mode is already disabled"
        obs = self.observe(manual)
        refusal = manual_disable_refusal(obs)
        if refusal:
            return 1, refusal
        _, why = desired_role(obs, ManualMode())
        self.manual_store.save(ManualMode())
        return 0, f"manual mode disabled: storage role follows the pool role again ({why})"

    def _become(
        self, role: StorageRole, accept_stale: Tuple[str, ...] = (), who: str = ""
    ) -> Tuple[int, str]:
        manual = self.load_manual()
        obs = None
        if manual.enabled and role is StorageRole.PRIMARY:
            obs = self.observe(ManualMode(enabled=True, requested=role))
        refusal = become_refusal(role, manual, obs)
        if refusal:
            return 1, refusal
        if accept_stale:
            # Logged before acting: the operator takes responsibility for possibly old data.
            log.warning(
                "become-primary --accept-stale %s by %s: promoting without proof of "
                "the newest data",
                ", ".join(accept_stale),
                who or "unknown",
            )
        self.manual_store.save(replace(manual, requested=role))
        result = self._run_cycle(dry_run=False, accept_stale=accept_stale)
        if result.outcome is Outcome.OK:
            return 0, result.message
        # The operator was told "refused": the request must not linger and act later on its own.
        self.manual_store.save(manual)
        return 1, f"refused: {result.message} (request not kept; still {_requested(manual)})"

    def stale_report(self, name: str) -> Dict[str, object]:
        """What is known about ``name``'s data, for become-primary --accept-stale to show."""
        with self.lock:
            if name not in self.settings.resources:
                raise KeyError(name)
            obs = self.observe(self.load_manual(), record=False)
            res = obs.resource(name)
            ev = obs.evidence_for(name)
            return {
                "resource": name,
                "now": obs.now,
                "drbd": {
                    "role": res.role,
                    "peer_role": res.peer_role,
                    "connection": res.connection,
                    "disk": res.disk,
                    "peer_disk": res.peer_disk,
                },
                "proof": ev.watched,
                "why_not": ev.why_not,
                "reason": ev.reason,
                "last_connected": ev.last_connected,
                "last_role": ev.last_role,
                "last_peer_role": ev.last_peer_role,
                "last_peer_disk": ev.last_peer_disk,
                "generation_ids_when_last_connected": _last_gi(self.ledger.ledger, name),
                "generation_ids": _gi_text(self.systems.drbd.generation_ids(name)),
            }


def _last_gi(ledger: Ledger, name: str) -> Optional[str]:
    entry = ledger.entries.get(name)
    return entry.connected.gi if entry is not None and entry.connected is not None else None


def _gi_text(gi: Optional[GenerationIds]) -> Optional[str]:
    if gi is None:
        return None
    flags = [
        name
        for name in (
            "consistent",
            "was_uptodate",
            "primary",
            "connected",
            "full_sync",
            "peer_outdated",
            "crashed_primary",
        )
        if getattr(gi, name)
    ]
    return f"{gi.text} (flags: {', '.join(flags) or 'none'})"


def _requested(manual: ManualMode) -> str:
    if manual.requested is None:
        return "manual mode without a requested role"
    return f"manual mode, requested role {manual.requested.value}"


def summarise(plan: Plan, results: Sequence[ActionResult], dry_run: bool) -> Tuple[Outcome, str]:
    """The cycle's one sentence and its outcome."""
    why = plan.reason
    if plan.held is not None:  # a hold may still repair what it holds (decide.keep_serving)
        done = [_phrase(r) for r in results if r.ok and _phrase(r)]
        bad = next((r for r in results if not r.ok), None)
        tail = f"; {action_name(bad.action)} failed: {bad.message}" if bad else ""
        return Outcome.HELD, (f"{', '.join(done)}; " if done else "") + plan.held + tail
    if dry_run:
        planned = ", ".join(action_name(a) for a in plan.actions) or "nothing"
        refused = f"; then refused: {'; '.join(plan.refusals)}" if plan.refusals else ""
        return Outcome.OK, f"dry run, would do: {planned}{refused}: {why}"
    done = [_phrase(r) for r in results if r.ok and _phrase(r)]
    failed = next((r for r in results if not r.ok), None)
    if failed is not None:
        before = f" (done first: {', '.join(done)})" if done else ""
        kind = Outcome.HELD if failed.refused else Outcome.ERROR
        verb = "refused" if failed.refused else "failed"
        return kind, f"{action_name(failed.action)} {verb}: {failed.message}{before}: {why}"
    if plan.refusals:
        before = f"{', '.join(done)}; " if done else ""
        return Outcome.HELD, f"{before}{'; '.join(plan.refusals)} ({why})"
    if not done:
        return Outcome.OK, f"no action: {why}"
    return Outcome.OK, f"{', '.join(done)}: {why}"


def _phrase(r: ActionResult) -> str:
    a = r.action
    name = action_name(a)
    res = getattr(a, "resource", "")
    return {
        "drbd_up": f"brought {res} up",
        "promote": f"promoted {res}",
        "demote": f"demoted {res}",
        "target_start": "started tgtd",
        "target_serve": "target serving",
        "target_stop": "target stopped",
        "vip_add": "VIP bound",
        "vip_del": "VIP removed",
        "vip_announce": "",  # implied by "VIP bound"; periodic ones are not news
        "sr_plug": f"plugged {len(getattr(a, 'pbds', ()))} PBD(s)",
    }.get(name, name)


def _cumulative(counts: List[int]) -> List[int]:
    out, total = [], 0
    for c in counts:
        total += c
        out.append(total)
    return out
