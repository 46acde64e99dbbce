"""The storage probe as a job of the daemon: what the VMs' hosts get, measured from this host.

Every ``interval`` seconds, on its own scheduler job (never inside a cycle, never inside a
scrape), ``systems/iscsi_probe.run_probe`` logs in to the target at the VIP and reads one block of
each LUN, all within ``timeout``. The result is handed to the exporter through ``LatestProbe``
(one reference, no lock), and logged only when it changes from working to failing or back, so a
storage outage writes two lines, not one per second.

The standby host is the natural outside observer (it reaches the VIP over the network, as any
XenServer host does); the Primary probes itself through the VIP too, which shows a target that
answers TCP but not SCSI. Both series carry the observer's name, and the alert rules combine them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Tuple

from .config import Config
from .report import LatestProbe, ProbeHistory, ProbeResult
from .systems.iscsi_probe import DEFAULT_PORT, run_probe

log = logging.getLogger("iscsi_ha.probe")


@dataclass(frozen=True)
class ProbeSettings:
    host: str  # the VIP, bare ("10.10.10.3")
    target: str  # the IQN
    luns: Tuple[int, ...]
    port: int = DEFAULT_PORT
    interval: float = 5.0
    timeout: float = 2.0
    initiator: str = "iqn.2024-01.org.iscsi-ha:probe"


def settings_from_config(cfg: Config) -> Optional[ProbeSettings]:
    """The probe of a configuration (``probe:``), or None when ``probe.enabled`` is false: the
    VIP on ``probe.port``, our IQN, every configured LUN; the interval defaults to the cycle's,
    and the timeout never exceeds it (a run always ends before the next is due)."""
    p = cfg.probe
    if not p.enabled:
        return None
    interval = p.interval or cfg.interval
    node = "".join(c if c.isalnum() or c in "-." else "-" for c in cfg.node_name.lower())
    return ProbeSettings(
        host=cfg.vip.bare_address,
        target=cfg.target.iqn,
        luns=tuple(lun.number for lun in cfg.target.luns),
        port=p.port,
        interval=interval,
        timeout=min(p.timeout, interval),
        initiator=f"iqn.2024-01.org.iscsi-ha:probe.{node or 'host'}",
    )


def _step(result: ProbeResult) -> str:
    """The step that failed ("connect", "login", "READ", ...); "" when it worked."""
    if result.ok:
        return ""
    text = result.error or next((lun.error for lun in result.luns if not lun.ok), "")
    return text.split(":", 1)[0].split(" (", 1)[0].strip()


class ProbeJob:
    """Runs the probe and publishes the result; ``run()`` never raises (it is a scheduler job)."""

    def __init__(self, settings: ProbeSettings, observer: str) -> None:
        self.settings = settings
        self.latest = LatestProbe(observer)
        self._last_state: Optional[Tuple[bool, str]] = None

    def run(self) -> ProbeResult:
        s = self.settings
        result = run_probe(
            s.host, s.target, s.luns, port=s.port, timeout=s.timeout, initiator=s.initiator
        )
        self.latest.publish(result)
        # Logged when it starts failing, when the failing step changes (connect -> login ...)
        # and when it recovers: an outage writes a few lines, not one per interval.
        state = (result.ok, _step(result))
        if state != self._last_state:
            level = logging.INFO if result.ok else logging.WARNING
            if self._last_state is None and result.ok:
                level = logging.DEBUG
            log.log(level, "%s", result.sentence())
            self._last_state = state
        return result

    def history(self) -> ProbeHistory:
        return self.latest.get()
