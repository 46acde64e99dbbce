"""Renders the storage probe's results (``controller/probe.py``) as metric families.

A collector of its own, next to ``SnapshotCollector``: the probe runs on its own job and clock,
not in the cycle, so its figures are not part of a cycle's snapshot. Like the snapshot, the
history is one frozen value read once per scrape; nothing here waits for a probe in flight.

Before the first run only nothing is exported (no state is invented). Then::

    iscsi_ha_storage_probe_success{observer, lun}              gauge
        1 when the last run logged in and read block 0 of that LUN through the VIP
    iscsi_ha_storage_probe_timestamp_seconds{observer}        gauge
        unix time the last run started
    iscsi_ha_storage_probes_total{observer, lun}               counter
        runs that tried that LUN since the controller started
    iscsi_ha_storage_probe_failures_total{observer, lun}       counter
        of those, the ones that could not read it (the SLO's bad events)
    iscsi_ha_storage_probe_duration_seconds{observer}          histogram
        duration of whole runs (connect, login, every LUN, logout)

``observer`` is this host's node name: the alert rules combine the two hosts' views.

A sample::

    iscsi_ha_storage_probe_success{lun="1",observer="node2"} 1.0
    iscsi_ha_storage_probes_total{lun="1",observer="node2"} 7200.0
    iscsi_ha_storage_probe_failures_total{lun="1",observer="node2"} 3.0
    iscsi_ha_storage_probe_duration_seconds_bucket{le="0.005",observer="node2"} 7105.0
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ..controller.systems.iscsi_probe import DURATION_BUCKETS, ProbeHistory

P = "iscsi_ha_storage_probe"

METRICS = (
    (P + "_success", "gauge", ("observer", "lun")),
    (P + "_timestamp_seconds", "gauge", ("observer",)),
    ("iscsi_ha_storage_probes_total", "counter", ("observer", "lun")),
    (P + "_failures_total", "counter", ("observer", "lun")),
    (P + "_duration_seconds", "histogram", ("observer",)),
)


def probe_families(h: ProbeHistory) -> List:
    if h.last is None:
        return []
    obs = h.observer
    success = GaugeMetricFamily(
        P + "_success", "1 when the last storage probe from this host logged in to the target "
        "at the VIP and read block 0 of the LUN, 0 when it could not.", labels=["observer", "lun"])
    for lun in h.last.luns:
        success.add_metric([obs, str(lun.lun)], float(lun.ok))
    stamp = GaugeMetricFamily(P + "_timestamp_seconds", "Unix time the last storage probe "
                              "started.", labels=["observer"])
    stamp.add_metric([obs], h.last.started)
    runs = CounterMetricFamily("iscsi_ha_storage_probes", "Storage probes that tried the LUN "
                               "since the controller started.", labels=["observer", "lun"])
    fails = CounterMetricFamily(P + "_failures", "Storage probes that could not read the LUN "
                                "since the controller started.", labels=["observer", "lun"])
    for lun in sorted(h.runs):
        runs.add_metric([obs, str(lun)], float(h.runs[lun]))
        fails.add_metric([obs, str(lun)], float(h.failures.get(lun, 0)))
    hist = HistogramMetricFamily(P + "_duration_seconds", "Duration of whole storage probes "
                                 "(connect, login, every LUN, logout).", labels=["observer"])
    buckets = [(floatToGoString(b), float(n)) for b, n in zip(DURATION_BUCKETS, h.bucket_counts)]
    buckets.append(("+Inf", float(h.bucket_counts[-1])))
    hist.add_metric([obs], buckets, h.duration_sum)
    return [success, stamp, runs, fails, hist]


class ProbeCollector(Collector):
    def __init__(self, get_history: Callable[[], Optional[ProbeHistory]],
                 registry: Optional[CollectorRegistry] = None) -> None:
        self._get = get_history
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable:
        out = []
        for name, kind, _ in METRICS:
            cls = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily,
                   "histogram": HistogramMetricFamily}[kind]
            out.append(cls(name[:-6] if kind == "counter" else name, ""))
        return out

    def collect(self) -> Iterator:
        h = self._get()
        return iter(probe_families(h) if h is not None else [])
