"""The data-safety audit: the settings that decide whether a failover loses data, checked every
few minutes (``audit.interval``, 5 minutes by default) on a job of its own, never in a cycle.

What it reads, and what it judges (each finding is a metric and an alert, docs/runbook.md):

* ``drbdsetup show RES`` - what the kernel runs: replication **protocol C** (a write is
  acknowledged once both disks have it; A and B lose acknowledged writes when the Primary dies),
  **after-sb-0pri/1pri/2pri** policies that resolve a split brain by discarding one side's writes
  without an operator, and **fencing** (``resource-only`` or ``resource-and-stonith``);
* ``drbdadm dump RES`` - what the files say: the ``fence-peer`` handler that fencing calls (the
  kernel never sees handlers);
* ``lvmconfig`` - the LVM ``filter``/``global_filter``: ``/dev/drbdN`` and the backing devices must
  be rejected (``systems/lvm.py``);
* ``/etc/multipath.conf`` (+ ``conf.d``) - multipath must not take the DRBD devices
  (``systems/multipath.py``).

The target's write cache and the LUN identity are checked every cycle already (they are part of
the target observation: ``iscsi_ha_target_write_cache_enabled``, ``iscsi_ha_lun_info``), and so is
a stalled resync (``iscsi_ha_drbd_out_of_sync_bytes``).

``assess()`` is pure: command outputs in, an ``AuditResult`` out. ``AuditJob.run()`` runs the
commands through the runner (each with its timeout) and publishes the result by one reference,
like the probe. A check whose command fails is reported as an error of that check, never as a
finding: a missing ``lvmconfig`` does not say the filter is wrong.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .config import Config
from .files import read_capped
from .report import CHECKS, AuditResult, DrbdSafety, FilterVerdict
from .systems.drbd.config_show import DrbdConfigError, drbd_safety
from .systems.lvm import (
    LvmParseError,
    judge_filters,
    lvmconfig_argv,
    parse_lvmconfig,
)
from .systems.multipath import DEFAULT_CONF_DIR, MultipathParseError, parse_blacklists, unprotected

log = logging.getLogger("iscsi_ha.audit")


def _drbd(
    resources: Sequence[str],
    show: Dict[str, str],
    dump: Dict[str, Optional[str]],
    errors: Dict[str, str],
) -> List[DrbdSafety]:
    out = []
    for name in resources:
        if name not in show:
            continue
        try:
            out.append(drbd_safety(show[name], name, dump.get(name)))
        except DrbdConfigError as exc:
            errors["drbd"] = f"{name}: {exc}"
    return out


def assess(
    resources: Sequence[str],
    started: float,
    *,
    show: Dict[str, str],
    dump: Dict[str, Optional[str]],
    lvmconfig: Optional[str],
    multipath: Optional[Sequence[str]],
    errors: Dict[str, str],
) -> AuditResult:
    """Pure: the outputs (None = that command/file could not be read; ``errors`` says why)."""
    errors = dict(errors)
    drbd = _drbd(resources, show, dump, errors)
    devices = [dev for d in drbd for dev in d.devices]
    backing = [disk for d in drbd for disk in d.disks]
    lvm: List[FilterVerdict] = []
    if lvmconfig is not None and "drbd" not in errors:
        try:
            lvm = judge_filters(parse_lvmconfig(lvmconfig), devices, backing)
        except LvmParseError as exc:
            errors["lvm"] = str(exc)
    mp_conf: Optional[bool] = None
    mp_bad: List[str] = []
    if multipath is not None:
        mp_conf = bool(multipath)
        try:
            mp_bad = unprotected(parse_blacklists(multipath) if multipath else None, devices)
        except MultipathParseError as exc:
            errors["multipath"] = str(exc)
            mp_conf = None
    return AuditResult(started, tuple(drbd), tuple(lvm), mp_conf, tuple(mp_bad), errors)


@dataclass(frozen=True)
class AuditSettings:
    resources: Tuple[str, ...]
    interval: float = 300.0
    drbdsetup: str = "drbdsetup"
    drbdadm: str = "drbdadm"
    lvmconfig: str = "lvmconfig"
    multipath_conf: str = "/etc/multipath.conf"
    multipath_conf_dir: str = DEFAULT_CONF_DIR
    timeout: float = 10.0


def settings_from_config(cfg: Config) -> Optional[AuditSettings]:
    a = cfg.audit
    if not a.enabled:
        return None
    return AuditSettings(
        resources=tuple(cfg.resources),
        interval=a.interval,
        drbdsetup=cfg.drbd.drbdsetup,
        drbdadm=cfg.drbd.drbdadm,
        lvmconfig=a.lvmconfig,
        multipath_conf=a.multipath_conf,
        multipath_conf_dir=os.path.join(
            os.path.dirname(a.multipath_conf) or "/", "multipath", "conf.d"
        ),
        timeout=cfg.command_timeout,
    )


def read_multipath(conf: str, conf_dir: str) -> List[str]:
    """The texts of multipath.conf and its conf.d files; [] when there is no configuration."""
    paths = ([conf] if os.path.exists(conf) else []) + sorted(
        glob.glob(os.path.join(conf_dir, "*.conf"))
    )[:64]
    return [read_capped(p, 1 << 20).decode("utf-8", "replace") for p in paths]


class AuditJob:
    """Runs the audit through ``runner`` and publishes the result; never raises."""

    def __init__(
        self, settings: AuditSettings, runner, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.clock = clock
        self._last: Optional[AuditResult] = None
        self._logged: Tuple[str, ...] = ()

    def latest(self) -> Optional[AuditResult]:
        return self._last

    def run(self) -> AuditResult:
        s = self.settings
        started = self.clock()
        errors: Dict[str, str] = {}
        show: Dict[str, str] = {}
        dump: Dict[str, Optional[str]] = {}
        try:
            for name in s.resources:
                res = self.runner.run([s.drbdsetup, "show", name], timeout=s.timeout)
                if res.ok:
                    show[name] = res.stdout
                else:  # not up (yet): nothing to judge for this resource
                    errors.setdefault(
                        "drbd",
                        f"{res.command} rc {res.rc}: {(res.stderr or res.stdout).strip()[:200]}",
                    )
                    continue
                res = self.runner.run([s.drbdadm, "dump", name], timeout=s.timeout)
                dump[name] = res.stdout if res.ok else None
            res = self.runner.run(lvmconfig_argv(s.lvmconfig), timeout=s.timeout)
            lvmconfig = res.stdout if res.ok else None
            if not res.ok:
                errors["lvm"] = f"{res.command} rc {res.rc}: {res.stderr.strip()[:200]}"
            try:
                multipath: Optional[List[str]] = read_multipath(
                    s.multipath_conf, s.multipath_conf_dir
                )
            except OSError as exc:
                multipath = None
                errors["multipath"] = str(exc)
            result = assess(
                s.resources,
                started,
                show=show,
                dump=dump,
                lvmconfig=lvmconfig,
                multipath=multipath,
                errors=errors,
            )
        except Exception as exc:  # a bug must not end the job; the errors say so
            log.exception("the data-safety audit failed")
            result = AuditResult(
                started, errors={c: f"{type(exc).__name__}: {exc}" for c in CHECKS}
            )
        self._last = result
        findings = tuple(result.findings())
        if findings != self._logged:  # logged when they change, not every few minutes
            for line in findings:
                log.warning("data-safety audit: %s", line)
            if not findings:
                log.info("data-safety audit: no findings")
            self._logged = findings
        return result
