"""``iscsi-ha``: the composition root: config, adapters, scheduler, exporter, socket, signals.

    iscsi-ha run  [--config FILE]                      the controller (systemd runs this)
    iscsi-ha once [--config FILE] [--dry-run] [--json] one cycle, its outcome printed
    iscsi-ha fence-peer [--config FILE] [RESOURCE]     DRBD's fence-peer handler
    iscsi-ha --version

Nothing here decides anything: it wires ``config`` to the adapters in ``systems/``, hands them to a
``cycle.Controller`` and runs that controller's cycle as an APScheduler interval job
(``max_instances=1``, ``coalesce=True``, a misfire grace of one interval). The interval is the
fallback; these make a cycle run at once:

* a change of pool.conf's content, seen through inotify (``systems/filewatch.py``; it falls back
  to reading the file twice a second where inotify is unavailable);
* a DRBD state change of a configured resource, from DRBD's own event stream
  (``systems/drbd/events.py``): the new master promotes the moment its peer reports Secondary;
* an operator's role command.

A plan that asks to look again soon (the peer is demoting right now) waits for the next of those
wake-ups, and at most ``QUICK_RETRY_DELAY`` (the fallback should the event be missed).

SIGTERM and SIGINT stop the controller **without** demoting: stopping the service must never take
storage away from running VMs. DRBD, tgtd and the VIP stay as they are until a controller runs
again. SIGHUP reloads the configuration; an invalid file is logged and the old one kept.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from . import __version__
from .audit import AuditJob
from .audit import settings_from_config as audit_settings
from .config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    XenApiConfig,
    load_config,
    read_xenapi_password,
)
from .cycle import Controller, CycleSettings
from .execute import Systems
from .model import Policy, PoolObservation
from .probe import ProbeJob, settings_from_config
from .state import ManualModeStore
from .systems.drbd import Drbd
from .systems.drbd.events import DrbdEvent, DrbdEventSource, events_argv
from .systems.filewatch import FileWatch
from .systems.pool import read_pool_conf
from .systems.runner import CommandStats, ProcessRunner
from .systems.target import make_target
from .systems.vip import Vip
from .systems.vip_sessions import VipSessions

log = logging.getLogger("iscsi_ha")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2
QUICK_RETRY_DELAY = 0.2  # at most this long before looking again while the peer is demoting
MAX_QUICK_RETRIES = 50  # bounded: after ~10 s the normal interval takes over
WATCH_PERIOD = 0.5  # pool.conf read this often only where inotify cannot be used
CLOCK_STEP = 2.0  # a wall-clock step larger than this (NTP, `date -s`) re-bases every job


class ClockStepGuard:
    """Notices the wall clock stepping against the monotonic one.

    APScheduler keeps its jobs' next run times in wall-clock time and sleeps on the monotonic
    clock: after a step back of an hour it sleeps an hour -- no cycle (the holder would not
    restart a dead tgtd), no peer poll, no VIP probe -- until an event wakes it; lab/chaos.py's
    clock-jump fault found it. ``step()`` returns the step in seconds once it happened."""

    def __init__(self, wall: float, mono: float) -> None:
        self.wall, self.mono = wall, mono

    def step(self, wall: float, mono: float) -> float:
        drift = (wall - self.wall) - (mono - self.mono)
        self.wall, self.mono = wall, mono
        return drift if abs(drift) > CLOCK_STEP else 0.0


def build_controller(cfg: Config, stats: Optional[CommandStats] = None) -> Controller:
    stats = stats if stats is not None else CommandStats()
    built = build_systems(cfg, stats)
    return Controller(
        built.settings,
        built.systems,
        built.read_pool,
        ManualModeStore(cfg.paths.state_dir),
        stats=stats,
        probe_vip=built.probe_vip,
        drbd_version=_safe_version(built.systems.drbd),
        hostname=cfg.node_name,
    )


class Built(NamedTuple):
    """What a configuration turns into: everything a Controller is (re)configured with."""

    settings: CycleSettings
    systems: Systems
    read_pool: Callable[[], PoolObservation]
    probe_vip: Callable[[], Optional[bool]]


def build_systems(cfg: Config, stats: CommandStats) -> Built:
    # The XenAPI password variable stays with us: no child (drbdadm, tgtd, ...) inherits it.
    hidden = sorted({n for n in (XenApiConfig.password_env, cfg.xenapi.password_env) if n})
    runner = ProcessRunner(default_timeout=cfg.command_timeout, stats=stats, hide_env=hidden)
    drbd = Drbd(
        runner,
        version=cfg.drbd.version,
        drbdadm=cfg.drbd.drbdadm,
        drbdsetup=cfg.drbd.drbdsetup,
        proc_drbd=cfg.drbd.proc_drbd,
        kernel_log=tuple(cfg.drbd.kernel_log),
        read_proc_directly=True,
    )
    target = make_target(cfg.target, runner)
    own_sessions = VipSessions(
        runner, cfg.vip.bare_address, cfg.probe.port, ss=cfg.vip.ss, wait=cfg.vip.own_sessions_wait
    )
    vip = Vip(
        runner,
        address=cfg.vip.address,
        interface=cfg.vip.interface,
        ip=cfg.vip.ip,
        arping=cfg.vip.arping,
        announce_count=cfg.vip.announce_count,
        on_released=own_sessions.after_release,
        on_bound=own_sessions.after_bind,
    )
    sr = None
    if cfg.xenapi.enabled:
        from .systems.sr import SrAdapter
        from .systems.xenapi import XenApiClient

        client = XenApiClient(
            url=cfg.xenapi.url,
            socket_path=cfg.xenapi.socket,
            username=cfg.xenapi.username,
            password=read_xenapi_password(cfg) or "",
            timeout=cfg.xenapi.timeout,
            verify_tls=cfg.xenapi.verify_tls,
            stats=stats,
        )
        sr = SrAdapter(client)
    settings = CycleSettings(
        resources=tuple(cfg.resources),
        interval=cfg.interval,
        deadline=cfg.cycle_deadline,
        announce_interval=cfg.vip.announce_interval,
        probe_interval=cfg.vip.probe_interval,
        restart_backoff=cfg.target.restart_backoff,
        status_file=cfg.paths.status_file,
        observe_srs=cfg.xenapi.enabled and cfg.xenapi.plug_srs,
        policy=Policy(unproven_wait=cfg.promotion.unproven_wait),
        command_timeout=cfg.command_timeout,
    )
    pool_conf = cfg.pool.conf
    return Built(
        settings,
        Systems(drbd, target, vip, sr),
        lambda: read_pool_conf(pool_conf),
        vip.probe_conflict,
    )


def _safe_version(drbd) -> str:
    try:
        return drbd.version()
    except Exception:  # the version is decoration; never a reason not to start
        return ""


# ------------------------------------------------------------------------ the running daemon


class Daemon:
    """The scheduler, the pool.conf watcher, the exporter and the control socket around a
    Controller; ``run()`` blocks until SIGTERM/SIGINT."""

    def __init__(self, config_path: str, cfg: Config) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.config_path = config_path
        self.cfg = cfg
        self.stats = CommandStats()
        self.controller = build_controller(cfg, self.stats)
        self.stop_event = threading.Event()
        self.pending = threading.Event()
        self.scheduler = BackgroundScheduler(
            job_defaults={
                "max_instances": 1,
                "coalesce": True,
                "misfire_grace_time": max(1, int(cfg.interval)),
            },
            timezone=datetime.timezone.utc,
        )
        self.pool_watch = FileWatch(
            cfg.pool.conf, lambda: self.trigger("pool.conf changed"), poll_period=WATCH_PERIOD
        )
        self.drbd_events = DrbdEventSource(
            self._events_argv, cfg.resources, self._drbd_event, on_restart=self._drbd_stream_started
        )
        self.exporter: Optional[Any] = None  # exporter.server handle, when enabled
        self.control: Optional[Any] = None  # control.ControlServer
        self.peer_server: Optional[Any] = None  # peer.PeerServer, when peer.address is set
        self.peer_watcher: Optional[Any] = None
        self.peer_client: Optional[Any] = None
        from .switchover import Switchover

        self.switchover = Switchover(self.controller, self.trigger)
        probe = settings_from_config(cfg)
        self.probe: Optional[ProbeJob] = ProbeJob(probe, cfg.node_name) if probe else None
        audit = audit_settings(cfg)
        self.audit: Optional[AuditJob] = None
        if audit is not None:
            hidden = sorted({n for n in (XenApiConfig.password_env, cfg.xenapi.password_env) if n})
            self.audit = AuditJob(
                audit,
                ProcessRunner(
                    default_timeout=cfg.command_timeout, stats=self.stats, hide_env=hidden
                ),
            )

    # -- jobs

    def cycle_job(self) -> None:
        """One cycle, then more at once while something asks for it (bounded)."""
        for attempt in range(MAX_QUICK_RETRIES + 1):
            self.pending.clear()
            result = self.controller.run_cycle()
            quick = bool(result.plan and result.plan.retry_soon)
            if self.stop_event.is_set() or not (self.pending.is_set() or quick):
                return
            if quick and not self.pending.is_set() and attempt < MAX_QUICK_RETRIES:
                # Woken at once by the peer's DRBD event (or pool.conf, or stop); the delay is
                # only the fallback for a missed event.
                self.pending.wait(QUICK_RETRY_DELAY)

    def trigger(self, why: str, level: int = logging.INFO) -> None:
        log.log(level, "running a cycle now: %s", why)
        self.pending.set()
        try:
            self.scheduler.modify_job(
                "cycle", next_run_time=datetime.datetime.now(datetime.timezone.utc)
            )
        except Exception:  # the scheduler is shutting down
            pass

    # -- wake-ups

    def _events_argv(self) -> Optional[List[str]]:
        drbd = self.controller.systems.drbd
        return events_argv(
            drbd.generation() if isinstance(drbd, Drbd) else None, self.cfg.drbd.drbdsetup
        )

    def _drbd_event(self, event: DrbdEvent) -> None:
        # Every state change is worth a look (a few per role change); debug, not info: a resync
        # or a flapping link would otherwise fill the log.
        self.trigger(
            f"DRBD {event.resource}: {event.verb} {event.obj} "
            + " ".join(f"{k}:{v}" for k, v in event.fields.items()),
            logging.DEBUG,
        )

    def _drbd_stream_started(self, why: str) -> None:
        self.trigger(why, logging.DEBUG)  # changes made while nobody listened are not replayed

    # -- lifecycle

    def start(self) -> None:
        cfg = self.cfg
        if cfg.exporter.enabled:
            self._start_exporter()
        from .control import ControlServer

        self.control = ControlServer(cfg.paths.control_socket, self, cfg.control.allowed_uids)
        self.control.start()
        if cfg.peer.enabled:
            self.start_peer_channel()
        # Armed for a switchover when it stopped: keep the deadline (or ask the peer).
        from .switchover import peer_call

        self.switchover.recover(peer_call(self.peer_client) if self.peer_client else None)
        self._schedule_jobs()
        self.scheduler.start()
        self.pool_watch.start()
        self.drbd_events.start()
        log.info(
            "iscsi-ha %s started: %s, every %gs, resources %s",
            __version__,
            cfg.node_name,
            cfg.interval,
            ", ".join(cfg.resources),
        )

    def _start_exporter(self) -> None:
        """The metrics endpoint over the snapshot and the side jobs' results."""
        cfg = self.cfg
        from prometheus_client import CollectorRegistry

        from ..exporter.collector import SnapshotCollector
        from ..exporter.server import start_exporter

        registry = CollectorRegistry(auto_describe=False)
        SnapshotCollector(self.controller.snapshot, registry)
        if self.probe is not None:
            from ..exporter.probe_collector import ProbeCollector

            ProbeCollector(self.probe.history, registry)
        if self.audit is not None:
            from ..exporter.audit_collector import AuditCollector

            AuditCollector(self.audit.latest, registry)
        self.exporter = start_exporter(
            cfg.exporter.listen,
            registry,
            self.controller.snapshot,
            cfg.exporter.web_config_file,
        )
        log.info("metrics on %s", cfg.exporter.listen)

    def _schedule_jobs(self) -> None:
        """The cycle and each side job on its own interval, the first run now where it matters."""
        cfg = self.cfg
        now = datetime.datetime.now(datetime.timezone.utc)
        self.scheduler.add_job(
            self.cycle_job, "interval", seconds=cfg.interval, id="cycle", next_run_time=now
        )
        if self.peer_watcher is not None:
            # Its own job: a slow or dead peer delays only this poll, never a cycle.
            self.scheduler.add_job(
                self.peer_watcher.poll,
                "interval",
                seconds=cfg.interval,
                id="peer-poll",
                next_run_time=now,
            )
        if cfg.vip.probe_interval > 0:
            self.scheduler.add_job(
                self.controller.run_vip_probe,
                "interval",
                seconds=cfg.vip.probe_interval,
                id="vip-probe",
            )
        if self.probe is not None:
            # Its own job, bounded by probe.timeout: a dead target delays only the probe.
            self.scheduler.add_job(
                self.probe.run,
                "interval",
                seconds=self.probe.settings.interval,
                id="storage-probe",
                next_run_time=now,
            )
        if self.audit is not None:
            # Every few minutes, first at start: settings change rarely, and reading them costs
            # a few commands.
            self.scheduler.add_job(
                self.audit.run,
                "interval",
                seconds=self.audit.settings.interval,
                id="audit",
                next_run_time=now,
            )

    def start_peer_channel(self) -> None:
        from .peer import PeerServer, PeerWatcher, make_handlers

        cfg = self.cfg
        client, server_ctx, pin = peer_client(cfg)
        handlers = make_handlers(
            cfg.node_name,
            __version__,
            tuple(cfg.resources),
            self.controller.snapshot,
            self.controller.systems.drbd,
        )
        handlers.update(self.switchover.handlers())
        self.peer_client = client
        from .splitbrain_ops import PEER_OP, peer_handler

        handlers[PEER_OP] = peer_handler(
            self.controller, cfg.paths.state_dir, tuple(cfg.resources), cfg.target.iqn
        )
        host, port = cfg.peer.listen.rsplit(":", 1)
        self.peer_server = PeerServer(
            (host.strip("[]"), int(port)), server_ctx, pin, handlers, timeout=cfg.peer.timeout
        )
        self.peer_server.start()
        self.peer_watcher = PeerWatcher(client, max_age=3 * cfg.interval + cfg.peer.timeout)
        self.controller.peer_status = self.peer_watcher.current

    def run_switchover(self) -> Dict[str, Any]:
        """``iscsi-cfg switchover``: the whole move, orchestrated from this host."""
        from .switchover import peer_call

        client = self.peer_client
        return self.switchover.run(peer_call(client) if client is not None else None)

    def reload(self) -> None:
        try:
            cfg = load_config(self.config_path)
            built = build_systems(cfg, self.stats)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration:\n%s", exc)
            return
        except Exception as exc:  # a reload must never end the daemon that holds the storage
            log.exception(
                "reload refused, keeping the running configuration: %s: %s", type(exc).__name__, exc
            )
            return
        self.controller.reconfigure(*built)
        if cfg.interval != self.cfg.interval:
            self.scheduler.reschedule_job("cycle", trigger="interval", seconds=cfg.interval)
        for key in ("exporter", "paths"):
            if getattr(cfg, key) != getattr(self.cfg, key):
                log.warning("%s settings changed: they take effect after a restart", key)
        if cfg.pool.conf != self.cfg.pool.conf:
            log.warning("pool.conf path changed: it is watched after a restart")
        self.drbd_events.resources = tuple(cfg.resources)
        probe = settings_from_config(cfg)
        if self.probe is not None and probe is not None:
            if probe.interval != self.probe.settings.interval:
                self.scheduler.reschedule_job(
                    "storage-probe", trigger="interval", seconds=probe.interval
                )
            self.probe.settings = probe
        elif (self.probe is None) != (probe is None):
            log.warning("probe.enabled changed: it takes effect after a restart")
        audit = audit_settings(cfg)
        if self.audit is not None and audit is not None:
            if audit.interval != self.audit.settings.interval:
                self.scheduler.reschedule_job("audit", trigger="interval", seconds=audit.interval)
            self.audit.settings = audit
        elif (self.audit is None) != (audit is None):
            log.warning("audit.enabled changed: it takes effect after a restart")
        self.cfg = cfg
        log.info("configuration reloaded from %s", self.config_path)
        self.trigger("configuration reloaded")

    def stop(self) -> None:
        self.stop_event.set()
        self.pending.set()  # ends a quick-retry wait at once
        self.pool_watch.stop()
        self.drbd_events.stop()
        # wait=True: a running cycle finishes (every command in it has a timeout). No demotion.
        started = self.scheduler.running
        if started:
            self.scheduler.shutdown(wait=True)
        if self.control is not None:
            self.control.stop()
        if self.peer_server is not None:
            self.peer_server.stop()
        if self.exporter is not None:
            self.exporter.stop()
        if started:
            log.info("stopped; storage roles left as they are")

    def rebase_jobs(self, stepped: float) -> None:
        """Every job runs now; its next run then counts from the new wall clock."""
        log.warning(
            "the wall clock stepped %+.0f s: running every job now so that none waits "
            "for the old time",
            stepped,
        )
        now = datetime.datetime.now(datetime.timezone.utc)
        for job in self.scheduler.get_jobs():
            try:
                job.modify(next_run_time=now)
            except Exception:  # removed meanwhile, or the scheduler is shutting down
                pass

    def run(self) -> int:
        """Block until SIGTERM/SIGINT (``start()`` must have been called)."""
        reload_requested = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
        clock = ClockStepGuard(time.time(), time.monotonic())
        try:
            while not self.stop_event.is_set():
                self.stop_event.wait(0.5)
                stepped = clock.step(time.time(), time.monotonic())
                if stepped:
                    self.rebase_jobs(stepped)
                if reload_requested.is_set():
                    reload_requested.clear()
                    self.reload()
        finally:
            self.stop()
        return EXIT_OK


