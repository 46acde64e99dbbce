"""open-iscsi's node records on this host (``iscsiadm -m node``): the initiator's half of
DefaultTime2Wait, for ``iscsi-cfg node-time2wait``.

XenServer reaches the SR through open-iscsi. After a connection breaks (every move of the
storage), iscsid waits the session's DefaultTime2Wait before it reconnects; that value is
negotiated at login as the *maximum* of what the target offers (``target.default_time2wait``)
and what the node record asks for (``node.session.iscsi.DefaultTime2Wait``, 2 by default). So a
target offering 0 is not enough: the pool's own hosts' records for our target must ask for 0 too.
This module reads and changes exactly that one key, in the records of our target's IQN only, and
nothing else of open-iscsi's configuration. The change applies to the next login (a session that
is logged in keeps what it negotiated); XenServer makes the records when it plugs the SR, so a
record made later (a new host, an SR re-created) has open-iscsi's default again until it is set.

The parsers read real captures (``tests/fixtures/open-iscsi/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..model import StepResult
from .runner import CommandResult, Runner

KEY = "node.session.iscsi.DefaultTime2Wait"
NO_RECORDS = 21  # iscsiadm's ISCSI_ERR_NO_OBJS_FOUND: "No records found"
# "127.0.0.1:3260,4294967295 iqn...": portal, target portal group tag, target name.
_LIST_LINE = re.compile(r"^(?P<portal>\S+?),(?P<tpgt>-?\d+)\s+(?P<iqn>\S+)$")


@dataclass(frozen=True)
class NodeRecord:
    iqn: str
    portal: str  # "10.10.10.3:3260" (IPv6: "[fd00::3]:3260")
    time2wait: Optional[int]  # None when the record does not say


def parse_node_list(text: str) -> List[Tuple[str, str]]:
    """``iscsiadm -m node`` -> [(portal, iqn)]. Lines that are not records are skipped."""
    out = []
    for line in text.splitlines():
        m = _LIST_LINE.match(line.strip())
        if m:
            out.append((m.group("portal"), m.group("iqn")))
    return out


def parse_node_show(text: str) -> Dict[str, str]:
    """``iscsiadm -m node -T IQN -p PORTAL -o show`` -> {key: value} (``# BEGIN RECORD``
    comments and anything that is not ``key = value`` skipped)."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#") or " = " not in line:
            continue
        key, value = line.split(" = ", 1)
        out[key.strip()] = value.strip()
    return out


def time2wait_of(fields: Dict[str, str]) -> Optional[int]:
    value = fields.get(KEY, "")
    return int(value) if re.fullmatch(r"\d{1,5}", value) else None


class NodeRecords:
    """Our target's node records through one injected runner."""

    def __init__(
        self, runner: Runner, iscsiadm: str = "iscsiadm", timeout: Optional[float] = 10.0
    ) -> None:
        self.runner = runner
        self.iscsiadm = iscsiadm
        self.timeout = timeout

    def _run(self, *args: str) -> CommandResult:
        return self.runner.run((self.iscsiadm, *args), timeout=self.timeout)

    def records(self, iqn: str) -> Tuple[List[NodeRecord], Optional[str]]:
        """(the records of target ``iqn``, error). No record at all is an empty list."""
        listed = self._run("-m", "node")
        if listed.rc == NO_RECORDS:
            return [], None
        if not listed.ok:
            return [], listed.describe_failure()
        out: List[NodeRecord] = []
        for portal, name in parse_node_list(listed.stdout):
            if name != iqn:
                continue
            shown = self._run("-m", "node", "-T", iqn, "-p", portal, "-o", "show")
            if not shown.ok:
                return out, shown.describe_failure()
            out.append(NodeRecord(iqn, portal, time2wait_of(parse_node_show(shown.stdout))))
        return out, None

    def set_time2wait(self, record: NodeRecord, value: int) -> StepResult:
        res = self._run(
            "-m",
            "node",
            "-T",
            record.iqn,
            "-p",
            record.portal,
            "-o",
            "update",
            "-n",
            KEY,
            "-v",
            str(value),
        )
        if not res.ok:
            return StepResult(False, res.describe_failure())
        return StepResult(
            True, f"{record.portal} {record.iqn}: DefaultTime2Wait {record.time2wait} -> {value}"
        )
