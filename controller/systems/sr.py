"""The iSCSI storage repositories of the pool, seen and repaired through XenAPI.

Both hosts reach their VM disks through an ``lvmoiscsi`` SR pointed at the VIP. Each SR has one
PBD per host; ``currently_attached`` says whether that host has the SR plugged. After a failover
the new master plugs the PBDs that came loose (docs/design.md §4 step 4). Everything goes
through the pool master: the shared ``XenApiClient`` follows ``HOST_IS_SLAVE`` to it.

``observe`` reads the pool in three calls (``SR.get_all_records``, ``PBD.get_all_records``,
``host.get_all_records``) rather than one call per object: every call may cost up to the XenAPI
timeout when xapi is sick. XenAPI being unreachable is an observation (``reachable=False``), not
an exception. Unknown record fields are ignored; records that are not what XenAPI documents are
skipped and reported in ``error`` with a quote.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from ..model import PbdState, SrObservation, SrState, StepResult
from .xenapi import XenApiClient, XenApiError

log = logging.getLogger(__name__)

ISCSI_SR_TYPES = ("lvmoiscsi",)


def build_sr_observation(
    sr_records: Any,
    pbd_records: Any,
    host_records: Any,
    sr_types: Iterable[str] = ISCSI_SR_TYPES,
) -> SrObservation:
    """Pure: the answers of the three ``get_all_records`` calls -> SrObservation."""
    problems: List[str] = []
    srs_by_ref = _records("SR", sr_records, problems)
    pbds_by_ref = _records("PBD", pbd_records, problems)
    hosts_by_ref = _records("host", host_records, problems)
    wanted = set(sr_types)

    srs: List[SrState] = []
    for ref, sr in srs_by_ref.items():
        if sr.get("type") not in wanted:
            continue
        pbd_refs = sr.get("PBDs", [])
        if not isinstance(pbd_refs, list):
            problems.append(f"SR {sr.get('uuid', ref)} has PBDs {pbd_refs!r:.60}")
            pbd_refs = []
        pbds: List[PbdState] = []
        for pbd_ref in pbd_refs:
            pbd = pbds_by_ref.get(pbd_ref)
            if pbd is None:  # destroyed between the two calls
                log.debug("SR %s lists unknown PBD %s", sr.get("uuid", ref), pbd_ref)
                continue
            pbds.append(
                PbdState(
                    uuid=str(pbd.get("uuid", pbd_ref)),
                    host=_host_label(pbd.get("host"), hosts_by_ref),
                    attached=_bool(pbd.get("currently_attached")),
                )
            )
        srs.append(
            SrState(
                uuid=str(sr.get("uuid", ref)),
                name=str(sr.get("name_label", "")),
                type=str(sr.get("type")),
                pbds=tuple(sorted(pbds, key=lambda p: (p.host, p.uuid))),
            )
        )
    srs.sort(key=lambda s: (s.name, s.uuid))
    return SrObservation(srs=tuple(srs), reachable=True, error="; ".join(problems) or None)


def _records(kind: str, value: Any, problems: List[str]) -> Dict[str, Mapping[str, Any]]:
    if not isinstance(value, dict):
        problems.append(f"cannot read {kind}.get_all_records: {value!r:.80}")
        return {}
    out: Dict[str, Mapping[str, Any]] = {}
    for ref, record in value.items():
        if isinstance(record, dict):
            out[str(ref)] = record
        else:
            problems.append(f"cannot read {kind} record {ref}: {record!r:.60}")
    return out


def _host_label(ref: Any, hosts: Mapping[str, Mapping[str, Any]]) -> str:
    host = hosts.get(str(ref))
    if host is None:
        return str(ref)
    return str(host.get("name_label") or host.get("hostname") or host.get("uuid") or ref)


def _bool(value: Any) -> bool:
    # XML-RPC carries a real boolean; be lenient with the string forms other bindings use.
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


class SrAdapter:
    """SRs of the configured types and their PBDs; plugs PBDs through the pool master."""

    def __init__(self, client: XenApiClient, sr_types: Sequence[str] = ISCSI_SR_TYPES) -> None:
        self.client = client
        self.sr_types = tuple(sr_types)

    def observe(self) -> SrObservation:
        try:
            srs = self.client.call("SR.get_all_records")
            pbds = self.client.call("PBD.get_all_records")
            hosts = self.client.call("host.get_all_records")
        except XenApiError as exc:
            return SrObservation(reachable=False, error=str(exc))
        try:
            return build_sr_observation(srs, pbds, hosts, self.sr_types)
        except Exception as exc:  # never raises: answers we cannot read are an error value
            log.exception("reading the SRs failed")
            return SrObservation(
                reachable=True, error=f"cannot read the SRs: {type(exc).__name__}: {exc}"
            )

    def plug(self, pbd_uuids: Sequence[str]) -> StepResult:
        """``PBD.plug`` each PBD (a no-op in xapi for one already attached).

        An API refusal for one PBD does not stop the others; a timeout or an unreachable xapi
        stops the whole step (the next PBD would only wait as long again).
        """
        if not pbd_uuids:
            return StepResult(ok=True, message="no PBDs to plug")
        plugged: List[str] = []
        failed: List[str] = []
        stopped: Optional[XenApiError] = None
        for uuid in pbd_uuids:
            try:
                ref = self.client.call("PBD.get_by_uuid", uuid)
                self.client.call("PBD.plug", ref)
            except XenApiError as exc:
                if exc.details:
                    failed.append(f"PBD {uuid}{self._on_host(uuid)}: {exc.description}")
                    continue
                stopped = exc
                break
            plugged.append(uuid)
        if stopped is None and not failed:
            return StepResult(ok=True, message=f"plugged PBD {', '.join(plugged)}")
        parts = [f"plugged {len(plugged)} of {len(pbd_uuids)} PBDs"]
        parts.extend(failed)
        if stopped is not None:
            parts.append(f"stopped: {stopped}")
        reason = "xenapi_unreachable" if stopped is not None else "pbd_plug_failed"
        if stopped is not None and stopped.timed_out:
            reason = "xenapi_timeout"
        return StepResult(ok=False, message="; ".join(parts), reason=reason)

    def _on_host(self, pbd_uuid: str) -> str:
        """`` on node2`` for a failure message; best effort, empty when it cannot be told."""
        try:
            ref = self.client.call("PBD.get_by_uuid", pbd_uuid)
            host = self.client.call("PBD.get_host", ref)
            return f" on {self.client.call('host.get_name_label', host)}"
        except XenApiError:
            return ""
