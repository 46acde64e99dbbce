"""Whether dm-multipath would take the DRBD devices, from its configuration files.

multipathd builds a multipath map over every block device its blacklist does not exclude. A map
over ``/dev/drbdN`` puts device-mapper between the target and DRBD (and, on the standby, holds the
Secondary's device open so DRBD cannot be promoted). XCP-ng's own ``/etc/multipath.conf``
blacklists ``devnode "^drbd[0-9]*"``; a host whose file lost that line, or whose
``blacklist_exceptions`` lets DRBD back in, is at risk.

The files are read (``/etc/multipath.conf`` and ``/etc/multipath/conf.d/*.conf``), not multipathd
asked: the check must work before multipathing is switched on. No file at all means multipathd
is not configured, which leaves the devices alone. Same syntax family as drbd.conf (sections in
braces, ``keyword value`` lines, ``#`` comments), one statement per line, no semicolons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..report import drbd_kernel_names

MAX_BYTES = 1 << 20
MAX_LINES = 20_000
DEFAULT_FILES = ("/etc/multipath.conf",)
DEFAULT_CONF_DIR = "/etc/multipath/conf.d"


class MultipathParseError(Exception):
    """The file could not be read as multipath.conf."""


@dataclass(frozen=True)
class Blacklists:
    devnodes: Tuple[str, ...]  # regular expressions from `blacklist { devnode ... }`
    exceptions: Tuple[str, ...]  # from `blacklist_exceptions { devnode ... }`

    def excludes(self, kernel_name: str) -> bool:
        """True when multipath leaves ``kernel_name`` ("drbd0") alone."""
        if any(_search(rx, kernel_name) for rx in self.exceptions):
            return False
        return any(_search(rx, kernel_name) for rx in self.devnodes)


def _search(rx: str, name: str) -> bool:
    try:
        return re.search(rx, name) is not None
    except re.error:
        return False


def parse_blacklists(texts: Sequence[str]) -> Blacklists:
    """The devnode entries of every file's ``blacklist`` and ``blacklist_exceptions``."""
    devnodes: List[str] = []
    exceptions: List[str] = []
    for text in texts:
        lines = text.splitlines()
        if len(lines) > MAX_LINES:
            raise MultipathParseError(f"more than {MAX_LINES} lines")
        stack: List[str] = []
        for raw in lines:
            line = _uncomment(raw).strip()
            if not line:
                continue
            m = re.fullmatch(r"(\w+)\s*\{", line)
            if m:
                stack.append(m.group(1))
                if len(stack) > 8:
                    raise MultipathParseError("sections nested deeper than 8")
                continue
            if line == "}":
                if not stack:
                    raise MultipathParseError("unbalanced '}'")
                stack.pop()
                continue
            m = re.fullmatch(r'devnode\s+(?:"(.*)"|(\S+))', line)
            if m and stack and stack[-1] in ("blacklist", "blacklist_exceptions"):
                rx = m.group(1) if m.group(1) is not None else m.group(2)
                (devnodes if stack[-1] == "blacklist" else exceptions).append(rx)
        if stack:
            raise MultipathParseError(f"section {stack[-1]!r} is not closed")
    return Blacklists(tuple(devnodes), tuple(exceptions))


def _uncomment(line: str) -> str:
    """The line without its comment (a '#' or '!' outside quotes starts one)."""
    quoted = False
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif c in "#!" and not quoted:
            return line[:i]
    return line


def unprotected(bl: Optional[Blacklists], devices: Sequence[str]) -> List[str]:
    """The DRBD devices multipath would take (none when it is not configured at all)."""
    if bl is None:
        return []
    return [n for n in drbd_kernel_names(devices) if not bl.excludes(n)]
