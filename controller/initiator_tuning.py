"""``iscsi-cfg node-time2wait``: opt-in, reversible DefaultTime2Wait in this host's open-iscsi
node records for our target (``systems/iscsiadm.py`` says why it matters).

    iscsi-cfg node-time2wait            show the records of target.iqn and what they negotiate
    iscsi-cfg node-time2wait --set 0    ask for 0 (previous values kept for --revert)
    iscsi-cfg node-time2wait --revert   put the previous values back

The previous value of each record is kept in ``<state_dir>/node-time2wait.json`` the first time
it is changed (a second ``--set`` keeps the first previous value), so ``--revert`` always goes
back to what open-iscsi or XenServer had. Runs on the host itself, no controller needed; nothing
is changed without ``--set`` or ``--revert``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional, Tuple

from .files import STATE_LIMIT, read_capped
from .state import atomic_write
from .systems.iscsiadm import NodeRecord, NodeRecords
from .systems.runner import ProcessRunner

STATE_FILE = "node-time2wait.json"
OK, FAILED, USAGE = 0, 1, 2


def _load(path: str) -> Dict[str, Dict[str, object]]:
    try:
        data = json.loads(read_capped(path, STATE_LIMIT).decode("utf-8"))
        records = data.get("records") if isinstance(data, dict) else None
        return {str(k): dict(v) for k, v in dict(records or {}).items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path} is damaged ({exc}); nothing was changed: look at it, remove "
            "it and set the values by hand if needed"
        ) from None


def _key(rec: NodeRecord) -> str:
    return f"{rec.portal} {rec.iqn}"


def show(
    records: List[NodeRecord], saved: Dict[str, Dict[str, object]], iqn: str, offered: int
) -> str:
    if not records:
        return (
            f"no open-iscsi node record for {iqn} on this host (XenServer makes them when it "
            f"plugs the SR); the target offers DefaultTime2Wait {offered}"
        )
    lines = [
        f"open-iscsi node records for {iqn} (the target offers DefaultTime2Wait {offered}; "
        "a login negotiates the larger of the two):"
    ]
    for rec in records:
        mine = rec.time2wait
        got = max(mine, offered) if mine is not None else None
        before = saved.get(_key(rec))
        note = (
            f"; set by iscsi-cfg, was {before.get('previous')} (--revert restores it)"
            if before
            else ""
        )
        lines.append(
            f"  {rec.portal}: DefaultTime2Wait {mine if mine is not None else '?'} "
            f"-> negotiated {got if got is not None else '?'} s{note}"
        )
    return "\n".join(lines)


def run(
    state_dir: str,
    iqn: str,
    offered: int,
    set_to: Optional[int],
    revert: bool,
    nodes: Optional[NodeRecords] = None,
    clock=time.time,
) -> Tuple[int, str]:
    """(exit code, text) of the command."""
    nodes = nodes or NodeRecords(ProcessRunner())
    path = os.path.join(state_dir, STATE_FILE)
    try:
        saved = _load(path)
    except ValueError as exc:
        return FAILED, str(exc)
    records, error = nodes.records(iqn)
    if error:
        return FAILED, f"cannot read the node records: {error}; nothing was changed"
    if set_to is None and not revert:
        return OK, show(records, saved, iqn, offered)
    done: List[str] = []
    if revert:
        if not saved:
            return OK, "nothing to revert: iscsi-cfg has not changed any node record here"
        for rec in records:
            previous = (saved.get(_key(rec)) or {}).get("previous")
            if not isinstance(previous, int) or isinstance(previous, bool):
                continue
            step = nodes.set_time2wait(rec, previous)
            if not step.ok:
                return FAILED, "\n".join(done + [f"failed: {step.message}"])
            done.append(step.message)
            saved.pop(_key(rec))
        gone = sorted(saved)  # records that no longer exist: nothing to put back
        _save(path, {})
        if gone:
            done.append(f"(no record any more for {', '.join(gone)}: forgotten)")
        return OK, "\n".join(done or ["nothing to revert"])
    assert set_to is not None
    if not records:
        return FAILED, show(records, saved, iqn, offered) + "; nothing was changed"
    for rec in records:
        if _key(rec) not in saved:
            saved[_key(rec)] = {"previous": rec.time2wait, "changed_at": clock()}
            _save(path, saved)  # before the change: a crash in between can still be reverted
        step = nodes.set_time2wait(rec, set_to)
        if not step.ok:
            return FAILED, "\n".join(done + [f"failed: {step.message}"])
        done.append(step.message)
    done.append(
        "applies to sessions logged in from now on (a running session keeps what it "
        "negotiated: re-plug the SR's PBD on this host, or reboot it); `--revert` undoes "
        "it"
    )
    return OK, "\n".join(done)


def _save(path: str, records: Dict[str, Dict[str, object]]) -> None:
    if not records:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    atomic_write(
        path, json.dumps({"format": 1, "records": records}, sort_keys=True) + "\n", mode=0o600
    )