def peer_client(cfg: Config) -> Any:
    """(PeerClient, server TLS context, pinned fingerprint) from ``cfg.peer``; ConfigError
    naming the key when a certificate or key cannot be loaded."""
    import ssl

    from .peer import PeerClient, pinned_fingerprint, tls_context

    p = cfg.peer
    try:
        pin = pinned_fingerprint(p.peer_cert_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            p.peer_cert_file,
            [
                f"peer.peer_cert_file: cannot read the peer's certificate {p.peer_cert_file}: "
                f"{exc}; "
                "copy the other host's host.crt there (see `iscsi-cfg peer-cert --help`)"
            ],
        ) from None
    try:
        client_ctx = tls_context(False, p.cert_file, p.key_file, p.peer_cert_file)
        server_ctx = tls_context(True, p.cert_file, p.key_file, p.peer_cert_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            p.cert_file,
            [
                f"peer.cert_file / peer.key_file: cannot load {p.cert_file} with {p.key_file}: "
                f"{exc}; create them with `iscsi-cfg peer-cert`"
            ],
        ) from None
    return PeerClient(p.address, p.port, client_ctx, pin, timeout=p.timeout), server_ctx, pin


def fence_peer(cfg: Config, resource: str) -> int:
    """DRBD's fence-peer handler: ask the peer over the peer channel to outdate ``resource``;
    exit with DRBD's code (4 outdated, 3 inconsistent, 5 unreachable, 6 peer is Primary)."""
    from .peer import FENCE_PEER_UNREACHABLE, PeerError, fence_exit_code

    if not cfg.peer.enabled:
        log.error(
            "fence-peer %s: no peer channel configured (peer.address): cannot reach the "
            "peer; exit %d",
            resource,
            FENCE_PEER_UNREACHABLE,
        )
        return FENCE_PEER_UNREACHABLE
    if resource not in cfg.resources:
        log.error(
            "fence-peer: %r is not a resource of this configuration (%s); exit %d",
            resource,
            ", ".join(cfg.resources),
            FENCE_PEER_UNREACHABLE,
        )
        return FENCE_PEER_UNREACHABLE
    try:
        client, _, _ = peer_client(cfg)
    except ConfigError as exc:
        log.error("fence-peer %s: %s; exit %d", resource, exc, FENCE_PEER_UNREACHABLE)
        return FENCE_PEER_UNREACHABLE
    result, error = None, None
    try:
        # Twice the per-call bound: DRBD waits for this handler with I/O to the resource held.
        result = client.call("outdate", {"resource": resource}, timeout=2 * cfg.peer.timeout)
    except PeerError as exc:
        error = exc
    code, why = fence_exit_code(result, error)
    log.warning("fence-peer %s (called by DRBD): %s; exit %d", resource, why, code)
    return code


