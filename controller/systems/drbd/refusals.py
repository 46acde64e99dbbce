"""What drbdadm answers when it will not change state: DRBD's safety refusals by code, and
DRBD's own words without drbdadm's trailer."""

from __future__ import annotations

import re
from typing import Optional, Tuple

from .common import _lines

# DRBD's state-change refusals ("State change failed: (-N) ..."), by DRBD's own code. These are
# safety stops (reported, not retried in a tight loop), not malfunctions.
REFUSALS = {
    -1: "multiple_primaries",  # "Multiple primaries not allowed by config"
    -2: "no_uptodate_data",  # "Need access to UpToDate data"
    -7: "peer_not_outdated",  # "Refusing to be Primary while peer is not outdated" (fencing)
    -10: "refused_by_peer",  # "State change was refused by peer node"
    -12: "held_open",  # "Device is held open by someone"
    -25: "no_quorum",  # DRBD 9: "No quorum"
}


_STATE_CHANGE = re.compile(r"\((-\d{1,9})\)\s*([^\n]+)", re.A)
_MINOR_EXISTS = re.compile(r"\(161\)\s*([^\n]+)")
_COMMAND_TRAILER = re.compile(r"^Command '.*' terminated with exit code \d+$")


def parse_refusal(text: str) -> Optional[Tuple[int, str, str]]:
    """DRBD's "State change failed: (-N) message" -> (code, reason, "(-N) message") when the code
    is one of DRBD's safety refusals (``REFUSALS``); None otherwise."""
    for match in _STATE_CHANGE.finditer(text):
        code = int(match.group(1))
        if code in REFUSALS:
            return code, REFUSALS[code], f"({code}) {match.group(2).strip()}"
    return None


def drbd_words(text: str) -> str:
    """What DRBD said, without drbdadm's "Command '...' terminated with exit code N" trailer."""
    lines = [line for line in _lines(text) if not _COMMAND_TRAILER.match(line)]
    return "; ".join(lines) if lines else (text.strip() or "no output")
