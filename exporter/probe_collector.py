"""Renders the storage probe's results (``controller/probe.py``) as metric families.

A collector of its own, next to ``SnapshotCollector``: the probe runs on its own job and clock,
not in the cycle, so its figures are not part of a cycle's snapshot. Like the snapshot, the
history is one frozen value read once per scrape; nothing here waits for a probe in flight.
The metrics are the catalogue's entries with ``source="probe"`` (``exporter/catalogue.py``);
before the first run nothing is exported (no state is invented).

A sample (``observer`` is this host's node name)::

    iscsi_ha_storage_probe_success{lun="1",observer="node2"} 1.0
    iscsi_ha_storage_probe_timestamp_seconds{observer="node2"} 1.7e+09
    iscsi_ha_storage_probes_total{lun="1",observer="node2"} 7200.0
    iscsi_ha_storage_probe_failures_total{lun="1",observer="node2"} 3.0
    iscsi_ha_storage_probe_duration_seconds_bucket{le="0.005",observer="node2"} 7105.0
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Optional

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ..controller.report import DURATION_BUCKETS, ProbeHistory
from . import catalogue

DEFS = tuple(m for m in catalogue.CATALOGUE if m.source == "probe")
# (name as exposed, type in the text format, labels), like collector.METRICS.
METRICS = tuple((m.name, m.exposed_kind, m.labels) for m in DEFS)


def probe_families(h: ProbeHistory) -> List[Metric]:
    if h.last is None:
        return []
    obs = h.observer
    success = catalogue.gauge("storage_probe_success")
    for probe in h.last.luns:
        success.add_metric([obs, str(probe.lun)], float(probe.ok))
    stamp = catalogue.gauge("storage_probe_timestamp_seconds")
    stamp.add_metric([obs], h.last.started)
    runs = catalogue.counter("storage_probes_total")
    fails = catalogue.counter("storage_probe_failures_total")
    for lun in sorted(h.runs):
        runs.add_metric([obs, str(lun)], float(h.runs[lun]))
        fails.add_metric([obs, str(lun)], float(h.failures.get(lun, 0)))
    m = catalogue.get("storage_probe_duration_seconds")
    hist = HistogramMetricFamily(m.family_name, m.help, labels=list(m.labels))
    buckets = [(floatToGoString(b), float(n)) for b, n in zip(DURATION_BUCKETS, h.bucket_counts)]
    buckets.append(("+Inf", float(h.bucket_counts[-1])))
    hist.add_metric([obs], buckets, h.duration_sum)
    return [success, stamp, runs, fails, hist]


class ProbeCollector(Collector):
    def __init__(
        self,
        get_history: Callable[[], Optional[ProbeHistory]],
        registry: Optional[CollectorRegistry] = None,
    ) -> None:
        self._get = get_history
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return [catalogue.empty(m) for m in DEFS]

    def collect(self) -> Iterator[Metric]:
        h = self._get()
        return iter(probe_families(h) if h is not None else [])
