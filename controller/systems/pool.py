"""The pool role of this host: master, slave or unknown.

xapi writes ``/etc/xensource/pool.conf`` on every host of a pool: ``master`` on the master,
``slave:<master address>`` on the others. It is the one input that decides which host carries the
storage, so reading it is deliberately unforgiving: anything that is not exactly one of those two
forms (empty, missing, unreadable, ``broken`` — what xapi writes while a pool join fails — or
garbage) is **unknown**, and the controller holds instead of guessing. The detail says why, in
words an operator can act on.

The address is everything after the *first* colon, so an IPv6 master (``slave:fe80::1``) works.

A second opinion can be asked of XenAPI (``query_pool_master``: ``pool.get_master`` and the
master's host record); ``cross_check`` compares it with pool.conf. The controller decides what to
do with a disagreement; this module only reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from ..files import read_capped
from ..model import PoolObservation, PoolRole
from .xenapi import XenApiClient, XenApiError

POOL_CONF = "/etc/xensource/pool.conf"
_QUOTE_MAX = 60  # longer garbage is cut when quoted in a detail


def parse_pool_conf(text: Optional[str]) -> PoolObservation:
    """Turn the content of pool.conf into a role. ``None`` means the file could not be read."""
    if text is None:
        return PoolObservation(PoolRole.UNKNOWN, detail="pool.conf could not be read")
    content = text.strip()
    if not content:
        return PoolObservation(PoolRole.UNKNOWN, detail="pool.conf is empty")
    if content == "master":
        return PoolObservation(PoolRole.MASTER)
    if content.startswith("slave:"):
        address = content.split(":", 1)[1].strip()
        if address and not any(ch.isspace() for ch in address):
            return PoolObservation(PoolRole.SLAVE, master_address=address)
        if not address:
            return PoolObservation(
                PoolRole.UNKNOWN, detail="pool.conf says 'slave:' without a master address"
            )
    return PoolObservation(PoolRole.UNKNOWN, detail=f"pool.conf says {_quote(content)}")


def read_pool_conf(path: str = POOL_CONF) -> PoolObservation:
    """Read and parse pool.conf. Never raises: an unreadable file is an unknown role."""
    try:
        raw = read_capped(path, 4096)  # the real file is a few bytes; never a FIFO or a device
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return PoolObservation(PoolRole.UNKNOWN, detail=f"cannot read {path}: {reason}")
    return parse_pool_conf(raw.decode("utf-8", errors="replace"))


def _quote(text: str) -> str:
    if len(text) > _QUOTE_MAX:
        text = text[:_QUOTE_MAX] + "..."
    return "'" + text.replace("\n", "\\n") + "'"


# --------------------------------------------------------------------------------------------
# Cross-check through XenAPI
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolMaster:
    """The pool master as XenAPI names it."""

    uuid: str
    name_label: str
    address: str
    hostname: str

    def describe(self) -> str:
        name = self.name_label or self.hostname or self.uuid
        return f"{name} ({self.address})" if self.address else name


def query_pool_master(client: XenApiClient) -> PoolMaster:
    """Ask XenAPI which host is the pool master. Raises XenApiError."""
    pools = client.call("pool.get_all")
    if not isinstance(pools, list) or not pools:
        raise XenApiError(f"XenAPI pool.get_all returned no pool: {pools!r:.80}")
    master_ref = client.call("pool.get_master", pools[0])
    record = client.call("host.get_record", master_ref)
    if not isinstance(record, dict):
        raise XenApiError(f"XenAPI host.get_record returned {record!r:.80}")
    return PoolMaster(
        uuid=str(record.get("uuid", "")),
        name_label=str(record.get("name_label", "")),
        address=str(record.get("address", "")),
        hostname=str(record.get("hostname", "")),
    )


def cross_check(
    observed: PoolObservation,
    master: PoolMaster,
    local_addresses: Iterable[str] = (),
    local_names: Iterable[str] = (),
) -> Optional[str]:
    """None when pool.conf and XenAPI agree, else a sentence saying how they differ.

    ``local_addresses`` / ``local_names`` identify this host (its management address, its
    hostname, its XenAPI name-label). An unknown role makes no claim, so there is nothing to
    contradict.
    """
    said_by_xapi = master.describe()
    if observed.role is PoolRole.MASTER:
        mine = set(local_addresses) | set(local_names)
        if mine & {master.address, master.hostname, master.name_label} - {""}:
            return None
        return f"pool.conf says this host is the pool master, XenAPI says {said_by_xapi} is"
    if observed.role is PoolRole.SLAVE:
        if observed.master_address in {master.address, master.hostname} - {""}:
            return None
        return (
            f"pool.conf names {observed.master_address} as the pool master, "
            f"XenAPI says {said_by_xapi} is"
        )
    return None
