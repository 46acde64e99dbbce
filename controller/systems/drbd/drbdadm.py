"""``drbdadm role | cstate | dstate | sh-minor``: per-resource answers, same words on 8.4 and 9."""

from __future__ import annotations

import re
from typing import Optional, Tuple

from .common import (
    DrbdParseError,
    LocalPeer,
    _is_unconfigured,
    _lines,
    _split_pair,
    _state_word,
    _worst_disk,
)


def parse_role(text: str, command: str = "drbdadm role") -> Optional[LocalPeer]:
    """``drbdadm role``: 8.4 ``Primary/Secondary`` (``Primary/Unknown`` when disconnected),
    9 ``Primary`` (local only). None for 8.4's ``Unconfigured``.

    A multi-volume 8.4 resource prints one line per volume; the role is per resource, so the lines
    must agree.
    """
    lines = _lines(text)
    if not lines:
        raise DrbdParseError(command, text, "empty output")
    if _is_unconfigured(lines):
        return None
    pairs = {_split_pair(line, command, text) for line in lines}
    if len(pairs) != 1:
        raise DrbdParseError(command, text, "volumes disagree about the role")
    return pairs.pop()


def parse_cstate(text: str, command: str = "drbdadm cstate") -> Optional[str]:
    """``drbdadm cstate``: one word (per volume on 8.4, per connection on 9). None for
    ``Unconfigured``. When lines differ, the first one that is not ``Connected`` is reported:
    a resource is only as connected as its least connected part."""
    lines = _lines(text)
    if not lines:
        raise DrbdParseError(command, text, "empty output")
    if _is_unconfigured(lines):
        return None
    words = [_state_word(line, command, text) for line in lines]
    for word in words:
        if word != "Connected":
            return word
    return words[0]


def parse_dstate(text: str, command: str = "drbdadm dstate") -> Optional[LocalPeer]:
    """``drbdadm dstate``: ``UpToDate/DUnknown`` on 8.4 and 9. A DRBD 9 resource that is down
    answers from its meta data with one word (``Consistent``): ``peer`` is then None. None for 8.4's
    ``Unconfigured``. Several volumes: the worst disk of each side."""
    lines = _lines(text)
    if not lines:
        raise DrbdParseError(command, text, "empty output")
    if _is_unconfigured(lines):
        return None
    pairs = [_split_pair(line, command, text) for line in lines]
    local = _worst_disk(p.local for p in pairs)
    peers = [p.peer for p in pairs if p.peer is not None]
    if peers and len(peers) != len(pairs):
        raise DrbdParseError(command, text, "volumes disagree about the format")
    return LocalPeer(local, _worst_disk(peers) if peers else None)


def is_unknown_resource(rc: int, text: str) -> bool:
    """A resource that is not up. DRBD 9: rc 10 ``r0: Unknown resource`` (``role``) or
    ``Failure: (158) Unknown resource`` (``cstate``). DRBD 8.4 on a freshly booted host (seen on
    real 8.4.11 in the VM lab, where the module is loaded but the minor was never created): rc 10
    ``0: Failure: (127) Device minor not allocated``."""
    return rc == 10 and ("Unknown resource" in text or "(127) Device minor not allocated" in text)


def parse_sh_minor(text: str, command: str = "drbdadm sh-minor") -> Tuple[int, ...]:
    """``drbdadm sh-minor <res>``: one minor number per volume, from the configuration."""
    lines = _lines(text)
    if not lines or not all(re.fullmatch(r"[0-9]{1,9}", line) for line in lines):
        raise DrbdParseError(command, text, "expected one minor number per line")
    return tuple(int(line) for line in lines)
