"""What the side jobs report: the storage probe's results and the data-safety audit's verdicts.

Frozen values, no I/O: the probe and the audit (``probe.py``, ``audit.py``, through their adapters
in ``systems/``) produce them, the exporter renders them (``exporter/probe_collector.py``,
``exporter/audit_collector.py``) without reaching into ``systems/``. Each is handed over by one
reference (``LatestProbe``, ``AuditJob.latest``), so a scrape never waits for a job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

# --------------------------------------------------------------------------------------------
# The storage probe
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LunProbe:
    lun: int
    ok: bool
    seconds: float  # from the start of this LUN's commands to its last answer
    error: str = ""
    vendor: str = ""
    product: str = ""
    block_size: int = 0
    block0_crc32: int = 0  # of the block read: the same on both hosts' probes when all is well


@dataclass(frozen=True)
class ProbeResult:
    """One run: the portal, when it started, how long it took, and each LUN's outcome. ``error``
    is set when the run failed before or outside the LUNs (connect, login, logout); the LUNs not
    reached then read as failed with that error."""

    portal: str
    started: float  # unix time
    seconds: float
    luns: Tuple[LunProbe, ...]
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and all(lun.ok for lun in self.luns)

    def sentence(self) -> str:
        if self.ok:
            return (
                f"storage probe of {self.portal}: {len(self.luns)} LUN(s) read in "
                f"{self.seconds * 1000:.0f} ms"
            )
        failed = [f"LUN {lun.lun}: {lun.error}" for lun in self.luns if not lun.ok]
        return f"storage probe of {self.portal} failed: " + "; ".join(
            ([self.error] if self.error else []) + failed[:3]
        )


DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class ProbeHistory:
    """What the exporter renders: the last result, plus counters since the controller started
    (runs and failures per LUN, a histogram of the whole run's duration)."""

    last: Optional[ProbeResult] = None
    observer: str = ""
    runs: Dict[int, int] = field(default_factory=dict)
    failures: Dict[int, int] = field(default_factory=dict)
    bucket_counts: Tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)  # cumulative; +Inf last
    duration_sum: float = 0.0

    def add(self, result: ProbeResult) -> "ProbeHistory":
        runs, failures = dict(self.runs), dict(self.failures)
        for lun in result.luns:
            runs[lun.lun] = runs.get(lun.lun, 0) + 1
            failures[lun.lun] = failures.get(lun.lun, 0) + (not lun.ok)
        counts = tuple(
            n + (result.seconds <= b)
            for n, b in zip(self.bucket_counts, DURATION_BUCKETS + (float("inf"),))
        )
        return ProbeHistory(
            result, self.observer, runs, failures, counts, self.duration_sum + result.seconds
        )


class LatestProbe:
    """Single-reference hand-over, like ``collector.LatestSnapshot``: never a lock."""

    def __init__(self, observer: str) -> None:
        self._history = ProbeHistory(observer=observer)

    def publish(self, result: ProbeResult) -> ProbeHistory:
        self._history = self._history.add(result)
        return self._history

    def get(self) -> ProbeHistory:
        return self._history


# --------------------------------------------------------------------------------------------
# The data-safety audit
# --------------------------------------------------------------------------------------------

CHECKS = ("drbd", "lvm", "multipath")

# after-sb-* policies that throw one side's writes away without an operator (drbd.conf(5)).
DISCARDING = {
    "discard-younger-primary",
    "discard-older-primary",
    "discard-least-changes",
    "discard-secondary",
    "call-pri-lost-after-sb",
    "violently-as0p",
}
# "discard-zero-changes" and "consensus" keep the side that has changes; "disconnect" keeps both.
# discard-node-NAME (8.4) / discard-node-N always discards the named node's changes.
SAFE_FENCING = {"resource-only", "resource-and-stonith"}


@dataclass(frozen=True)
class DrbdSafety:
    """What the audit judges in one resource's running configuration."""

    resource: str
    protocol: str  # "A" | "B" | "C" ("C" when not printed: the default of 8.4 and 9)
    after_sb: Tuple[Tuple[str, str], ...]  # (("0pri", "disconnect"), ...) as configured
    fencing: str  # "dont-care" when not printed
    devices: Tuple[str, ...] = ()  # /dev/drbdN of its volumes
    disks: Tuple[str, ...] = ()  # their backing devices
    fence_handler: Optional[bool] = None  # from drbdadm dump; None when not known
    notes: Tuple[str, ...] = field(default=())

    @property
    def discarding(self) -> Tuple[Tuple[str, str], ...]:
        return tuple(
            (k, v) for k, v in self.after_sb if v in DISCARDING or v.startswith("discard-node-")
        )

    @property
    def fenced(self) -> bool:
        return self.fencing in SAFE_FENCING and self.fence_handler is not False


@dataclass(frozen=True)
class FilterVerdict:
    device: str
    kind: str  # "drbd" | "backing"
    rejected: bool


def drbd_kernel_names(devices: Sequence[str]) -> List[str]:
    """ "/dev/drbd0" -> "drbd0" (multipath matches devnode against the kernel name)."""
    return [d.rsplit("/", 1)[-1] for d in devices if re.fullmatch(r"/dev/drbd\d+", d)]


@dataclass(frozen=True)
class AuditResult:
    started: float  # unix time
    drbd: Tuple[DrbdSafety, ...] = ()
    lvm: Tuple[FilterVerdict, ...] = ()
    multipath_configured: Optional[bool] = None  # None: not known (the check failed)
    multipath_unprotected: Tuple[str, ...] = ()  # kernel names multipath would take
    errors: Dict[str, str] = field(default_factory=dict)  # check -> why it could not run

    def findings(self) -> List[str]:
        """One sentence per problem, for the log."""
        out = []
        for d in self.drbd:
            if d.protocol != "C":
                out.append(f"DRBD {d.resource} replicates with protocol {d.protocol}, not C")
            for policy, value in d.discarding:
                out.append(
                    f"DRBD {d.resource}: after-sb-{policy} {value} discards data automatically"
                )
            if not d.fenced:
                out.append(
                    f"DRBD {d.resource}: no fencing (fencing {d.fencing}"
                    + (", no fence-peer handler" if d.fence_handler is False else "")
                    + ")"
                )
        for v in self.lvm:
            if not v.rejected:
                out.append(f"the LVM filter does not reject {v.device} ({v.kind})")
        for name in self.multipath_unprotected:
            out.append(f"multipath would take /dev/{name}")
        return out
