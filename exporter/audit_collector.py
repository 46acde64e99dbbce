"""Renders the data-safety audit (``controller/audit.py``) as metric families.

Like the storage probe, the audit runs on its own job (every ``audit.interval``), so it has its
own collector reading one frozen ``AuditResult`` per scrape. The metrics are the catalogue's
entries with ``source="audit"`` (``exporter/catalogue.py``); nothing is exported before the first
audit, and a check that could not run exports no verdicts, only ``iscsi_ha_audit_error``. A
sample::

    iscsi_ha_audit_error{check="lvm"} 0.0
    iscsi_ha_drbd_replication_protocol{protocol="C",resource="iscsi1"} 1.0
    iscsi_ha_drbd_split_brain_policy_discards{policy="1pri",resource="iscsi1"} 0.0
    iscsi_ha_drbd_fencing{resource="iscsi1"} 1.0
    iscsi_ha_lvm_filter_rejects{device="/dev/drbd0",kind="drbd"} 1.0
    iscsi_ha_multipath_blacklists_drbd{device="drbd0"} 1.0
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Optional

from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..controller.report import CHECKS, AuditResult, drbd_kernel_names
from . import catalogue

DEFS = tuple(m for m in catalogue.CATALOGUE if m.source == "audit")
METRICS = tuple((m.name, m.exposed_kind, m.labels) for m in DEFS)
PROTOCOLS = ("A", "B", "C")


def audit_families(r: AuditResult) -> List[Metric]:
    g = catalogue.gauge
    out: List[Metric] = [g("audit_timestamp_seconds", r.started)]
    err = g("audit_error")
    for check in CHECKS:
        err.add_metric([check], float(check in r.errors))
    out.append(err)
    proto, discards, fencing = (
        g("drbd_replication_protocol"),
        g("drbd_split_brain_policy_discards"),
        g("drbd_fencing"),
    )
    for d in r.drbd:
        for p in PROTOCOLS + ((d.protocol,) if d.protocol not in PROTOCOLS else ()):
            proto.add_metric([d.resource, p], float(p == d.protocol))
        bad = {policy for policy, _ in d.discarding}
        for policy, _value in d.after_sb:
            discards.add_metric([d.resource, policy], float(policy in bad))
        fencing.add_metric([d.resource], float(d.fenced))
    out += [proto, discards, fencing]
    lvm = g("lvm_filter_rejects")
    for v in r.lvm:
        lvm.add_metric([v.device, v.kind], float(v.rejected))
    out.append(lvm)
    mp = g("multipath_blacklists_drbd")
    if r.multipath_configured:
        bad = set(r.multipath_unprotected)
        for name in drbd_kernel_names([dev for d in r.drbd for dev in d.devices]):
            mp.add_metric([name], float(name not in bad))
    out.append(mp)
    return out


class AuditCollector(Collector):
    def __init__(
        self,
        get_result: Callable[[], Optional[AuditResult]],
        registry: Optional[CollectorRegistry] = None,
    ) -> None:
        self._get = get_result
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return [catalogue.empty(m) for m in DEFS]

    def collect(self) -> Iterator[Metric]:
        r = self._get()
        return iter(audit_families(r) if r is not None else [])
