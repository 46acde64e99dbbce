"""The kernel log: the only place DRBD says "Split-Brain detected but unresolved"."""

from __future__ import annotations

import re
from typing import Dict, FrozenSet, Mapping, Optional, Union

from ...model import DRBD_PEER_REACHABLE

SplitBrainKey = Union[str, int]

# "drbd r0/0 drbd0 node2: ..." (9, a volume), "block drbd0: ..." (8.4, a minor),
# "drbd r0 node2: ..." / "drbd r0: ..." (a resource or a connection, both versions).
_LOG_VOLUME = re.compile(r"\bdrbd ([^\s/:]+)/\d{1,9} drbd(\d{1,9})\b", re.A)
_LOG_MINOR = re.compile(r"\bblock drbd(\d{1,9}):", re.A)
_LOG_RESOURCE = re.compile(r"\bdrbd ([^\s/:]+)(?: [^\s:]+)?:")
_LOG_CONN_TO = re.compile(r"\b(?:conn|repl)\( \S+ -> (\S+) \)")
SPLIT_BRAIN_UNRESOLVED = "Split-Brain detected but unresolved"


def find_split_brain(
    kernel_log: str, minor_names: Optional[Mapping[int, str]] = None
) -> FrozenSet[SplitBrainKey]:
    """Resources (names) or minors (ints, 8.4 logs name only the minor) whose last word in the
    kernel log is an unresolved split brain.

    A later successful handshake clears it: a resolved split brain ("Split-Brain detected,
    manually solved" / "automatically solved"), or a move to a state in which the peer is reachable
    (``conn( ... -> Connected )``, ``-> SyncTarget``, ...). With ``minor_names`` an 8.4 minor is
    reported (and cleared) under its resource's name. Lines that are not DRBD's are ignored, so any
    text is accepted.
    """
    names = dict(minor_names or {})
    flagged: Dict[SplitBrainKey, bool] = {}
    for line in kernel_log.splitlines():
        if "drbd" not in line:
            continue
        key: Optional[SplitBrainKey] = None
        volume = _LOG_VOLUME.search(line)
        if volume:
            key = volume.group(1)
        else:
            minor = _LOG_MINOR.search(line)
            if minor:
                key = names.get(int(minor.group(1)), int(minor.group(1)))
            else:
                resource = _LOG_RESOURCE.search(line)
                if resource:
                    key = resource.group(1)
        if key is None:
            continue
        if SPLIT_BRAIN_UNRESOLVED in line:
            flagged[key] = True
        elif "Split-Brain detected," in line:
            flagged[key] = False
        else:
            moved = _LOG_CONN_TO.search(line)
            if moved and moved.group(1) in DRBD_PEER_REACHABLE:
                flagged[key] = False
    return frozenset(k for k, v in flagged.items() if v)
