"""What every DRBD parser shares: the parse error and how an unreadable output is quoted,
DRBD's state words and the order of disk states."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Optional

from ...model import DRBD_DISK_STATES

KIB = 1024
MIB = 1024 * 1024

# DRBD state words are CamelCase identifiers; anything else (a sentence, an error) is not a state.
_STATE_WORD = re.compile(r"^[A-Z][A-Za-z]*$")

# Worst first: when volumes of one resource disagree, the resource is as good as its worst volume.
# A failed or missing disk, then one leaving or arriving, then DRBD's own order from Negotiating on.
_DISK_ORDER = ("Failed", "Diskless", "Detaching", "Attaching") + DRBD_DISK_STATES[4:]

_QUOTE_LIMIT = 300


class DrbdParseError(ValueError):
    """An output we do not understand. ``str()`` names the command and quotes the text:
    "cannot read `drbdadm cstate iscsi1`: 'garbage'"; ``detail`` says what was wrong with it."""

    def __init__(self, command: str, text: str, detail: str = "") -> None:
        self.command = command
        self.text = text
        self.detail = detail
        super().__init__(cannot_read(command, text))


def cannot_read(command: str, text: str, detail: str = "") -> str:
    """ "cannot read `drbdadm cstate iscsi1`: 'garbage'" — how an unreadable output is reported."""
    shown = text.strip()
    if len(shown) > _QUOTE_LIMIT:
        shown = shown[:_QUOTE_LIMIT] + "..."
    msg = f"cannot read {_backquote(command)}: {shown!r}"
    return f"{msg} ({detail})" if detail else msg


def _backquote(command: str) -> str:
    return command if command.startswith("`") else f"`{command}`"


@dataclass(frozen=True)
class LocalPeer:
    """``Primary/Secondary`` or ``UpToDate/DUnknown``; ``peer`` is None where DRBD 9 prints only
    the local part."""

    local: str
    peer: Optional[str] = None


def _lines(text: str) -> List[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _state_word(word: str, command: str, text: str) -> str:
    if not _STATE_WORD.match(word):
        raise DrbdParseError(command, text, f"{word!r} is not a DRBD state")
    return word


def _split_pair(line: str, command: str, text: str) -> LocalPeer:
    parts = line.split("/")
    if len(parts) > 2:
        raise DrbdParseError(command, text)
    local = _state_word(parts[0], command, text)
    peer = _state_word(parts[1], command, text) if len(parts) == 2 else None
    return LocalPeer(local, peer)


def _is_unconfigured(lines: List[str]) -> bool:
    return bool(lines) and all(line == "Unconfigured" for line in lines)


def _worst_disk(states: Iterable[str]) -> str:
    def rank(state: str) -> int:
        return _DISK_ORDER.index(state) if state in _DISK_ORDER else -1  # unknown: worst

    return min(states, key=rank)
