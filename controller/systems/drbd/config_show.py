"""DRBD's configuration as DRBD prints it, for the data-safety audit.

``drbdsetup show RES`` prints what the kernel runs; ``drbdadm dump RES`` prints what the
configuration files say (including ``handlers``, which the kernel never sees). Both use the
drbd.conf syntax: ``keyword values... ;`` statements and ``keyword values... { ... }`` sections,
``"quoted"`` strings and ``#`` comments, on DRBD 8.4 and 9 alike. 8.4 keeps ``fencing`` in the
``disk`` section, 9 in ``net``; the audit therefore looks for a keyword anywhere in a resource.

``parse_conf`` turns the text into nested ``Section`` values (bounded in depth and size: the text
comes from a command, but a broken one must not hang or exhaust us); ``drbd_safety`` reads the
facts the audit judges. Pure functions, tested on captures from real DRBD 8.4 (VM lab) and 9.2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from ...report import DrbdSafety

MAX_DEPTH = 16
MAX_TOKENS = 200_000


class DrbdConfigError(Exception):
    """The text is not in drbd.conf syntax; the message quotes where it went wrong."""


@dataclass(frozen=True)
class Section:
    words: Tuple[str, ...]  # the keyword and its values ("resource", "r0") / ("volume", "0")
    statements: Tuple[Tuple[str, ...], ...] = ()
    sections: Tuple["Section", ...] = ()

    def walk(self) -> Iterator["Section"]:
        yield self
        for s in self.sections:
            yield from s.walk()

    def find(self, keyword: str) -> List[Tuple[str, ...]]:
        """Every statement ``keyword ...`` in this section and below, in order."""
        return [st for s in self.walk() for st in s.statements if st and st[0] == keyword]


_TOKEN = re.compile(r'\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|([{};])|([^\s{};"#]+)')


def tokens(text: str) -> List[Tuple[str, str]]:
    """(kind, value): kind is "word", "string" or the punctuation itself."""
    out: List[Tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise DrbdConfigError(f"unreadable text at {text[pos : pos + 40]!r}")
        pos = m.end()
        if m.group(1) is not None:
            out.append(("string", m.group(1)))
        elif m.group(2):
            out.append((m.group(2), m.group(2)))
        elif m.group(3):
            out.append(("word", m.group(3)))
        if len(out) > MAX_TOKENS:
            raise DrbdConfigError(f"more than {MAX_TOKENS} tokens")
    return out


def parse_conf(text: str) -> Section:
    """The whole text as one unnamed top section."""
    toks = tokens(text)
    stack: List[Tuple[Tuple[str, ...], List[Tuple[str, ...]], List[Section]]] = [((), [], [])]
    words: List[str] = []
    for kind, value in toks:
        if kind in ("word", "string"):
            words.append(value)
        elif kind == ";":
            if words:
                stack[-1][1].append(tuple(words))
            words = []
        elif kind == "{":
            if not words:
                raise DrbdConfigError("a section without a keyword")
            if len(stack) > MAX_DEPTH:
                raise DrbdConfigError(f"sections nested deeper than {MAX_DEPTH}")
            stack.append((tuple(words), [], []))
            words = []
        else:  # "}"
            if words or len(stack) == 1:
                raise DrbdConfigError(
                    f"unexpected '}}' after {' '.join(words)!r}" if words else "unbalanced '}'"
                )
            head, statements, sections = stack.pop()
            stack[-1][2].append(Section(head, tuple(statements), tuple(sections)))
    if len(stack) != 1 or words:
        raise DrbdConfigError("the text ends inside a section or a statement")
    return Section((), tuple(stack[0][1]), tuple(stack[0][2]))


def resource(top: Section, name: str) -> Section:
    for s in top.sections:
        if s.words[:1] == ("resource",) and s.words[1:2] == (name,):
            return s
    raise DrbdConfigError(f"no resource {name!r} in the output")


def _last(statements: List[Tuple[str, ...]], default: str) -> str:
    values = [st[1] for st in statements if len(st) > 1]
    return values[-1] if values else default


def drbd_safety(show: str, name: str, dump: Optional[str] = None) -> DrbdSafety:
    """From ``drbdsetup show NAME`` (and ``drbdadm dump NAME`` for the fence-peer handler)."""
    res = resource(parse_conf(show), name)
    after_sb = tuple(
        (p, _last(res.find(f"after-sb-{p}"), "disconnect")) for p in ("0pri", "1pri", "2pri")
    )
    devices, disks = [], []
    for st in res.find("device"):
        if len(st) >= 3 and st[1] == "minor" and st[2].isdigit():
            devices.append(f"/dev/drbd{st[2]}")
        elif len(st) >= 2 and st[1].startswith("/dev/"):
            devices.append(st[1])
    for st in res.find("disk"):
        if len(st) >= 2 and st[1].startswith("/"):
            disks.append(st[1])
    handler: Optional[bool] = None
    if dump is not None:
        d = resource(parse_conf(dump), name)
        handler = any(len(st) > 1 and st[1].strip() for st in d.find("fence-peer"))
    return DrbdSafety(
        resource=name,
        protocol=_last(res.find("protocol"), "C"),
        after_sb=after_sb,
        fencing=_last(res.find("fencing"), "dont-care"),
        devices=tuple(dict.fromkeys(devices)),
        disks=tuple(dict.fromkeys(disks)),
        fence_handler=handler,
    )