# ------------------------------------------------------------------------ command line


def setup_logging(level: str, use_syslog: bool) -> None:
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(stderr)
    if use_syslog and os.path.exists("/dev/log"):
        try:
            handler = logging.handlers.SysLogHandler(address="/dev/log")
            handler.setFormatter(logging.Formatter("iscsi-ha[%(process)d]: %(message)s"))
            root.addHandler(handler)
        except OSError:
            pass
    # APScheduler warns "skipped: maximum number of running instances" whenever a trigger lands
    # during a cycle; that is by design here (max_instances=1, and the running cycle re-runs when
    # a trigger is pending). Overruns are reported by the cycle itself.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iscsi-ha",
        description="Keeps DRBD Primary, the iSCSI target and the floating IP on the pool master "
        "of a two-host XenServer / XCP-ng pool, and exports what it sees as Prometheus metrics.",
        epilog="Stopping the controller never demotes: storage stays where it is. "
        "Operator commands (status, manual mode) are in iscsi-cfg.",
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"iscsi-ha {__version__} (python {sys.version.split()[0]})",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the controller until SIGTERM (what systemd starts)",
        description="Run the controller loop, the metrics endpoint and the "
        "control socket until SIGTERM. SIGHUP reloads the configuration.",
    )
    once = sub.add_parser(
        "once",
        help="run one cycle and print its outcome",
        description="Observe, decide and (unless --dry-run) act once, then "
        "print the outcome. Exit 0 when the cycle ran (even if it held on "
        "purpose), 1 when an action failed, 2 on a configuration error.",
    )
    for sp in (run, once):
        sp.add_argument(
            "--config",
            "-c",
            default=DEFAULT_CONFIG_PATH,
            help=f"configuration file (default {DEFAULT_CONFIG_PATH})",
        )
        sp.add_argument(
            "--log-level",
            choices=["debug", "info", "warning", "error"],
            help="override logging.level from the configuration",
        )
    fence = sub.add_parser(
        "fence-peer",
        help="DRBD's fence-peer handler (drbd.conf: handlers { fence-peer ... })",
        description="Called by DRBD on the Primary when the replication link breaks (fencing "
        "resource-only): asks the peer's controller over the peer channel to outdate its disk "
        "(drbdadm outdate), so it cannot be promoted with data older than this host's. Exit "
        "codes are DRBD's: 4 the peer is Outdated, 3 the peer is Inconsistent, 5 the peer "
        "could not be reached, 6 the peer refused because it is Primary. `iscsi-cfg "
        "drbd-snippet` prints the drbd.conf lines.",
    )
    fence.add_argument(
        "--config",
        "-c",
        default=DEFAULT_CONFIG_PATH,
        help=f"configuration file (default {DEFAULT_CONFIG_PATH})",
    )
    fence.add_argument(
        "resource",
        nargs="?",
        default=None,
        help="the resource (default: $DRBD_RESOURCE, which DRBD sets)",
    )
    once.add_argument(
        "--dry-run", action="store_true", help="observe and print the plan, change nothing"
    )
    once.add_argument(
        "--json", action="store_true", help="print one JSON object: observation, plan, outcome, ..."
    )
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"iscsi-ha: invalid configuration, nothing was changed:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "fence-peer":
        setup_logging("info", cfg.logging.syslog)
        resource = args.resource or os.environ.get("DRBD_RESOURCE", "")
        return fence_peer(cfg, resource)
    level = args.log_level or cfg.logging.level
    if args.command == "once":
        setup_logging(level if args.log_level else "warning", use_syslog=False)
        return run_once(cfg, args.dry_run, args.json)
    setup_logging(level, cfg.logging.syslog)
    try:
        daemon = Daemon(args.config, cfg)
    except ConfigError as exc:  # e.g. the XenAPI password file cannot be read
        print(f"iscsi-ha: invalid configuration, nothing was changed:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"iscsi-ha: cannot start: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        daemon.start()
    except Exception as exc:  # a bad web config, a port in use, a socket already served
        from ..exporter.webconfig import WebConfigError

        print(f"iscsi-ha: cannot start: {exc}", file=sys.stderr)
        daemon.stop()
        return EXIT_CONFIG if isinstance(exc, WebConfigError) else EXIT_ERROR
    return daemon.run()


def run_once(cfg: Config, dry_run: bool, as_json: bool) -> int:
    try:
        controller = build_controller(cfg)
    except ConfigError as exc:
        print(f"iscsi-ha: invalid configuration, nothing was changed:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    result = controller.run_cycle(dry_run=dry_run)
    if as_json:
        out = result.to_dict()
        out["host"] = cfg.node_name or socket.gethostname()
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(f"{result.outcome.value}: {result.message}")
    return EXIT_ERROR if result.outcome.value == "error" else EXIT_OK
