"""The legacy status file ``/etc/iscsi-ha/state/status``, rewritten after every cycle.

HA-Lizard reads this file's *age* before it fences the peer (a fresh file means iscsi-ha is alive),
and operators are used to reading it. The lines keep the original tool's wording::

    HOST ROLE: MASTER
    DRBD ROLE: iscsi1=Primary
    DRBD CONNECTION: iscsi1 in Connected state
    DRBD DISK: iscsi1=UpToDate/UpToDate
    ISCSI TARGET: serving (1 LUN)
    VIRTUAL IP: 10.10.10.3 is local
    MANUAL MODE: disabled
    LAST CYCLE: ok: no action: host is pool master
"""

from __future__ import annotations

import time
from typing import List

from .model import CycleResult, ManualMode
from .state import atomic_write


def render_status(cycle: CycleResult, manual: ManualMode, now: float) -> str:
    lines: List[str] = []
    obs = cycle.observation
    if obs is None:
        lines.append("HOST ROLE: UNKNOWN")
    else:
        lines.append(f"HOST ROLE: {obs.pool.role.value.upper()}")
        for res in obs.resources:
            if not res.configured:
                lines.append(f"DRBD ROLE: {res.name}=Unconfigured")
                continue
            lines.append(f"DRBD ROLE: {res.name}={res.role}")
            lines.append(f"DRBD CONNECTION: {res.name} in {res.connection} state")
            lines.append(f"DRBD DISK: {res.name}={res.disk}/{res.peer_disk}")
            if res.split_brain:
                lines.append(f"DRBD SPLIT BRAIN: {res.name} needs manual recovery")
        t = obs.target
        if t.serving:
            target = f"serving ({t.luns} LUN{'s' if t.luns != 1 else ''})"
        elif t.daemon_running:
            target = "standby (daemon running, no target)"
        else:
            target = "stopped"
        lines.append(f"ISCSI TARGET: {target}")
        address = obs.vip.address.split("/")[0]
        lines.append(f"VIRTUAL IP: {address} is {'local' if obs.vip.local else 'not local'}")
    lines.append(f"MANUAL MODE: {'enabled' if manual.enabled else 'disabled'}")
    lines.append(f"LAST CYCLE: {cycle.outcome.value}: {cycle.message}")
    lines.append(f"UPDATED: {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(now))}")
    return "\n".join(lines) + "\n"


def write_status(path: str, cycle: CycleResult, manual: ManualMode, now: float) -> None:
    atomic_write(path, render_status(cycle, manual, now))
