"""Which of the pool's VMs keep their disks on this target, and where they run (XenAPI).

For the split-brain evidence (``controller/splitbrain.py``): the VMs whose virtual disks live on
an iSCSI SR of this target write through the VIP, to whichever host serves it. The chain in
XenAPI is VM -> VBD -> VDI -> SR -> PBD, whose ``device_config`` names the target
(``targetIQN``, ``target``). Read in six ``get_all_records`` calls, like the SR adapter, never
one call per object: every call may cost the XenAPI timeout when xapi is sick. The control
domain, templates and snapshots are not VMs that write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .xenapi import XenApiError

NULL_REF = "OpaqueRef:NULL"


@dataclass(frozen=True)
class VmUse:
    name: str
    power_state: str  # XenAPI's word: Running, Halted, Paused, Suspended
    host: Optional[str]  # resident_on's name label; None when not running
    disks: int  # VBDs on this target's SRs

    def describe(self) -> str:
        where = f" on {self.host}" if self.host else ""
        return f"{self.name} ({self.power_state}{where}, {self.disks} disk(s))"


def _table(value: Any) -> Dict[str, Mapping[str, Any]]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, dict)}


def vms_on_target(
    iqn: str, srs: Any, pbds: Any, vdis: Any, vbds: Any, vms: Any, hosts: Any
) -> Tuple[VmUse, ...]:
    """Pure: the answers of the six ``get_all_records`` calls -> the VMs with disks on an SR
    whose PBDs point at ``iqn``, running ones first."""
    sr_t, pbd_t, vdi_t = _table(srs), _table(pbds), _table(vdis)
    vbd_t, vm_t, host_t = _table(vbds), _table(vms), _table(hosts)
    ours = set()
    for ref, sr in sr_t.items():
        for pbd_ref in sr.get("PBDs") or []:
            config = (pbd_t.get(str(pbd_ref)) or {}).get("device_config") or {}
            if isinstance(config, dict) and config.get("targetIQN") == iqn:
                ours.add(ref)
                break
    disks: Dict[str, int] = {}
    for vbd in vbd_t.values():
        vdi = vdi_t.get(str(vbd.get("VDI")))
        if vdi is not None and str(vdi.get("SR")) in ours:
            vm = str(vbd.get("VM"))
            disks[vm] = disks.get(vm, 0) + 1
    out: List[VmUse] = []
    for ref, n in disks.items():
        rec = vm_t.get(ref)
        if (
            rec is None
            or rec.get("is_control_domain")
            or rec.get("is_a_template")
            or rec.get("is_a_snapshot")
        ):
            continue
        host_ref = str(rec.get("resident_on") or NULL_REF)
        host = host_t.get(host_ref)
        out.append(
            VmUse(
                str(rec.get("name_label") or rec.get("uuid") or ref),
                str(rec.get("power_state") or "unknown"),
                str(host.get("name_label")) if host else None,
                n,
            )
        )
    out.sort(key=lambda v: (v.power_state != "Running", v.name))
    return tuple(out)


def read_vms(client: Any, iqn: str) -> Tuple[Optional[Tuple[VmUse, ...]], Optional[str]]:
    """(VMs, None) or (None, why not) through a ``XenApiClient``."""
    answers = []
    try:
        for cls in ("SR", "PBD", "VDI", "VBD", "VM", "host"):
            answers.append(client.call(f"{cls}.get_all_records"))
    except XenApiError as exc:
        return None, str(exc)
    return vms_on_target(iqn, *answers), None


def describe_all(vms: Sequence[VmUse]) -> Tuple[str, ...]:
    return tuple(v.describe() for v in vms)
