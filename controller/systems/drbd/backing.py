"""``drbdadm sh-ll-dev``: the lower-level (backing) device of each volume, from the
configuration (no kernel call), for the split-brain snapshot of the victim's data."""

from __future__ import annotations

from typing import Tuple

from .common import DrbdParseError, _lines


def parse_sh_ll_dev(text: str, command: str = "drbdadm sh-ll-dev") -> Tuple[str, ...]:
    """One absolute device path per volume (``/dev/vg0/r0``)."""
    lines = _lines(text)
    if not lines or not all(line.startswith("/") and " " not in line for line in lines):
        raise DrbdParseError(command, text, "expected one device path per line")
    return tuple(lines)
