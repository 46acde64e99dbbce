"""The pool role of this host: master, slave or unknown.

xapi writes ``/etc/xensource/pool.conf`` on every host of a pool: ``master`` on the master,
``slave:<master address>`` on the others. It is the one input that decides which host carries the
storage, so reading it is deliberately unforgiving: anything that is not exactly one of those two
forms (empty, missing, unreadable, ``broken`` — what xapi writes while a pool join fails — or
garbage) is **unknown**, and the controller holds instead of guessing. The detail says why, in
words an operator can act on.

The address is everything after the *first* colon, so an IPv6 master (``slave:fe80::1``) works.
"""

from __future__ import annotations

from typing import Optional

from ..files import read_capped
from ..model import PoolObservation, PoolRole

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
